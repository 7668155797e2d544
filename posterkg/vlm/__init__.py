"""Poster tagging: knowledge schema, constrained-JSON prompts and the tagging backends."""
