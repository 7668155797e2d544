"""Semantic IDs in the database: build a version, assign IDs to new movies, read them back.

Tables (component ``semantic_ids``):

* ``semantic_ids(movie_id BIGINT, version VARCHAR, codes INTEGER[], PRIMARY KEY (movie_id, version))``:
  ``codes`` has ``levels + 1`` entries, the RQ-VAE's ``levels`` codes (each in ``[0, codebook_size)``)
  then the disambiguation code (0, 1, 2 ... among the movies whose first ``levels`` codes are
  identical, in movie-id order), so every movie's full ID is unique within a version;
* ``semantic_id_versions(version VARCHAR PRIMARY KEY, features VARCHAR, levels INTEGER,
  codebook_size INTEGER, created_at TIMESTAMP, metrics VARCHAR, state BLOB, config VARCHAR)``:
  ``features`` and ``config`` JSON, ``metrics`` JSON (usage per level, collision rate before
  disambiguation, largest group, reconstruction loss, missing features, seconds), ``state`` the
  RQ-VAE ``state_dict`` and the feature normaliser (``torch.save``), enough to encode new movies.

The IDs are ground truth for everything after them: :func:`build` refuses a version that exists
unless ``rebuild``; :func:`assign` gives movies without an ID one from the frozen state (no
retraining; a new collision gets the next free disambiguation code) and never changes an
existing ID. :func:`load_codes` is what models read.

Config: ``[semantic_ids.<version>]`` tables (:class:`SemanticConfig`); without any, two versions
are defined: ``poster`` (poster embedding + genres) and ``text`` (text embedding + genres).
``poster-collab``, ``text-collab`` (the same + the ``collab`` block) and ``collab`` (genres +
collab) are defined too, built only when named, and so are ``poster-year`` (poster embedding +
genres + release year) and ``year`` (genres + release year, the control without the poster).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import re
from typing import Any, Callable

import numpy as np

from posterkg.errors import ConfigError, InputError

COMPONENT = "semantic_ids"
MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS semantic_ids (
        movie_id BIGINT NOT NULL,
        version VARCHAR NOT NULL,
        codes INTEGER[] NOT NULL,
        PRIMARY KEY (movie_id, version)
    );
    CREATE TABLE IF NOT EXISTS semantic_id_versions (
        version VARCHAR PRIMARY KEY,
        features VARCHAR NOT NULL,
        levels INTEGER NOT NULL,
        codebook_size INTEGER NOT NULL,
        created_at TIMESTAMP NOT NULL,
        metrics VARCHAR,
        state BLOB NOT NULL,
        config VARCHAR
    );
    """,
]

SECTION = "semantic_ids"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclasses.dataclass
class SemanticConfig:
    """One ``[semantic_ids.<version>]`` table. Defaults chosen on the 3,883 ML-1M movies
    (docs/semantic_ids.md): 3 levels x 256 codes of dimension 32."""

    features: list[str] = dataclasses.field(default_factory=lambda: ["poster", "genres"])
    levels: int = 3
    codebook_size: int = 256
    code_dim: int = 32
    hidden: list[int] = dataclasses.field(default_factory=lambda: [512, 256])
    epochs: int = 100
    lr: float = 1e-3
    batch_size: int = 256
    beta: float = 0.25
    seed: int = 0
    poster_encoder: str = "efficientnet-lite0"
    text_encoder: str = "minilm"
    collab_dim: int = 64         # the collab block's SVD dimensions (features = [..., "collab"])
    reseed: bool = True          # dead-code re-seeding after every epoch
    rotation: bool = False       # the rotation trick instead of the straight-through estimator
    device: str = "cpu"          # cpu | cuda | cuda:N

    def check(self, where: str) -> None:
        from posterkg.semantic.features import check_features

        try:
            check_features(self.features)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        for key, low in (("levels", 1), ("codebook_size", 2), ("code_dim", 1), ("epochs", 1), ("batch_size", 1),
                         ("collab_dim", 1)):
            if getattr(self, key) < low:
                raise ConfigError(f"{where} {key} must be >= {low}, got {getattr(self, key)}")
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"{where} hidden sizes must be >= 1, got {self.hidden}")
        if self.lr <= 0 or self.beta < 0:
            raise ConfigError(f"{where} lr must be > 0 and beta >= 0")


DEFAULT_VERSIONS: dict[str, dict[str, Any]] = {
    "poster": {"features": ["poster", "genres"]},
    "text": {"features": ["text", "genres"]},
}
# reachable by name (``build --version NAME``, a model's ``semantic_ids``) but not built by
# default: the collab block reads the split's train part (docs/semantic_ids.md)
NAMED_VERSIONS: dict[str, dict[str, Any]] = {
    **DEFAULT_VERSIONS,
    "poster-collab": {"features": ["poster", "genres", "collab"]},
    "text-collab": {"features": ["text", "genres", "collab"]},
    "collab": {"features": ["genres", "collab"]},
    # the release year as metadata beside the poster (the text block reads it in the title)
    "poster-year": {"features": ["poster", "genres", "year"]},
    "year": {"features": ["genres", "year"]},
}


