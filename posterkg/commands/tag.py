"""``posterkg tag``: tag posters with typed visual knowledge points."""

from __future__ import annotations

import click

from posterkg.clikit import Env, common_options, pass_env
from posterkg.errors import ConfigError


def engine_options(f):
    """``--engine``, ``--ray-address``, ``--workers``, ``--parts`` (shared by ``tag`` and ``embed
    posters``; config: the same keys in ``[tag]`` / ``[features]``)."""
    f = click.option("--parts", help="ray engine: folder of the actors' Parquet parts (read by DuckDB; "
                     "a restarted job commits what they hold) [<db stem>.parts beside the database]; "
                     "'none': results through Ray's object store.")(f)
    f = click.option("--workers", type=click.IntRange(min=1),
                     help="ray engine: actors [one per GPU, else one per CPU of the cluster].")(f)
    f = click.option("--ray-address", help="ray engine: cluster to join (auto, ray://host:10001) "
                     "[start a local one]. Every node needs posterkg and the poster paths.")(f)
    f = click.option("--engine", type=click.Choice(["local", "ray"]),
                     help="local: this process; ray: Ray Data actors (pip install -e '.[ray]') "
                     "[config: engine, default local].")(f)
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
@click.option("--ray-llm/--no-ray-llm", default=None,
              help="ray engine + vllm backend: through Ray Data's LLM processor (ray.data.llm) or "
              "posterkg's own actor per GPU [config: tag.ray_llm, default on].")
@pass_env
def tag(env: Env, backend, model, limit, movies, batch_size, mode, schema, vocab_version, retry_failed,
        engine, ray_address, workers, parts, ray_llm) -> None:
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

    The engine too (`posterkg run` uses it): `[tag] engine = "ray"`, `ray_address`, `workers`,
    `parts`, `ray_llm` (the vllm backend through ray.data.llm, docs/ray.md).
    """
    from posterkg.vlm.stage import TagConfig, run_tag

    env.config.override("tag", backend=backend, model=model, limit=limit, batch_size=batch_size,
                        mode=mode, schema=schema, vocab_version=vocab_version, retry_failed=retry_failed,
                        engine=engine, ray_address=ray_address, workers=workers, parts=parts, ray_llm=ray_llm)
    cfg = env.config.section("tag", TagConfig)
    ids = _parse_movies(movies)
    with env.store() as store:
        run_tag(store, cfg, movies=ids)
