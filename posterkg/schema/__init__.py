"""The concept vocabulary: discover concepts from open-mode knowledge points, freeze them as
numbered versions, project every point onto them, and grow them from the candidate pool.

See docs/vocabulary.md. Entry points: :func:`posterkg.schema.vocab.load_frozen_vocab` (closed-mode
tagging), :func:`posterkg.schema.discover.discover`, :func:`posterkg.schema.vocab.freeze`,
:func:`posterkg.schema.project.project`, :func:`posterkg.schema.grow.grow`.
"""

from posterkg.schema.discover import SchemaConfig
from posterkg.schema.vocab import load_frozen_vocab

__all__ = ["SchemaConfig", "load_frozen_vocab"]