def version_configs(config=None) -> dict[str, SemanticConfig]:
    """version -> its settings: the ``[semantic_ids.<version>]`` tables of ``config`` (a
    :class:`posterkg.config.Config` or None), or the two defaults when there are none. The
    defaults ``poster`` and ``text`` and the collab versions of ``NAMED_VERSIONS`` stay available
    by name (:func:`version_config`) either way."""
    from posterkg.config import check_fields

    raw = (config.data.get(SECTION, {}) if config is not None else {}) or {}
    where_file = f"{config.path}: " if config is not None and config.path else ""
    out = {}
    for name, table in raw.items():
        where = f"{where_file}[{SECTION}.{name}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where_file}[{SECTION}] {name} = {table!r}: each semantic-id version is a "
                              f"table, e.g. [{SECTION}.poster] with features = [\"poster\", \"genres\"]")
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{where}: a version name is letters, digits, '_', '-', '.'")
        values = {**NAMED_VERSIONS.get(name, {}), **check_fields(SemanticConfig, table, where)}
        cfg = SemanticConfig(**values)
        cfg.check(where)
        out[name] = cfg
    if not out:
        out = {n: SemanticConfig(**v) for n, v in DEFAULT_VERSIONS.items()}
    return out


def version_config(config, version: str) -> SemanticConfig:
    cfgs = version_configs(config)
    if version in cfgs:
        return cfgs[version]
    if version in NAMED_VERSIONS:
        return SemanticConfig(**NAMED_VERSIONS[version])
    raise ConfigError(f"unknown semantic-id version {version!r}; configured: {', '.join(cfgs)} "
                      f"(add a [{SECTION}.{version}] table to the config)")


def ensure_tables(store) -> None:
    store.migrate(COMPONENT, MIGRATIONS)


def versions(store) -> list[str]:
    if not store.table_exists("semantic_id_versions"):
        return []
    return [r[0] for r in store.execute("SELECT version FROM semantic_id_versions ORDER BY version").fetchall()]


# -- state ----------------------------------------------------------------------------------------

def _state_blob(model, normaliser) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"format": 1, "model_config": dataclasses.asdict(model.cfg),
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "normaliser": normaliser.to_state()}, buf)
    return buf.getvalue()


@dataclasses.dataclass
class Version:
    name: str
    features: list[str]
    levels: int
    codebook_size: int
    created_at: Any
    metrics: dict
    config: dict
    model: Any            # RQVAE in eval mode, on the CPU
    normaliser: Any       # posterkg.semantic.features.Normaliser


def load_version(store, version: str) -> Version:
    """The stored version: its RQ-VAE (eval mode, CPU) and feature normaliser from ``state``."""
    import torch

    from posterkg.semantic.features import Normaliser
    from posterkg.semantic.rqvae import RQVAE, RQVAEConfig

    if version not in versions(store):
        have = ", ".join(versions(store)) or "none"
        raise InputError(f"no semantic-id version {version!r} in the database (have: {have}); "
                         f"run `posterkg semantic-ids build --version {version}`")
    row = store.execute("SELECT features, levels, codebook_size, created_at, metrics, state, config "
                        "FROM semantic_id_versions WHERE version = ?", [version]).fetchone()
    st = torch.load(io.BytesIO(bytes(row[5])), map_location="cpu", weights_only=True)
    mc = dict(st["model_config"])
    mc["hidden"] = tuple(mc["hidden"])
    model = RQVAE(RQVAEConfig(**mc))
    model.load_state_dict(st["model"])
    model.eval()
    return Version(version, json.loads(row[0]), int(row[1]), int(row[2]), row[3],
                   json.loads(row[4] or "{}"), json.loads(row[6] or "{}"), model,
                   Normaliser.from_state(st["normaliser"]))


def load_codes(store, version: str) -> tuple[np.ndarray, np.ndarray]:
    """``(movie_ids int64 [n], codes int64 [n, L + 1])`` of one version, sorted by movie id."""
    if version not in versions(store):
        have = ", ".join(versions(store)) or "none"
        raise InputError(f"no semantic-id version {version!r} in the database (have: {have}); "
                         f"run `posterkg semantic-ids build --version {version}`")
    tbl = store.con.sql("SELECT movie_id, codes FROM semantic_ids WHERE version = ? ORDER BY movie_id",
                        params=[version]).to_arrow_table()
    ids = np.array(tbl.column("movie_id").to_numpy(), np.int64)
    levels = int(store.scalar("SELECT levels FROM semantic_id_versions WHERE version = ?", [version]))
    if len(ids) == 0:
        return ids, np.zeros((0, levels + 1), np.int64)
    flat = tbl.column("codes").combine_chunks().flatten().to_numpy()
    return ids, np.array(flat, np.int64).reshape(len(ids), levels + 1)


