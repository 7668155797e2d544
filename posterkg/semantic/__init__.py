"""Semantic IDs: every movie as a short tuple of codes from an RQ-VAE over its features.

* :mod:`posterkg.semantic.features`: the item features (poster / text embeddings, concepts,
  genres), standardised and L2-normalised per block;
* :mod:`posterkg.semantic.rqvae`: the RQ-VAE (k-means initialisation, dead-code re-seeding,
  optional rotation trick), collision statistics and disambiguation;
* :mod:`posterkg.semantic.ids`: the ``semantic_ids`` / ``semantic_id_versions`` tables,
  :func:`~posterkg.semantic.ids.build`, :func:`~posterkg.semantic.ids.assign` and
  :func:`~posterkg.semantic.ids.load_codes` (what models read).

See docs/semantic_ids.md.
"""

from posterkg.semantic.ids import load_codes, load_version  # noqa: F401
