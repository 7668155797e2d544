"""The three graphs of posterkg and their fusion.

* :mod:`~posterkg.graphs.interactions`: user - movie edges from the *train* part of the split,
  signed (+1 liked, 0 neutral, -1 disliked) -> table ``user_movie_edges``.
* :mod:`~posterkg.graphs.concepts`: movie -> concept edges typed by knowledge type
  -> table ``movie_concept_edges``.
* :mod:`~posterkg.graphs.preferences`: user -> concept preferences, long- and short-term, positive
  and negative -> table ``user_prefs``.
* :mod:`~posterkg.graphs.hetero`: all of it fused into one PyG ``HeteroData``
  (:func:`~posterkg.graphs.hetero.build_hetero`).

This module holds only the ``[graph]`` configuration and the table definitions, so importing it
is cheap (no torch).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from posterkg.errors import ConfigError

COMPONENT = "graph"

# Append-only: never edit a released step, add a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS user_movie_edges (
        user_id INTEGER NOT NULL,
        movie_id INTEGER NOT NULL,
        sign SMALLINT NOT NULL,      -- +1 rating >= 4, 0 rating 3, -1 rating <= 2
        rating DOUBLE NOT NULL,
        ts BIGINT NOT NULL,
        PRIMARY KEY (user_id, movie_id)
    );
    CREATE TABLE IF NOT EXISTS movie_concept_edges (
        movie_id INTEGER NOT NULL,
        concept_id INTEGER NOT NULL,
        type VARCHAR NOT NULL,       -- knowledge type of the concept (Color_Palette, ...)
        weight DOUBLE NOT NULL,
        PRIMARY KEY (movie_id, concept_id)
    );
    CREATE TABLE IF NOT EXISTS user_prefs (
        user_id INTEGER NOT NULL,
        concept_id INTEGER NOT NULL,
        horizon VARCHAR NOT NULL,    -- 'long' | 'short'
        score DOUBLE NOT NULL,       -- log-ratio; negative = disliked
        support INTEGER NOT NULL,    -- liked + disliked interactions in the horizon with the concept
        PRIMARY KEY (user_id, concept_id, horizon)
    );
    CREATE TABLE IF NOT EXISTS graph_info (
        built_at TIMESTAMP DEFAULT current_timestamp,
        config JSON,
        counts JSON
    );
    """,
]

HORIZONS = ("long", "short")


@dataclasses.dataclass
class GraphConfig:
    """Settings of the ``[graph]`` section (all optional).

    ``half_life_days``: long-term preferences weigh an interaction by
    ``0.5 ** (age / half_life)``, age measured back from the user's last train interaction.
    ``short_n``: short-term preferences use the user's last ``short_n`` train interactions.
    ``smoothing``: strength (pseudo-interactions) of the Beta prior centred on the base rate.
    ``min_support``: keep a preference only if at least this many liked/disliked interactions
    of the horizon involve the concept (0 keeps every concept, absence being evidence too).
    ``top_k``: keep at most this many positive and this many negative preferences per user and
    horizon, strongest first (0 = keep all).
    ``min_concept_weight``: drop movie -> concept edges lighter than this.
    ``vocab_version``: concept vocabulary version to use (default: the newest in movie_concepts).
    ``interaction_weight``: ``"rating"`` (liked: (r-3)/2, disliked: (3-r)/2, neutral: 1) or
    ``"unit"`` (every interaction edge weighs 1) -- the ``edge_weight`` of interaction edges.
    ``pref_horizon``: which preferences become likes/dislikes edges of the fused graph:
    ``"long"``, ``"short"`` or ``"mix"`` (mean of both scores, a missing one counting 0).
    ``user_interests``: where the fused graph's user -> concept edges come from: ``""`` (default)
    = ``user_prefs``; a backend name (``"stats"``, ``"hf"``, ``"vllm"``, ``"openai"``) = the
    interests of that backend's latest ``posterkg interests extract`` run (its whole key: backend,
    model, vocabulary version, prompt/schema hash); a run id = the key of that run. Edge weight =
    the interest's confidence (likes) or its negative (dislikes), per ``pref_horizon``. With
    ``"stats"`` the build (re-)extracts the stats interests itself (incremental); the LLM backends
    must have been run (``posterkg interests extract``) on the graph tables first.
    """

    half_life_days: float = 180.0
    short_n: int = 20
    smoothing: float = 5.0
    min_support: int = 1
    top_k: int = 32
    min_concept_weight: float = 0.0
    vocab_version: int | None = None
    interaction_weight: str = "rating"
    pref_horizon: str = "long"
    user_interests: str = ""

    def __post_init__(self) -> None:
        if not self.half_life_days > 0:
            raise ConfigError("[graph] half_life_days must be > 0")
        if self.short_n < 1:
            raise ConfigError("[graph] short_n must be >= 1")
        if not self.smoothing > 0:
            raise ConfigError("[graph] smoothing must be > 0 (it is the prior's strength)")
        if self.min_support < 0 or self.top_k < 0:
            raise ConfigError("[graph] min_support and top_k must be >= 0")
        if self.interaction_weight not in ("rating", "unit"):
            raise ConfigError("[graph] interaction_weight must be 'rating' or 'unit'")
        if self.pref_horizon not in ("long", "short", "mix"):
            raise ConfigError("[graph] pref_horizon must be 'long', 'short' or 'mix'")


