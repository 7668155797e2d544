"""posterkg: movie posters -> visual knowledge graph -> recommendations, fully local."""

__version__ = "0.1.0"
