"""Discovery: cluster the unique values of each knowledge type into concepts.

Per type, the unique values of a seeded sample of movies' open-mode points are embedded (cached,
see :mod:`posterkg.embed.cache`), reduced with PCA and clustered:

* ``method = "hdbscan"`` (default): :class:`sklearn.cluster.HDBSCAN` on the PCA-reduced,
  re-normalised vectors (Euclidean distance on unit vectors orders pairs like cosine). Values it
  calls noise stay out of the vocabulary (``noise = "pool"``: projection maps them to a concept
  when one is close enough, else they wait in the candidate pool for ``schema grow``) or become
  one-member concepts (``noise = "singleton"``).
* ``method = "agglomerative"``: average-linkage agglomerative clustering on cosine distance cut at
  ``distance_threshold``; no noise.

If a type ends up outside ``[min_concepts, max_concepts]``, HDBSCAN's ``min_cluster_size`` is
raised (too many concepts) and agglomerative clustering with a fixed number of clusters takes over
when nothing else lands in range. Each concept is named by its most frequent member (ties: the
shorter, then alphabetical).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Any, Iterable

import numpy as np
import pandas as pd

from posterkg.errors import ConfigError

METHODS = ("hdbscan", "agglomerative")


@dataclasses.dataclass
class SchemaConfig:
    """``[schema]`` section."""

    vocab: str = ""                  # vocabulary TOML; "" = <db file stem>.vocab.toml beside the db
    sample: float = 0.05             # fraction of tagged movies used for discovery
    seed: int = 0
    min_sample_movies: int = 50      # discovery uses at least this many movies (or all there are)
    method: str = "hdbscan"          # hdbscan | agglomerative
    reduce_dim: int = 12             # PCA components before clustering (0 = no reduction)
    min_cluster_size: int = 2        # HDBSCAN
    distance_threshold: float = 0.5  # agglomerative: cosine distance cut (average linkage)
    min_concepts: int = 2            # target range of concepts per type
    max_concepts: int = 60
    noise: str = "pool"              # pool | singleton (what HDBSCAN noise values become)
    threshold: float = 0.4           # projection: min cosine similarity to a concept centroid
    aggregate: str = "noisy_or"      # movie_concepts weight: noisy_or | max | sum
    backend: str = ""                # which raw_points: "" = the most recent tag run's backend
    model: str = ""                  # "" = that run's model
    schema_hash: str = ""            # "" = any
    grow_min_pool: int = 20          # unique pooled values of a type before `grow` proposes concepts
    grow_min_size: int = 3           # members a proposed concept needs
    index: str = "auto"              # FAISS index kind: auto | flat | hnsw | ivf

    def check(self) -> "SchemaConfig":
        if self.method not in METHODS:
            raise ConfigError(f"[schema] method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.noise not in ("pool", "singleton"):
            raise ConfigError(f"[schema] noise must be pool or singleton, got {self.noise!r}")
        if self.aggregate not in ("noisy_or", "max", "sum"):
            raise ConfigError(f"[schema] aggregate must be noisy_or, max or sum, got {self.aggregate!r}")
        if not 0 < self.sample <= 1:
            raise ConfigError(f"[schema] sample must be in (0, 1], got {self.sample}")
        if self.min_concepts < 1 or self.max_concepts < self.min_concepts:
            raise ConfigError("[schema] need 1 <= min_concepts <= max_concepts")
        return self


@dataclasses.dataclass
class TypeReport:
    type: str
    values: int
    concepts: int
    sizes: list[int]
    noise_share: float
    silhouette: float | None
    method: str

    def row(self) -> tuple:
        s = sorted(self.sizes) or [0]
        return (self.type, self.values, self.concepts, s[0], float(np.median(s)), s[-1],
                f"{100 * self.noise_share:.1f}%",
                "" if self.silhouette is None else round(self.silhouette, 3), self.method)


REPORT_HEADERS = ["type", "values", "concepts", "min", "median", "max", "noise", "silhouette", "method"]


def _reduce(x: np.ndarray, dim: int, seed: int) -> np.ndarray:
    if dim and x.shape[0] > dim + 1 and x.shape[1] > dim:
        from sklearn.decomposition import PCA

        x = PCA(n_components=dim, random_state=seed).fit_transform(x)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(x, dtype=np.float64)


def _n_concepts(labels: np.ndarray) -> int:
    return len(set(labels.tolist()) - {-1})


def _agglomerative(x: np.ndarray, *, threshold: float | None, n_clusters: int | None) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    if len(x) < 2:
        return np.zeros(len(x), dtype=int)
    model = AgglomerativeClustering(
        n_clusters=n_clusters, metric="cosine", linkage="average",
        distance_threshold=None if n_clusters else threshold,
    )
    return model.fit_predict(x)


def cluster_vectors(x: np.ndarray, cfg: SchemaConfig) -> tuple[np.ndarray, str]:
    """Labels (``-1`` = noise) for unit vectors ``x`` and the method that produced them."""
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=int), cfg.method
    if n == 1:
        return np.zeros(1, dtype=int), cfg.method
    lo, hi = cfg.min_concepts, min(cfg.max_concepts, n)
    lo = min(lo, hi)
    if cfg.method == "hdbscan" and n >= 3:
        from sklearn.cluster import HDBSCAN

        xr = _reduce(x, cfg.reduce_dim, cfg.seed)
        mcs = max(2, cfg.min_cluster_size)
        while mcs <= max(2, n // 2):
            labels = HDBSCAN(min_cluster_size=mcs, min_samples=1, copy=True).fit_predict(xr)
            k = _n_concepts(labels)
            if lo <= k <= hi:
                return labels, f"hdbscan(mcs={mcs})"
            if k < lo:
                break
            mcs = math.ceil(mcs * 1.5)
        labels = _agglomerative(x, threshold=None, n_clusters=min(max(lo, 1), n) if k < lo else hi)
        return labels, "agglomerative(fallback)"
    labels = _agglomerative(x, threshold=cfg.distance_threshold, n_clusters=None)
    k = _n_concepts(labels)
    if k < lo or k > hi:
        labels = _agglomerative(x, threshold=None, n_clusters=lo if k < lo else hi)
        return labels, "agglomerative(n fixed)"
    return labels, "agglomerative"


def silhouette(x: np.ndarray, labels: np.ndarray) -> float | None:
    mask = labels >= 0
    k = len(set(labels[mask].tolist()))
    if k < 2 or k >= mask.sum():
        return None
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(x[mask], labels[mask], metric="cosine"))


def name_of(members: Iterable[str], counts: Counter) -> str:
    """The most frequent member; ties go to the shorter, then the alphabetically first."""
    return min(members, key=lambda v: (-counts.get(v, 0), len(v), v))


def cluster_type(type_name: str, values: list[str], counts: Counter, vectors: np.ndarray,
                 cfg: SchemaConfig) -> tuple[list[dict[str, Any]], TypeReport, np.ndarray]:
    """Cluster one type's unique values; return concepts ({name, members}), report, labels."""
    labels, method = cluster_vectors(vectors, cfg)
    groups: dict[int, list[str]] = {}
    for v, lab in zip(values, labels.tolist()):
        groups.setdefault(lab, []).append(v)
    noise = groups.pop(-1, [])
    clusters = list(groups.values())
    if cfg.noise == "singleton":
        clusters += [[v] for v in noise]
    concepts = []
    for members in clusters:
        members = sorted(members, key=lambda v: (-counts.get(v, 0), v))
        concepts.append({"name": name_of(members, counts), "members": members})
    concepts.sort(key=lambda c: (-sum(counts.get(m, 0) for m in c["members"]), c["name"]))
    report = TypeReport(
        type=type_name, values=len(values), concepts=len(concepts),
        sizes=[len(c["members"]) for c in concepts],
        noise_share=(len(noise) / len(values)) if values else 0.0,
        silhouette=silhouette(vectors, labels), method=method,
    )
    return concepts, report, labels


