"""Graph-RAG user interests: an LLM reads each user's subgraph and writes their long- and
short-term interests onto the frozen concept vocabulary (``posterkg interests extract``).

For one user, :mod:`~posterkg.interests.retrieval` looks up the train movies in time order with
their concepts (the movie side of the graph), the short-term window, the disliked movies and the
user's current interest nodes (previous run, else ``user_prefs``), and writes them as compact text
within a token budget. :mod:`~posterkg.interests.spec` builds the question and a JSON schema per
user whose concept values are the vocabulary (enums) and whose evidence movie ids are the user's
own (enums of ints), plus the token budget that always fits an answer.
:mod:`~posterkg.interests.generate` puts the question to the tagging backends (``hf``, ``vllm``,
``openai``) as a text-only prompt; :mod:`~posterkg.interests.stats` is the weight-free reference
that writes the same table from ``user_prefs``. :mod:`~posterkg.interests.runner` validates and
stores, resumably. See ``docs/interests.md``.

This module holds the ``[interests]`` configuration and the table definitions (no torch).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from posterkg.errors import ConfigError

COMPONENT = "interests"

# Append-only: never edit a released step, add a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS user_interests (
        user_id INTEGER NOT NULL,
        concept_id INTEGER NOT NULL,
        horizon VARCHAR NOT NULL,        -- 'long' | 'short'
        polarity VARCHAR NOT NULL,       -- 'likes' | 'dislikes'
        confidence DOUBLE NOT NULL,      -- one of the confidence levels (0.125 .. 1)
        evidence INTEGER[] NOT NULL,     -- supporting movie ids: the user's own train movies
        backend VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        vocab_version INTEGER NOT NULL,
        spec_hash VARCHAR NOT NULL,      -- prompt + schema builder (or stats settings)
        run_id VARCHAR NOT NULL,
        PRIMARY KEY (user_id, concept_id, horizon, polarity, backend, model, vocab_version, spec_hash)
    );
    CREATE TABLE IF NOT EXISTS interest_status (
        user_id INTEGER NOT NULL,
        backend VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        vocab_version INTEGER NOT NULL,
        spec_hash VARCHAR NOT NULL,
        input_hash VARCHAR NOT NULL,     -- the user's train ratings, their concepts, user_prefs
        status VARCHAR NOT NULL,         -- 'done' | 'failed'
        reason VARCHAR,
        error VARCHAR,
        run_id VARCHAR NOT NULL,
        attempts INTEGER NOT NULL,
        prompt_tokens INTEGER,
        prompt_budget INTEGER,
        output_tokens INTEGER,
        max_tokens INTEGER,
        movies_total INTEGER,            -- train movies of the user
        movies_in_prompt INTEGER,
        movies_dropped INTEGER,          -- oldest movies left out to fit the budget
        interests INTEGER,
        updated_at TIMESTAMP NOT NULL,
        PRIMARY KEY (user_id, backend, model, vocab_version, spec_hash)
    );
    CREATE TABLE IF NOT EXISTS interest_runs (
        run_id VARCHAR PRIMARY KEY,
        backend VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        vocab_version INTEGER NOT NULL,
        spec_hash VARCHAR NOT NULL,
        started_at TIMESTAMP NOT NULL,
        finished_at TIMESTAMP,
        done INTEGER NOT NULL DEFAULT 0,
        skipped INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        interests INTEGER NOT NULL DEFAULT 0,
        params JSON
    );
    """,
]

BACKENDS = ("stats", "hf", "vllm", "openai")
HORIZONS = ("long", "short")
POLARITIES = ("likes", "dislikes")
#: confidence an interest may take (dyadic: printed exactly by xgrammar, see posterkg.vlm.knowledge)
CONFIDENCE_LEVELS: tuple[float, ...] = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


@dataclasses.dataclass
class InterestsConfig:
    """Settings of the ``[interests]`` section (all optional); see docs/interests.md."""

    backend: str = "stats"
    model: str = ""
    batch_size: int = 8              # users per backend call and per database transaction
    limit: int = 0                   # only the first N selected users (by id); 0 = all
    retry_failed: bool = False
    max_interests: int = 16          # interests per answer (maxItems)
    max_evidence: int = 3            # supporting movie ids per interest
    short_n: int = 0                 # short-term window; 0 = [graph] short_n of the last build
    current_k: int = 5               # current interest nodes shown per horizon and polarity
    context_tokens: int = 8192       # prompt + answer must fit (the model's context)
    max_prompt_tokens: int = 0       # 0 = context_tokens - the answer's budget
    max_tokens: int = 0              # 0 = the schema's guaranteed answer budget; > 0 forces a cap
    concepts_per_movie: int = 8      # strongest concepts listed per movie
    concepts_in_prompt: int = 40     # vocabulary entries listed per type (the grammar has all)
    title_chars: int = 40
    vocab_version: int = 0           # 0 = the version of the graph's movie -> concept edges
    hf: dict = dataclasses.field(default_factory=dict)
    vllm: dict = dataclasses.field(default_factory=dict)
    openai: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("[interests] batch_size must be >= 1")
        for key in ("max_interests", "max_evidence", "current_k", "context_tokens"):
            if getattr(self, key) < (0 if key == "current_k" else 1):
                raise ConfigError(f"[interests] {key} must be >= {0 if key == 'current_k' else 1}")
        for key in ("limit", "short_n", "max_prompt_tokens", "max_tokens", "vocab_version"):
            if getattr(self, key) < 0:
                raise ConfigError(f"[interests] {key} must be >= 0")
        if self.concepts_per_movie < 1 or self.title_chars < 8 or self.concepts_in_prompt < 1:
            raise ConfigError("[interests] concepts_per_movie and concepts_in_prompt must be >= 1, "
                              "title_chars >= 8")
        for name in ("hf", "vllm", "openai"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"[interests.{name}] must be a table")

    def backend_options(self, tag_section: dict[str, Any] | None = None) -> dict[str, Any]:
        """``[interests.<backend>]``, else the tagging stage's ``[tag.<backend>]`` options."""
        own = getattr(self, self.backend, None) if self.backend in ("hf", "vllm", "openai") else None
        if own:
            return dict(own)
        return dict((tag_section or {}).get(self.backend) or {})


def ensure_tables(store) -> None:
    store.migrate(COMPONENT, MIGRATIONS)
