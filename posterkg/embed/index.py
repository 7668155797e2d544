"""A small FAISS wrapper: ``VectorIndex(dim).add(vectors); sims, ids = index.search(queries, k)``.

Vectors are expected L2-normalised, so inner product = cosine similarity.

* ``kind="auto"`` (default): exact flat inner product up to ``threshold`` vectors; above it an
  HNSW graph (no training, good recall on a few million vectors); ``ivf`` on request.
* ``kind="flat" | "hnsw" | "ivf"`` forces one.
* On a machine with faiss-gpu and a visible GPU, flat and IVF indexes move to GPU 0 (HNSW has
  no GPU version in FAISS and stays on the CPU). ``gpu=False`` disables it.
"""

from __future__ import annotations

import numpy as np

KINDS = ("auto", "flat", "hnsw", "ivf")


def gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and getattr(faiss, "get_num_gpus", lambda: 0)() > 0


class VectorIndex:
    def __init__(self, dim: int, *, kind: str = "auto", threshold: int = 100_000,
                 nlist: int | None = None, nprobe: int = 16, hnsw_m: int = 32,
                 ef_search: int = 128, gpu: bool | None = None):
        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
        self.dim = int(dim)
        self.kind = kind
        self.threshold = int(threshold)
        self.nlist, self.nprobe = nlist, nprobe
        self.hnsw_m, self.ef_search = hnsw_m, ef_search
        self.want_gpu = gpu
        self._index = None
        self.built_kind: str | None = None
        self.on_gpu = False
        self.ntotal = 0

    def _choose(self, n: int) -> str:
        if self.kind != "auto":
            return self.kind
        return "flat" if n <= self.threshold else "hnsw"

    def add(self, vectors: np.ndarray) -> "VectorIndex":
        """Build the index over ``vectors`` (call once; builds according to their count)."""
        import faiss

        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape [n, {self.dim}], got {x.shape}")
        kind = self._choose(len(x))
        if kind == "ivf" and len(x) < 2:
            kind = "flat"
        if kind == "flat":
            index = faiss.IndexFlatIP(self.dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = self.ef_search
        else:
            nlist = self.nlist or max(1, min(int(4 * np.sqrt(len(x))), len(x) // 39 or 1))
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(x)
            index.nprobe = min(self.nprobe, nlist)
        use_gpu = gpu_available() if self.want_gpu is None else (self.want_gpu and gpu_available())
        if use_gpu and kind in ("flat", "ivf"):
            self._res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._res, 0, index)
            self.on_gpu = True
        index.add(x)
        self._index, self.built_kind, self.ntotal = index, kind, len(x)
        return self

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (similarities, row ids) per query; ids are -1 where fewer than k exist."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"expected queries of shape [m, {self.dim}], got {q.shape}")
        if self._index is None or self.ntotal == 0:
            return (np.full((len(q), k), -np.inf, dtype=np.float32),
                    np.full((len(q), k), -1, dtype=np.int64))
        sims, ids = self._index.search(q, k)
        return sims, ids
