"""The vocabulary: a human-editable TOML draft and its frozen, numbered versions in DuckDB.

TOML layout (``schema discover`` writes it; edit it by hand, then ``schema freeze``)::

    [meta]
    model = "sentence-transformers/all-MiniLM-L6-v2#mean"

    [[Color_Palette]]
    name = "warm tones"                 # rename freely
    members = ["warm tones", "orange-hued", "warm colour palette"]
    id = 3                              # only in files exported from a frozen version

* merge two concepts: move the members of one into the other and delete its block;
* split: cut a block in two, give the new one a new name (and no ``id``);
* the concept type is the array name (one of the knowledge types, or ``Others``).

Freezing never renumbers: a concept keeps its ``concept_id`` when the TOML names its ``id``, else
when a live concept of the same type has the same name, else when it shares at least half of its
members (Jaccard >= 0.5) with one not matched yet; everything else gets a new id (max + 1, ids are
never reused). Concepts missing from the file are retired in the new version (their rows and ids
stay). Centroids are the normalised mean of the members' embeddings.

Tables (component ``vocab``): ``vocab_versions``, ``concepts`` (one row per concept id ever),
``vocab_concepts`` (per version: which concepts, name, centroid), ``concept_members``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from posterkg.errors import ConfigError, InputError, PosterkgError
from posterkg.store import Store

COMPONENT = "vocab"
MIGRATIONS = [
    """
    CREATE TABLE IF NOT EXISTS vocab_versions (
        version INTEGER PRIMARY KEY,
        created_at TIMESTAMP NOT NULL,
        source VARCHAR,              -- TOML path, 'grow', ...
        source_hash VARCHAR,         -- hash of the concepts it was frozen from (skip identical refreezes)
        model VARCHAR NOT NULL,      -- embedding model of the centroids (cache key name)
        parent INTEGER,              -- version it was derived from
        n_concepts INTEGER NOT NULL,
        note VARCHAR
    );
    CREATE TABLE IF NOT EXISTS concepts (
        concept_id INTEGER PRIMARY KEY,
        type VARCHAR NOT NULL,
        name VARCHAR NOT NULL,       -- latest name
        version INTEGER NOT NULL,    -- version that introduced it
        retired INTEGER              -- first version without it (NULL: live)
    );
    CREATE TABLE IF NOT EXISTS vocab_concepts (
        version INTEGER NOT NULL,
        concept_id INTEGER NOT NULL,
        type VARCHAR NOT NULL,
        name VARCHAR NOT NULL,
        n_members INTEGER NOT NULL,
        centroid FLOAT[] NOT NULL,
        PRIMARY KEY (version, concept_id)
    );
    CREATE TABLE IF NOT EXISTS concept_members (
        version INTEGER NOT NULL,
        type VARCHAR NOT NULL,
        member VARCHAR NOT NULL,
        concept_id INTEGER NOT NULL,
        PRIMARY KEY (version, type, member)
    );
    """,
]


class VocabularyError(PosterkgError):
    """A vocabulary file or version is unusable."""


def ensure_tables(store: Store) -> None:
    store.migrate(COMPONENT, MIGRATIONS)


# -- TOML ------------------------------------------------------------------------------------

def read_toml(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(meta, concepts) where each concept is {type, name, members, id?}."""
    from posterkg.config import read_toml

    p = Path(path)
    data = read_toml(p, what="vocabulary file", error=VocabularyError, missing=InputError,
                     hint=" (run `posterkg schema discover` first)")
    meta = data.pop("meta", {}) or {}
    concepts = []
    for type_name, blocks in data.items():
        if not isinstance(blocks, list):
            raise VocabularyError(f"{p}: [{type_name}] must be an array of tables ([[{type_name}]])")
        for i, b in enumerate(blocks):
            where = f"{p}: {type_name}[{i}]"
            if not isinstance(b, dict):
                raise VocabularyError(f"{where}: must be a table")
            extra = set(b) - {"name", "members", "id"}
            if extra:
                raise VocabularyError(f"{where}: unknown key(s) {', '.join(sorted(extra))}; known: name, members, id")
            name = str(b.get("name", "")).strip()
            members = [str(m).strip() for m in b.get("members", []) if str(m).strip()]
            if not name:
                raise VocabularyError(f"{where}: needs a name")
            if name not in members:
                members.insert(0, name)
            cid = b.get("id")
            if cid is not None and not isinstance(cid, int):
                raise VocabularyError(f"{where}: id must be an integer")
            concepts.append({"type": type_name, "name": name, "members": list(dict.fromkeys(members)),
                             "id": cid})
    _check_unique(concepts, str(p))
    return meta, concepts


