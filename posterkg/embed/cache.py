"""A DuckDB embedding cache keyed by (model, text).

Knowledge values repeat a lot ("warm tones" appears on thousands of posters), so only *unique*
strings are embedded, and only once per model: reruns and new movies embed just the strings the
cache has not seen. Vectors are stored as ``FLOAT[]`` in table ``embed_cache``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from posterkg.progress import bar
from posterkg.store import Store

COMPONENT = "embed"
MIGRATIONS = [
    """
    CREATE TABLE IF NOT EXISTS embed_cache (
        model VARCHAR NOT NULL,
        text VARCHAR NOT NULL,
        dim INTEGER NOT NULL,
        vec FLOAT[] NOT NULL,
        created_at TIMESTAMP DEFAULT current_timestamp,
        PRIMARY KEY (model, text)
    )
    """,
]


def ensure_tables(store: Store) -> None:
    store.migrate(COMPONENT, MIGRATIONS)


def _vectors(store: Store, sql: str, params: list) -> tuple[list[str], np.ndarray]:
    tbl = store.con.sql(sql, params=params).to_arrow_table()
    texts = tbl.column("text").to_pylist()
    if not texts:
        return [], np.zeros((0, 0), dtype=np.float32)
    col = tbl.column("vec").combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return texts, flat.reshape(len(texts), -1)


class EmbeddingCache:
    """``embed(texts)`` returns one row per text (duplicates allowed), embedding only misses.

    ``hits``/``misses`` count unique texts of the last call.
    """

    def __init__(self, store: Store, encoder, *, chunk: int = 2048):
        self.store = store
        self.encoder = encoder
        self.chunk = max(1, chunk)
        self.hits = 0
        self.misses = 0
        ensure_tables(store)

    @property
    def model(self) -> str:
        return self.encoder.name

    def lookup(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors for those of ``texts`` the cache holds."""
        uniq = pd.DataFrame({"text": pd.unique(pd.Series(list(texts), dtype=object))})
        if uniq.empty:
            return {}
        self.store.register("_embed_q", uniq)
        try:
            got, mat = _vectors(
                self.store,
                "SELECT c.text, c.vec FROM embed_cache c JOIN _embed_q q ON c.text = q.text "
                "WHERE c.model = ?",
                [self.model],
            )
        finally:
            self.store.con.unregister("_embed_q")
        return dict(zip(got, mat))

    def embed(self, texts: Sequence[str], *, desc: str = "embedding") -> np.ndarray:
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        uniq = list(dict.fromkeys(texts))
        found = self.lookup(uniq)
        missing = [t for t in uniq if t not in found]
        self.hits, self.misses = len(uniq) - len(missing), len(missing)
        if missing:
            with bar(total=len(missing), desc=desc, unit="text") as pbar:
                for i in range(0, len(missing), self.chunk):
                    part = missing[i:i + self.chunk]
                    mat = self.encoder.encode(part)
                    frame = pd.DataFrame({
                        "model": self.model, "text": part, "dim": mat.shape[1],
                        "vec": list(mat.astype(np.float32)),
                    })
                    self.store.insert_df("embed_cache", frame, mode="ignore")
                    found.update(zip(part, mat))
                    pbar.update(len(part))
        dim = len(next(iter(found.values())))
        out = np.empty((len(texts), dim), dtype=np.float32)
        index = {t: found[t] for t in uniq}
        for i, t in enumerate(texts):
            out[i] = index[t]
        return out

    def count(self) -> int:
        return int(self.store.scalar("SELECT count(*) FROM embed_cache WHERE model = ?", [self.model]))
