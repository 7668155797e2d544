"""Text embeddings for knowledge-point values: a FlagEmbedding encoder, a DuckDB embedding cache
keyed by (model, text) and a small FAISS index wrapper."""

from posterkg.embed.encoder import EmbedConfig, Encoder, load_encoder, resolve_model
from posterkg.embed.cache import EmbeddingCache
from posterkg.embed.index import VectorIndex
from posterkg.embed.posters import FeaturesConfig, load_features, run_embed

__all__ = ["EmbedConfig", "Encoder", "EmbeddingCache", "VectorIndex", "load_encoder", "resolve_model",
           "FeaturesConfig", "load_features", "run_embed"]