def _check_unique(concepts: list[dict[str, Any]], where: str) -> None:
    seen: dict[tuple[str, str], str] = {}
    names: set[tuple[str, str]] = set()
    for c in concepts:
        key = (c["type"], c["name"].lower())
        if key in names:
            raise VocabularyError(f"{where}: two {c['type']} concepts are named {c['name']!r}; merge or rename one")
        names.add(key)
        for m in c["members"]:
            k = (c["type"], m.lower())
            if k in seen and seen[k] != c["name"]:
                raise VocabularyError(
                    f"{where}: {c['type']} member {m!r} is in both {seen[k]!r} and {c['name']!r}; keep it in one")
            seen[k] = c["name"]


HEADER = """\
# posterkg vocabulary. One [[Type]] block per concept: `name` is its label, `members` the values
# it stands for. Edit by hand, then `posterkg schema freeze`:
#   rename: change `name`;  merge: move members into one block and delete the other;
#   split: cut a block in two (the new one without `id`).  Concept ids never change once frozen.
"""


def write_toml(path: str | Path, concepts: list[dict[str, Any]], meta: Mapping[str, Any] | None = None,
               *, report: list[str] | None = None) -> Path:
    import tomli_w

    doc: dict[str, Any] = {"meta": {k: v for k, v in (meta or {}).items() if v is not None}}
    for c in concepts:
        block: dict[str, Any] = {"name": c["name"], "members": list(c["members"])}
        if c.get("id") is not None:
            block["id"] = int(c["id"])
        doc.setdefault(c["type"], []).append(block)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = HEADER + "".join(f"# {line}\n" for line in (report or [])) + "\n" + tomli_w.dumps(doc)
    p.write_text(text, encoding="utf-8")
    return p


# -- frozen versions ---------------------------------------------------------------------------

def latest_version(store: Store) -> int | None:
    if not store.table_exists("vocab_versions"):
        return None
    return store.scalar("SELECT max(version) FROM vocab_versions")


def _resolve_version(store: Store, version: int | None) -> int:
    v = latest_version(store) if version is None else version
    if v is None:
        raise VocabularyError("no frozen vocabulary yet; run `posterkg schema discover` and `posterkg schema freeze`")
    if not store.scalar("SELECT count(*) FROM vocab_versions WHERE version = ?", [v]):
        raise VocabularyError(f"vocabulary version {v} does not exist")
    return int(v)


