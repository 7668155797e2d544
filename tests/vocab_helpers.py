"""Helpers shared by the vocabulary tests: the labelled phrase set and a memoising encoder."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd

PHRASES = Path(__file__).parent / "data" / "visual_phrases.tsv"


def load_phrases() -> list[tuple[str, str, str]]:
    """(type, gold group, phrase) rows of tests/data/visual_phrases.tsv."""
    with PHRASES.open(encoding="utf-8") as f:
        rows = [r for r in csv.reader((ln for ln in f if not ln.startswith("#")), delimiter="\t")]
    assert rows[0] == ["type", "group", "phrase"]
    return [tuple(r) for r in rows[1:]]


def split_phrases(rows, frac: float = 0.6):
    """Per gold group: the first ceil(frac*n) phrases for discovery, the rest held out."""
    disc, held = [], []
    groups: dict[tuple[str, str], list] = {}
    for r in rows:
        groups.setdefault((r[0], r[1]), []).append(r)
    for members in groups.values():
        k = max(1, math.ceil(frac * len(members)))
        disc += members[:k]
        held += members[k:]
    return disc, held


def point_rows(rows, first_movie: int, *, run_id: str, backend: str = "test", model: str = "phrases",
               first_repeats: int = 3) -> pd.DataFrame:
    """raw_points for phrases: one movie per point; each group's first phrase on a few movies
    (so it is the most frequent member and names the concept)."""
    out, mid, seen = [], first_movie, set()
    for t, g, p in rows:
        reps = first_repeats if (t, g) not in seen else 1
        seen.add((t, g))
        for _ in range(reps):
            out.append({"movie_id": mid, "type": t, "value": p, "confidence": 0.75, "backend": backend,
                        "model": model, "schema_hash": "h", "run_id": run_id})
            mid += 1
    return pd.DataFrame(out)


RAW_POINTS_DDL = """
CREATE TABLE IF NOT EXISTS raw_points (
    movie_id INTEGER NOT NULL, type VARCHAR NOT NULL, value VARCHAR NOT NULL,
    confidence DOUBLE NOT NULL, backend VARCHAR NOT NULL, model VARCHAR NOT NULL,
    schema_hash VARCHAR NOT NULL, run_id VARCHAR NOT NULL)
"""


def add_points(store, frame: pd.DataFrame) -> None:

    store.execute(RAW_POINTS_DDL)
    store.insert_df("raw_points", frame)


class MemoEncoder:
    """Wraps a real encoder: same name and vectors, memoised across test databases; counts the
    texts it is asked for (``calls``, ``n_encoded``) like a real one."""

    def __init__(self, inner):
        self.inner = inner
        self.memo: dict[str, np.ndarray] = {}
        self.calls = 0
        self.n_encoded = 0
        self.seen: list[str] = []

    @property
    def name(self) -> str:
        return self.inner.name

    def encode(self, texts):
        texts = list(texts)
        self.calls += 1
        self.n_encoded += len(texts)
        self.seen += texts
        missing = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if missing:
            self.memo.update(zip(missing, self.inner.encode(missing)))
        return np.stack([self.memo[t] for t in texts]).astype(np.float32)
