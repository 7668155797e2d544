"""Vectorised id lookups: where each value sits in a table of unique keys, and whether it is there.

Every node list, id vocabulary and (row, column) key list in posterkg is a numpy array of unique
int64 ids, and most are kept ascending. Turning database ids into indices is then one
``searchsorted`` instead of a Python dict built over millions of ids. Used by the id vocabulary
saved with each model (``posterkg.gnn.base.IdVocab``), the interaction loader and its remapping to
a saved vocabulary (``posterkg.gnn.data``), the graph builder (``posterkg.graphs.hetero``), the
evaluation's hit test, the BPR sampler's positive test, the semantic-ID feature blocks, the
explanations and the similar-movies index.
"""

from __future__ import annotations

import numpy as np


def find_sorted(table: np.ndarray, values) -> tuple[np.ndarray, np.ndarray]:
    """(position in ``table``, found) of every value; ``table`` ascending and unique.

    ``values`` may have any shape; both results have its shape. Where a value is missing its
    position is a valid index of ``table`` (clipped) that holds some other key, so callers mask
    with ``found`` (an empty table gives positions 0 and nothing found).
    """
    values = np.asarray(values)
    if len(table) == 0:
        return np.zeros(values.shape, np.int64), np.zeros(values.shape, bool)
    pos = np.minimum(np.searchsorted(table, values), len(table) - 1)
    return pos, table[pos] == values


def find(keys: np.ndarray, values) -> tuple[np.ndarray, np.ndarray]:
    """:func:`find_sorted` for ``keys`` in any order (unique): positions index ``keys`` itself."""
    keys = np.asarray(keys)
    if len(keys) == 0:
        return find_sorted(keys, values)
    order = np.argsort(keys, kind="stable")
    pos, ok = find_sorted(keys[order], values)
    return order[pos], ok
