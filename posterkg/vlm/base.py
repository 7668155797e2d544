"""The small protocol every tagging backend implements.

A backend turns a batch of posters into candidate knowledge points. It never touches the
database: :mod:`posterkg.vlm.runner` owns resume, validation, storage and failure records, so a
backend only has to be correct about images and models.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True)
class PosterJob:
    movie_id: int
    path: Path


@dataclasses.dataclass
class TagSpec:
    """What to ask for: built once per run from the knowledge schema (and vocabulary)."""

    prompt: str                      # the user-turn text sent with each image
    json_schema: dict[str, Any]      # the answer's JSON schema (open or closed mode)
    max_tokens: int                  # a budget that always fits a complete object
    schema_hash: str
    mode: str = "open"               # "open" | "closed"
    # closed mode: the allowed values per type (None in open mode); the runner validates with it
    vocab: dict[str, list[str]] | None = None
    # JSON separators the token budget assumes: xgrammar's default with any_whitespace=False
    # (what vLLM's disable_any_whitespace gives). A backend compiling its own grammar (hf) should
    # pass them: xgr.Grammar.from_json_schema(s, any_whitespace=False, separators=spec.separators)
    separators: tuple[str, str] = (", ", ": ")


@dataclasses.dataclass
class TagResult:
    """One poster's outcome. Exactly one of ``raw``/``points`` or ``error`` is meaningful.

    ``raw`` is the model's text (the runner parses and validates it); backends that produce
    structured points directly (``pixels``) fill ``points`` instead. ``reason`` is a short
    machine-readable failure class: ``corrupt_image``, ``truncated``, ``invalid_json``,
    ``schema_violation``, ``out_of_memory``, ``backend_error``.
    """

    movie_id: int
    raw: str | None = None
    points: list[dict[str, Any]] | None = None
    error: str | None = None
    reason: str | None = None
    finish_reason: str | None = None   # "stop" | "length" when the backend knows it


class Backend(Protocol):
    name: str    # "pixels" | "hf" | "vllm" | "openai"
    model: str   # model id or path; part of the resume key

    def tag_batch(self, jobs: list[PosterJob], spec: TagSpec) -> list[TagResult]:
        """Tag a batch; must return one result per job, failures included, never raise for one bad poster."""
        ...

    def close(self) -> None:
        ...
