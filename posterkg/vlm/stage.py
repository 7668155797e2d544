"""The ``tag`` pipeline stage and the ``[tag]`` configuration shared with ``posterkg tag``.

``[tag]`` keys (defaults)::

    [tag]
    backend = "pixels"      # pixels | hf | vllm | openai (or a module path of your own backend)
    model = ""              # "" = the backend's default model (pixels-v1, Qwen/Qwen2-VL-2B-Instruct)
    batch_size = 8          # posters per backend call and per database transaction
    mode = "open"           # open: free values; closed: values from the frozen vocabulary
    schema = ""             # knowledge schema TOML; "" = the default shipped with posterkg
    vocab_version = 0       # closed mode: frozen vocabulary version, 0 = the latest
    limit = 0               # tag only the first N posters (by movie id); 0 = all
    retry_failed = false    # re-try posters that failed before

    [tag.vllm]              # passed as **options to the backend's constructor
    max_model_len = 4096
    [tag.hf]
    [tag.openai]
    [tag.pixels]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import click

from posterkg.config import Config
from posterkg.errors import ConfigError, PosterkgError
from posterkg.pipeline import Stage
from posterkg.store import Store


@dataclasses.dataclass
class TagConfig:
    backend: str = "pixels"
    model: str = ""
    batch_size: int = 8
    mode: str = "open"
    schema: str = ""
    vocab_version: int = 0
    limit: int = 0
    retry_failed: bool = False
    engine: str = "local"            # local | ray (posterkg.engines; docs/ray.md)
    ray_address: str = ""            # ray: cluster to join ("" = start a local one)
    workers: int = 0                 # ray: actors (0 = one per GPU, else one per CPU)
    parts: str = ""                  # ray: Parquet parts folder ("" = <db stem>.parts; "none")
    ray_llm: bool = True             # ray + vllm: through Ray Data's LLM processor (false: one actor per GPU)
    pixels: dict = dataclasses.field(default_factory=dict)
    hf: dict = dataclasses.field(default_factory=dict)
    vllm: dict = dataclasses.field(default_factory=dict)
    openai: dict = dataclasses.field(default_factory=dict)
    imagenet: dict = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        if self.mode not in ("open", "closed"):
            raise ConfigError(f"[tag] mode must be 'open' or 'closed', got {self.mode!r}")
        if self.batch_size < 1:
            raise ConfigError("[tag] batch_size must be >= 1")
        if self.limit < 0 or self.vocab_version < 0:
            raise ConfigError("[tag] limit and vocab_version must be >= 0")
        for name in ("pixels", "hf", "vllm", "openai", "imagenet"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"[tag.{name}] must be a table")

    def backend_options(self) -> dict[str, Any]:
        return dict(getattr(self, self.backend, None) or {})


def load_vocab(store: Store, version: int | None) -> dict[str, list[str]]:
    """The frozen vocabulary for closed mode (from the ``schema`` stage), with clear errors."""
    try:
        from posterkg.schema.vocab import load_frozen_vocab
    except ImportError as exc:
        raise PosterkgError(
            f"closed mode needs the frozen vocabulary of the schema stage, which is not available "
            f"({exc}); use --mode open") from exc
    try:
        vocab = load_frozen_vocab(store, version)
    except PosterkgError as exc:
        raise PosterkgError(f"closed mode: {exc} (or tag with --mode open)") from exc
    if not vocab or not any(vocab.values()):
        raise PosterkgError("closed mode: no frozen vocabulary yet; run `posterkg schema discover` and "
                            "`posterkg schema freeze` first, or use --mode open")
    return vocab


def run_tag(store: Store, cfg: TagConfig, *, movies: Sequence[int] | None = None,
            echo: bool = True) -> dict[str, Any]:
    """Build the spec, the engine (``[tag] engine``) and the backend from ``cfg``, tag, print the
    summary table; return the summary. The local engine builds the backend here; the ray engine
    builds it on its actors from a :class:`~posterkg.vlm.runner.BackendRef`."""
    from posterkg.clikit import print_table
    from posterkg.engines import engine_for
    from posterkg.vlm.backends import get_backend
    from posterkg.vlm.knowledge import load_schema
    from posterkg.vlm.runner import BackendRef, summary_rows, tag_posters

    cfg.check()
    engine = engine_for(cfg, "tag", store.path)
    schema = load_schema(cfg.schema or None)
    vocab = load_vocab(store, cfg.vocab_version or None) if cfg.mode == "closed" else None
    spec = schema.build_spec(vocab)
    options = cfg.backend_options()
    local = engine.name == "local"
    backend = get_backend(cfg.backend, cfg.model or None, **options) if local \
        else BackendRef(cfg.backend, cfg.model or None, options)
    try:
        summary = tag_posters(
            store, backend, spec, movies=movies, limit=cfg.limit or None, batch_size=cfg.batch_size,
            retry_failed=cfg.retry_failed, engine=engine,
            params={"options": options, "schema": str(schema.source), "schema_file_hash": schema.hash,
                    "vocab_version": cfg.vocab_version or None},
        )
    finally:
        if local:
            backend.close()
        else:
            engine.shutdown()
    if echo:
        print_table(summary_rows(summary), ["tag", "value"])
    return summary


def _files(store: Store, config: Config) -> list:
    """The knowledge schema file the answers are validated against (default: the shipped one)."""
    from posterkg.vlm.knowledge import DEFAULT_SCHEMA_PATH

    cfg = config.section("tag", TagConfig)
    return [cfg.schema or DEFAULT_SCHEMA_PATH]


def _run(store: Store, config: Config) -> None:
    cfg = config.section("tag", TagConfig)
    summary = run_tag(store, cfg)
    if summary["done"] == 0 and summary["skipped"] == 0:
        click.echo("warning: no poster was tagged", err=True)


STAGE = Stage("tag", sections=("tag",), reads=("posters",), files=_files, run=_run)