# -- discovery over the database ---------------------------------------------------------------

def sample_movies(movie_ids: list[int], fraction: float, seed: int, minimum: int = 0) -> list[int]:
    """A seeded sample: the same ids, fraction and seed always give the same movies."""
    ids = sorted(set(int(m) for m in movie_ids))
    n = min(len(ids), max(int(math.ceil(fraction * len(ids))), minimum))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(np.asarray(ids, dtype=np.int64), size=n, replace=False).tolist()) if n else []


def discover(store, cfg: SchemaConfig, cache, *, selection=None) -> tuple[list[dict[str, Any]], list[TypeReport], dict[str, Any]]:
    """Cluster the open-mode values of a seeded movie sample; return (concepts, reports, meta)."""
    from posterkg.schema.project import _type_expr, known_types, open_mode_filter, select_points

    cfg.check()
    sel = selection or select_points(store, cfg)
    where, params = sel.where("r")
    open_only = open_mode_filter(store, "r")
    movie_ids = [r[0] for r in store.execute(
        f"SELECT DISTINCT movie_id FROM raw_points r WHERE {where} AND {open_only}", params).fetchall()]
    chosen = sample_movies(movie_ids, cfg.sample, cfg.seed, cfg.min_sample_movies)
    store.register("_disc_movies", pd.DataFrame({"movie_id": chosen}))
    try:
        te = _type_expr(known_types(), "r")
        counts = store.df(
            f"SELECT {te} AS type, r.value, count(*) AS n FROM raw_points r "
            f"WHERE {where} AND {open_only} AND r.movie_id IN (SELECT movie_id FROM _disc_movies) "
            "GROUP BY 1, 2 ORDER BY 1, 2", params)
    finally:
        store.con.unregister("_disc_movies")
    concepts: list[dict[str, Any]] = []
    reports: list[TypeReport] = []
    for t, grp in counts.groupby("type", sort=True):
        values = grp["value"].tolist()
        cnt = Counter(dict(zip(values, grp["n"].tolist())))
        vecs = cache.embed(values, desc=f"embedding {t}")
        found, report, _ = cluster_type(str(t), values, cnt, vecs, cfg)
        concepts += [{"type": str(t), **c} for c in found]
        reports.append(report)
    meta = {"model": cache.model, "backend": sel.backend, "tag_model": sel.model,
            "sample": cfg.sample, "seed": cfg.seed, "movies": len(chosen), "method": cfg.method}
    return concepts, reports, meta
