"""``posterkg tag``: tag posters with typed visual knowledge points."""

from __future__ import annotations

import click

from posterkg.clikit import Env, common_options, pass_env, print_table
from posterkg.errors import ConfigError


def engine_options(f):
    """``--engine``, ``--ray-address``, ``--workers`` (shared by ``tag`` and ``embed posters``)."""
    f = click.option("--workers", type=click.IntRange(min=1),
                     help="ray engine: actors [one per GPU, else one per CPU of the cluster].")(f)
    f = click.option("--ray-address", help="ray engine: cluster to join (auto, ray://host:10001) "
                     "[start a local one]. Every node needs posterkg and the poster paths.")(f)
    f = click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="local: this process; ray: Ray Data actors (pip install -e '.[ray]').")(f)
    return f


def _parse_movies(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError as exc:
        raise ConfigError(f"--movies takes comma-separated movie ids, got {text!r}") from exc


@click.command()
@common_options
@click.option("--backend", help="pixels (no weights, CPU) | hf | vllm | openai  [config: tag.backend, default pixels]")
@click.option("--model", help="Model id or local path; default: the backend's own (pixels-v1, Qwen/Qwen2-VL-2B-Instruct).")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N posters by movie id.")
@click.option("--movies", help="Only these movie ids, comma-separated: --movies 1,2,3")
@click.option("--batch-size", type=click.IntRange(min=1), help="Posters per backend call and per transaction [8].")
@click.option("--mode", type=click.Choice(["open", "closed"]),
              help="open: free values; closed: only values of the frozen vocabulary [open].")
@click.option("--schema", type=click.Path(dir_okay=False, exists=True),
              help="Knowledge schema TOML [the one shipped with posterkg].")
@click.option("--vocab-version", type=click.IntRange(min=0), help="Closed mode: vocabulary version [latest].")
@click.option("--retry-failed", is_flag=True, default=None, help="Re-try posters that failed in earlier runs.")
@engine_options
@pass_env
def tag(env: Env, backend, model, limit, movies, batch_size, mode, schema, vocab_version, retry_failed,
        engine, ray_address, workers) -> None:
    """Tag posters with typed visual knowledge points (table raw_points).

    Each poster gets up to 12 points such as (Lighting, "low-key lighting", 0.875), validated
    against the knowledge schema before they are stored. Resumable: a rerun skips posters
    already done for the same backend, model and schema; stop it any time (even kill -9) and
    run it again. Failures are recorded in tag_status with their reason.

    \b
    Examples:
      posterkg tag --backend pixels                  # all posters, no GPU, about 100/s
      posterkg tag --backend vllm --limit 100        # Qwen2-VL-2B on a GPU
      posterkg tag --backend openai --config my.toml # a `vllm serve` server ([tag.openai] base_url)
      posterkg tag --backend vllm --mode closed      # only values of the frozen vocabulary
      posterkg tag --movies 1,260,1196 --retry-failed
      posterkg tag --engine ray --workers 2           # Ray Data actors on a local Ray cluster
      posterkg tag --backend vllm --engine ray --ray-address auto   # one actor per GPU of a cluster

    Backend options come from the config sub-table of the backend, e.g.

    \b
      [tag]
      backend = "vllm"
      [tag.vllm]
      max_model_len = 4096
      gpu_memory_utilization = 0.85
    """
    from posterkg.engines import make_engine
    from posterkg.vlm.stage import TagConfig, run_tag

    env.config.override("tag", backend=backend, model=model, limit=limit, batch_size=batch_size,
                        mode=mode, schema=schema, vocab_version=vocab_version, retry_failed=retry_failed)
    cfg = env.config.section("tag", TagConfig)
    ids = _parse_movies(movies)
    eng = make_engine(engine, address=ray_address, workers=workers or 0)
    with env.store() as store:
        if eng.name == "local":
            run_tag(store, cfg, movies=ids)
            return
        try:
            summary = _tag_with_engine(store, cfg, eng, ids)
        finally:
            eng.shutdown()
    from posterkg.vlm.runner import summary_rows

    print_table(summary_rows(summary), ["tag", "value"])


def _tag_with_engine(store, cfg, eng, movies):
    """``run_tag`` for an engine that builds the backend on its workers (from a BackendRef)."""
    from posterkg.vlm.knowledge import load_schema
    from posterkg.vlm.runner import BackendRef, tag_posters
    from posterkg.vlm.stage import load_vocab

    cfg.check()
    schema = load_schema(cfg.schema or None)
    vocab = load_vocab(store, cfg.vocab_version or None) if cfg.mode == "closed" else None
    options = cfg.backend_options()
    return tag_posters(
        store, BackendRef(cfg.backend, cfg.model or None, options), schema.build_spec(vocab), movies=movies,
        limit=cfg.limit or None, batch_size=cfg.batch_size, retry_failed=cfg.retry_failed, engine=eng,
        params={"options": options, "schema": str(schema.source), "schema_file_hash": schema.hash,
                "vocab_version": cfg.vocab_version or None})
