"""The one rating rule: what a rating means, in Python and in SQL.

Every part of posterkg that turns a rating into a sign or a relevance label uses this module:
the graphs stage (signed user-movie edges), the recommenders (train positives, hard negatives)
and the evaluation protocol (relevant = test rating >= 4).

====== ============== ========
sign   rating         meaning
====== ============== ========
+1     >= 4           liked (and relevant when it is in the evaluated part)
0      3 .. 3.5       neutral
-1     < 3 (<= 2.5)   disliked
====== ============== ========

Half-star ratings (ML-20M and later) follow the same thresholds: 3.5 is neutral, 2.5 disliked.
"""

from __future__ import annotations

import numpy as np

POSITIVE_MIN = 4.0      # rating >= 4: liked / relevant
NEGATIVE_BELOW = 3.0    # rating < 3: disliked


def sign_of(rating: float) -> int:
    """+1 liked, 0 neutral, -1 disliked."""
    return 1 if rating >= POSITIVE_MIN else (-1 if rating < NEGATIVE_BELOW else 0)


def signs(ratings: np.ndarray) -> np.ndarray:
    """Vectorised :func:`sign_of` (int8)."""
    r = np.asarray(ratings, dtype=np.float64)
    out = np.zeros(r.shape, dtype=np.int8)
    out[r >= POSITIVE_MIN] = 1
    out[r < NEGATIVE_BELOW] = -1
    return out


def is_relevant(ratings: np.ndarray) -> np.ndarray:
    return np.asarray(ratings, dtype=np.float64) >= POSITIVE_MIN


def sign_sql(column: str = "rating") -> str:
    """The same rule as a SQL expression over ``column``."""
    return (f"CASE WHEN {column} >= {POSITIVE_MIN} THEN 1 "
            f"WHEN {column} < {NEGATIVE_BELOW} THEN -1 ELSE 0 END")