def graph_config(cfg: Any = None) -> GraphConfig:
    """Accept a :class:`GraphConfig`, a :class:`posterkg.config.Config`, a dict or ``None``."""
    from posterkg.config import Config

    if cfg is None:
        return GraphConfig()
    if isinstance(cfg, GraphConfig):
        return cfg
    if isinstance(cfg, Config):
        return cfg.section("graph", GraphConfig)
    if isinstance(cfg, dict):
        return Config(data={"graph": dict(cfg)}).section("graph", GraphConfig)
    raise TypeError(f"expected GraphConfig, Config, dict or None, got {type(cfg).__name__}")


def ensure_tables(store) -> None:
    store.migrate(COMPONENT, MIGRATIONS)


def build_graphs(store, cfg: Any = None) -> dict[str, int]:
    """Rebuild ``user_movie_edges``, ``movie_concept_edges`` and ``user_prefs``; return counts."""
    import json

    from posterkg.graphs.concepts import build_movie_concept_edges
    from posterkg.graphs.interactions import build_user_movie_edges
    from posterkg.graphs.preferences import build_user_prefs

    gc = graph_config(cfg)
    ensure_tables(store)
    counts = {
        "user_movie_edges": build_user_movie_edges(store),
        "movie_concept_edges": build_movie_concept_edges(store, gc),
    }
    counts["user_prefs"] = build_user_prefs(store, gc)
    if gc.user_interests:
        from posterkg.graphs.preferences import interest_key

        if gc.user_interests == "stats":
            # derived from user_prefs alone: (re-)extract it here, incrementally (only users whose
            # input changed), so `posterkg run` with user_interests = "stats" works end to end
            from posterkg.interests import InterestsConfig
            from posterkg.interests.runner import StatsGenerator, extract_interests

            s = extract_interests(store, StatsGenerator(), InterestsConfig(short_n=gc.short_n))
            counts["interests_extracted"] = s["done"]
        key = interest_key(store, gc.user_interests)
        counts["user_interests"] = int(store.scalar(
            "SELECT count(*) FROM user_interests WHERE backend = ? AND model = ? AND vocab_version = ? "
            "AND spec_hash = ?", list(key)))
    store.execute(
        "INSERT INTO graph_info (config, counts) VALUES (?, ?)",
        [json.dumps(dataclasses.asdict(gc)), json.dumps(counts)],
    )
    return counts