def _movie_ids(store) -> np.ndarray:
    if not store.table_exists("movies") or store.count("movies") == 0:
        raise InputError("no movies in the database: run `posterkg ingest movielens` first")
    return store.execute("SELECT movie_id FROM movies ORDER BY movie_id").fetchnumpy()["movie_id"].astype(np.int64)


def _write_codes(con, version: str, movie_ids: np.ndarray, full: np.ndarray) -> None:
    import pyarrow as pa

    tbl = pa.table({"movie_id": pa.array(movie_ids.astype(np.int64)),
                    "version": pa.array([version] * len(movie_ids), pa.string()),
                    "codes": pa.array([list(map(int, r)) for r in full], pa.list_(pa.int32()))})
    con.execute("SELECT 1").fetchall()
    con.register("_semantic_ids_new", tbl)
    try:
        con.execute("INSERT INTO semantic_ids SELECT movie_id, version, codes FROM _semantic_ids_new")
    finally:
        con.unregister("_semantic_ids_new")


# -- build ----------------------------------------------------------------------------------------

def build_version(store, version: str, cfg: SemanticConfig, *, rebuild: bool = False,
                  on_epoch: Callable[[int, dict], None] | None = None) -> dict:
    """Train the RQ-VAE of one version on every movie of ``movies`` and store its IDs.
    Refused when the version exists unless ``rebuild``. Returns the summary (also stored as
    the version's ``metrics``)."""
    import torch

    from posterkg.semantic.features import item_features
    from posterkg.semantic.rqvae import RQVAE, RQVAEConfig, collision_stats, disambiguate, fit, usage

    if not _NAME.fullmatch(version):
        raise ConfigError(f"semantic-id version name {version!r}: letters, digits, '_', '-', '.'")
    cfg.check(f"[{SECTION}.{version}]")
    ensure_tables(store)
    if version in versions(store) and not rebuild:
        n = store.count("semantic_ids", f"WHERE version = '{version}'")
        raise InputError(f"semantic-id version {version!r} exists ({n:,} movies); its IDs are ground truth "
                         f"for the models trained on them: pass --rebuild to replace it, or "
                         f"`posterkg semantic-ids assign --version {version}` for new movies")
    movie_ids = _movie_ids(store)
    x, norm, missing = item_features(store, movie_ids, cfg.features, poster_encoder=cfg.poster_encoder,
                                     text_encoder=cfg.text_encoder, collab_dim=cfg.collab_dim, seed=cfg.seed)
    try:
        device = torch.device(cfg.device)
    except RuntimeError as exc:
        raise ConfigError(f"[{SECTION}.{version}] device = {cfg.device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"[{SECTION}.{version}] device = {cfg.device!r}, but torch sees no GPU; use \"cpu\"")
    torch.manual_seed(cfg.seed)
    model = RQVAE(RQVAEConfig(in_dim=x.shape[1], levels=cfg.levels, codebook_size=cfg.codebook_size,
                              code_dim=cfg.code_dim, hidden=tuple(cfg.hidden), beta=cfg.beta,
                              rotation=cfg.rotation)).to(device)
    res = fit(model, x, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
              reseed=cfg.reseed, on_epoch=on_epoch)
    model = model.cpu().eval()
    codes = model.codes(x)
    stats = collision_stats(codes)
    full = disambiguate(movie_ids, codes)
    hist = res.history
    metrics = {
        "movies": int(len(movie_ids)), "dim": int(x.shape[1]),
        "blocks": {b.name: {"encoder": b.encoder, "dim": b.dim} for b in norm.blocks},
        "missing": missing,
        "usage": usage(codes, cfg.codebook_size),
        "collision_rate": stats["collision_rate"], "max_group": stats["max_group"],
        "distinct_tuples": stats["distinct"],
        "recon_loss": model.reconstruction(x),
        "train_recon_first": hist[0]["recon"], "train_recon_last": hist[-1]["recon"],
        "train_recon_curve": {h["epoch"]: round(h["recon"], 5) for h in hist
                              if h["epoch"] % max(1, cfg.epochs // 10) == 0 or h["epoch"] == 1},
        "reseeded": int(sum(h["reseeded"] for h in hist)),
        "epochs": cfg.epochs, "seconds": res.seconds,
    }
    blob = _state_blob(model, norm)
    with store.transaction() as con:
        con.execute("DELETE FROM semantic_ids WHERE version = ?", [version])
        con.execute("DELETE FROM semantic_id_versions WHERE version = ?", [version])
        con.execute("INSERT INTO semantic_id_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [version, json.dumps(list(cfg.features)), cfg.levels, cfg.codebook_size,
                     dt.datetime.now(dt.timezone.utc).replace(tzinfo=None), json.dumps(metrics), blob,
                     json.dumps(dataclasses.asdict(cfg))])
        _write_codes(con, version, movie_ids, full)
    return {"version": version, "features": list(cfg.features), "levels": cfg.levels,
            "codebook_size": cfg.codebook_size, **metrics}


def build(store, config=None, *, version_names: list[str] | None = None, rebuild: bool = False,
          progress: bool | None = None) -> list[dict]:
    """Build the named versions (default: every configured one). Existing versions are refused
    (before any training) unless ``rebuild``. One summary dict per version."""
    from posterkg.progress import bar

    names = list(version_names) if version_names else list(version_configs(config))
    cfgs = {n: version_config(config, n) for n in names}
    ensure_tables(store)
    have = set(versions(store))
    if not rebuild and have & set(names):
        existing = sorted(have & set(names))
        raise InputError(f"semantic-id version(s) {', '.join(existing)} exist; their IDs are ground truth: "
                         f"pass --rebuild to replace them, or `posterkg semantic-ids assign` for new movies")
    out = []
    for name, cfg in cfgs.items():
        pb = bar(total=cfg.epochs, desc=f"semantic ids {name}", unit="epoch",
                 disable=None if progress is None else not progress)

        def on_epoch(_e, rec, pb=pb):
            pb.update(1)
            pb.set_postfix(recon=f"{rec['recon']:.4f}", usage="/".join(f"{u:.2f}" for u in rec["usage"]))

        try:
            out.append(build_version(store, name, cfg, rebuild=rebuild, on_epoch=on_epoch))
        finally:
            pb.close()
    return out


# -- assign ---------------------------------------------------------------------------------------

def assign(store, version: str) -> dict:
    """IDs for movies of ``movies`` that have none in ``version``, from the frozen RQ-VAE and
    normaliser (no retraining). A new movie whose L codes match existing movies gets the next
    free disambiguation code of that group (new movies in movie-id order); existing IDs never
    change."""
    from posterkg.semantic.features import item_features
    from posterkg.semantic.rqvae import collision_stats

    ensure_tables(store)
    ver = load_version(store, version)
    all_ids = _movie_ids(store)
    have_ids, have_codes = load_codes(store, version)
    new = np.setdiff1d(all_ids, have_ids)
    summary = {"version": version, "movies_before": int(len(have_ids)), "assigned": int(len(new)),
               "new_collisions": 0, "missing": {b.name: 0 for b in ver.normaliser.blocks}}
    if len(new) == 0:
        summary["max_group"] = int(have_codes[:, -1].max() + 1) if len(have_codes) else 0
        return summary
    x, _, missing = item_features(store, new, normaliser=ver.normaliser)
    codes = ver.model.codes(x)
    L = ver.levels
    next_free: dict[tuple, int] = {}
    for row in have_codes:
        key = tuple(int(c) for c in row[:L])
        next_free[key] = max(next_free.get(key, 0), int(row[L]) + 1)
    full = np.zeros((len(new), L + 1), np.int64)
    collided = 0
    for i, row in enumerate(codes):          # `new` is sorted by movie id
        key = tuple(int(c) for c in row)
        d = next_free.get(key, 0)
        collided += d > 0
        next_free[key] = d + 1
        full[i, :L] = row
        full[i, L] = d
    with store.transaction() as con:
        _write_codes(con, version, new, full)
    summary.update({"missing": missing, "new_collisions": int(collided),
                    "max_group": int(max(next_free.values())),
                    "collision_rate_new": collision_stats(codes)["collision_rate"]})
    return summary


# -- show -----------------------------------------------------------------------------------------

def describe(store) -> list[dict]:
    """One dict per stored version: build metrics plus the table's current state (after assigns)."""
    if not store.table_exists("semantic_id_versions"):
        return []
    rows = []
    for name, feats, levels, k, created, metrics in store.execute(
            "SELECT version, features, levels, codebook_size, created_at, metrics FROM semantic_id_versions "
            "ORDER BY version").fetchall():
        m = json.loads(metrics or "{}")
        n_now, max_d = store.execute(
            f"SELECT count(*), coalesce(max(codes[{int(levels) + 1}]), -1) FROM semantic_ids WHERE version = ?",
            [name]).fetchone()
        rows.append({**m, "version": name, "features": json.loads(feats), "levels": int(levels),
                     "codebook_size": int(k), "created_at": created, "movies_built": m.get("movies"),
                     "movies": int(n_now), "max_disambiguation": int(max_d)})
    return rows
