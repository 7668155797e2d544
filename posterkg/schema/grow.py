"""``schema grow``: new concepts from the candidate pool, appended as a new vocabulary version.

The pool is every point that projection left unassigned. Once a type has at least
``[schema] grow_min_pool`` unique pooled values, they are clustered like discovery does; clusters
with at least ``grow_min_size`` members become proposed concepts (named by their most frequent
member). Accepting them freezes a new version made of *all* concepts of the previous version
under their own ids plus the new ones under fresh ids (max + 1): nothing is renumbered. Projecting
afterwards retries only the pooled points, so earlier assignments do not move.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from posterkg.schema import vocab as V
from posterkg.schema.discover import SchemaConfig, TypeReport, cluster_type
from posterkg.store import Store


def pool_values(store: Store) -> "Any":
    if not store.table_exists("point_concepts"):
        import pandas as pd

        return pd.DataFrame(columns=["type", "value", "n"])
    return store.df("SELECT type, value, count(*) AS n FROM point_concepts WHERE concept_id IS NULL "
                    "GROUP BY type, value ORDER BY type, value")


def propose(store: Store, cfg: SchemaConfig, cache) -> tuple[list[dict[str, Any]], list[TypeReport]]:
    """Proposed new concepts per type (only types whose pool is large enough)."""
    pool = pool_values(store)
    proposals: list[dict[str, Any]] = []
    reports: list[TypeReport] = []
    live = set()
    if V.latest_version(store) is not None:
        live = {(t, n.lower()) for t, n in zip(*[V.version_concepts(store)[c] for c in ("type", "name")])}
    for t, grp in pool.groupby("type", sort=True):
        if len(grp) < cfg.grow_min_pool:
            continue
        values = grp["value"].tolist()
        counts = Counter(dict(zip(values, grp["n"].tolist())))
        vecs = cache.embed(values, desc=f"embedding pool {t}")
        found, report, _ = cluster_type(str(t), values, counts, vecs, cfg)
        reports.append(report)
        for c in found:
            if len(c["members"]) >= cfg.grow_min_size and (str(t), c["name"].lower()) not in live:
                proposals.append({"type": str(t), **c})
    return proposals, reports


def grow(store: Store, cfg: SchemaConfig, cache, *, dry_run: bool = False) -> dict[str, Any]:
    """Propose and (unless ``dry_run``) freeze a new version with the proposals appended."""
    V.ensure_tables(store)
    parent = V._resolve_version(store, None)
    V.check_model(store, cache, parent)
    proposals, reports = propose(store, cfg, cache)
    result: dict[str, Any] = {"parent": parent, "version": parent, "proposals": proposals,
                              "reports": reports, "created": False}
    if dry_run or not proposals:
        return result
    concepts = V.export_concepts(store, parent) + [{**p, "id": None} for p in proposals]
    version, created = V.freeze(store, concepts, cache, source="grow",
                                note=f"{len(proposals)} concept(s) grown from the candidate pool")
    result.update(version=version, created=created)
    return result