def concepts_hash(concepts: list[dict[str, Any]]) -> str:
    blob = json.dumps(sorted((c["type"], c["name"], sorted(c["members"]), c.get("id")) for c in concepts),
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def version_concepts(store: Store, version: int | None = None, *, with_centroids: bool = False) -> pd.DataFrame:
    """The concepts of a version: concept_id, type, name, n_members[, centroid], members (list)."""
    v = _resolve_version(store, version)
    cols = "vc.concept_id, vc.type, vc.name, vc.n_members" + (", vc.centroid" if with_centroids else "")
    frame = store.df(f"SELECT {cols} FROM vocab_concepts vc WHERE vc.version = ? ORDER BY vc.concept_id", [v])
    members = store.df("SELECT concept_id, list(member ORDER BY member) AS members FROM concept_members "
                       "WHERE version = ? GROUP BY concept_id", [v])
    frame = frame.merge(members, on="concept_id", how="left")
    frame["members"] = frame["members"].apply(lambda m: list(m) if m is not None else [])
    return frame


def load_frozen_vocab(store: Store, version: int | None = None) -> dict[str, list[str]]:
    """Concept names per type of a frozen version (latest by default), for closed-mode tagging."""
    ensure_tables(store)
    frame = version_concepts(store, version)
    out: dict[str, list[str]] = {}
    for t, name in zip(frame["type"], frame["name"]):
        out.setdefault(t, []).append(name)
    return {t: sorted(v) for t, v in sorted(out.items())}


def _match_ids(store: Store, concepts: list[dict[str, Any]], parent: int | None) -> list[int]:
    """Stable ids: by explicit id, then by (type, name), then by member overlap, else new."""
    all_ids = store.df("SELECT concept_id, type FROM concepts")
    known_type = dict(zip(all_ids["concept_id"].tolist(), all_ids["type"].tolist()))
    next_id = (max(known_type) + 1) if known_type else 1
    prev = version_concepts(store, parent) if parent is not None else pd.DataFrame(
        columns=["concept_id", "type", "name", "members"])
    by_name = {(t, n.lower()): int(i) for i, t, n in zip(prev["concept_id"], prev["type"], prev["name"])}
    prev_members = {int(i): (t, {m.lower() for m in ms})
                    for i, t, ms in zip(prev["concept_id"], prev["type"], prev["members"])}
    ids: list[int | None] = [None] * len(concepts)
    used: set[int] = set()
    for k, c in enumerate(concepts):
        cid = c.get("id")
        if cid is not None:
            if cid in known_type and known_type[cid] != c["type"]:
                raise VocabularyError(f"concept id {cid} belongs to type {known_type[cid]}, not {c['type']}")
            if cid in used:
                raise VocabularyError(f"concept id {cid} is used twice in the file")
            if cid not in known_type:
                raise VocabularyError(f"concept id {cid} ({c['name']!r}) was never frozen; remove the id "
                                      "to create a new concept")
            ids[k] = int(cid)
            used.add(int(cid))
    for k, c in enumerate(concepts):
        if ids[k] is None:
            cid = by_name.get((c["type"], c["name"].lower()))
            if cid is not None and cid not in used:
                ids[k] = cid
                used.add(cid)
    for k, c in enumerate(concepts):
        if ids[k] is None:
            mine = {m.lower() for m in c["members"]}
            best, best_j = None, 0.5
            for cid, (t, ms) in prev_members.items():
                if t != c["type"] or cid in used:
                    continue
                j = len(mine & ms) / max(1, len(mine | ms))
                if j >= best_j:
                    best, best_j = cid, j
            if best is not None:
                ids[k] = best
                used.add(best)
    for k in range(len(concepts)):
        if ids[k] is None:
            ids[k] = next_id
            next_id += 1
    return [int(i) for i in ids]


def freeze(store: Store, concepts: list[dict[str, Any]], cache, *, source: str = "",
           note: str = "", force: bool = False) -> tuple[int, bool]:
    """Store ``concepts`` as a new numbered version; return (version, created).

    Identical to the latest version's source (same concepts, same model): nothing is written and
    (latest, False) is returned, unless ``force``.
    """
    ensure_tables(store)
    if not concepts:
        raise VocabularyError("the vocabulary has no concepts")
    _check_unique(concepts, source or "vocabulary")
    parent = latest_version(store)
    ids = _match_ids(store, concepts, parent)
    h = concepts_hash([{**c, "id": i} for c, i in zip(concepts, ids)])
    if parent is not None and not force:
        row = store.execute("SELECT source_hash, model FROM vocab_versions WHERE version = ?", [parent]).fetchall()
        if row and row[0][0] == h and row[0][1] == cache.model:
            return int(parent), False
    members_all = sorted({m for c in concepts for m in c["members"]})
    vec = dict(zip(members_all, cache.embed(members_all, desc="embedding members")))
    version = (parent or 0) + 1
    now = dt.datetime.now()
    vc_rows, mem_rows, new_rows = [], [], []
    existing = set(store.df("SELECT concept_id FROM concepts")["concept_id"].tolist())
    for cid, c in zip(ids, concepts):
        cen = np.mean([vec[m] for m in c["members"]], axis=0)
        cen = cen / max(float(np.linalg.norm(cen)), 1e-12)
        vc_rows.append({"version": version, "concept_id": cid, "type": c["type"], "name": c["name"],
                        "n_members": len(c["members"]), "centroid": cen.astype(np.float32)})
        mem_rows += [{"version": version, "type": c["type"], "member": m, "concept_id": cid}
                     for m in c["members"]]
        if cid not in existing:
            new_rows.append({"concept_id": cid, "type": c["type"], "name": c["name"], "version": version})
    with store.transaction():
        store.execute(
            "INSERT INTO vocab_versions (version, created_at, source, source_hash, model, parent, n_concepts, note) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [version, now, source, h, cache.model, parent, len(concepts), note])
        store.insert_df("concepts", pd.DataFrame(new_rows, columns=["concept_id", "type", "name", "version"]))
        store.insert_df("vocab_concepts", pd.DataFrame(vc_rows))
        store.insert_df("concept_members", pd.DataFrame(mem_rows))
        live = pd.DataFrame({"concept_id": ids, "name": [c["name"] for c in concepts]})
        store.register("_vocab_live", live)
        try:
            store.execute("UPDATE concepts SET name = l.name, retired = NULL FROM _vocab_live l "
                          "WHERE concepts.concept_id = l.concept_id")
            store.execute("UPDATE concepts SET retired = ? WHERE retired IS NULL AND concept_id NOT IN "
                          "(SELECT concept_id FROM _vocab_live)", [version])
        finally:
            store.con.unregister("_vocab_live")
    return version, True


def export_concepts(store: Store, version: int | None = None) -> list[dict[str, Any]]:
    """A frozen version as TOML-ready concepts (with ids), to edit and re-freeze."""
    frame = version_concepts(store, version)
    return [{"type": t, "name": n, "members": list(ms), "id": int(i)}
            for i, t, n, ms in zip(frame["concept_id"], frame["type"], frame["name"], frame["members"])]


def version_model(store: Store, version: int | None = None) -> str:
    v = _resolve_version(store, version)
    return str(store.scalar("SELECT model FROM vocab_versions WHERE version = ?", [v]))


def check_model(store: Store, cache, version: int | None = None) -> None:
    model = version_model(store, version)
    if model != cache.model:
        raise ConfigError(
            f"vocabulary version {_resolve_version(store, version)} was frozen with embedding model {model}, "
            f"but [embed] now gives {cache.model}; use the same model or freeze again")
