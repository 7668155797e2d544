"""``posterkg embed posters|texts|list``: dense poster and text features for the models."""

from __future__ import annotations

import click

from posterkg.clikit import Env, common_options, pass_env, print_table
from posterkg.commands.tag import engine_options


def _parse_movies(text: str | None) -> list[int] | None:
    from posterkg.errors import ConfigError

    if not text:
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError as exc:
        raise ConfigError(f"--movies takes comma-separated movie ids, got {text!r}") from exc


def _summary_rows(s: dict) -> list[tuple]:
    rate = s.get("posters_per_s", s.get("texts_per_s", 0.0))
    rows = [("encoder", s["encoder"]), ("dim", s["dim"]), ("done", s["done"]), ("skipped", s["skipped"]),
            ("failed", s["failed"]), ("seconds", round(s["seconds"], 2)),
            ("posters/s" if s["kind"] == "poster" else "texts/s", f"{rate:.2f}")]
    if "device" in s:
        rows.insert(2, ("device", s["device"]))
    if "engine" in s:
        rows.insert(2, ("engine", s["engine"]))
    rows += [(f"failed: {r}", n) for r, n in s["failures"].items()]
    return rows


@click.group()
def embed() -> None:
    """Dense movie features: poster embeddings and text embeddings.

    \b
      posterkg embed posters                          # EfficientNet-Lite0, 1280-d, CPU or GPU
      posterkg embed posters --encoder pixels         # weight-free 197-d descriptor
      posterkg embed posters --encoder clip:openai/clip-vit-base-patch32 --device cuda
      posterkg embed texts --model minilm             # "title (year): genres", 384-d
      posterkg embed list
    Models read them with posterkg.embed.posters.load_features(store, kind, encoder).
    """


@embed.command()
@common_options
@click.option("--encoder", help="efficientnet-lite0 | efficientnet-lite0-full | pixels | clip:<id|path> | "
              "siglip:<id|path> | a module path  [config: features.poster_encoder, default efficientnet-lite0]")
@click.option("--batch-size", type=click.IntRange(min=1), help="Posters per forward pass and per transaction [16].")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N posters by movie id.")
@click.option("--movies", help="Only these movie ids, comma-separated: --movies 1,2,3")
@click.option("--device", help="auto (GPU when present) | cpu | cuda | cuda:N [auto].")
@click.option("--retry-failed", is_flag=True, default=None, help="Re-try posters that failed before.")
@engine_options
@pass_env
def posters(env: Env, encoder, batch_size, limit, movies, device, retry_failed, engine, ray_address, workers,
            parts) -> None:
    """Embed posters into table poster_embeddings (one vector per movie and encoder).

    Resumable and idempotent: a rerun skips posters already done with the same encoder; stop it
    any time (even kill -9: at most one batch is lost) and run it again. Posters that do not
    decode are recorded in poster_embed_status with their reason.

    `--engine ray` runs the encoder as Ray Data actors (one per GPU, or per CPU) on a local Ray
    cluster or the one at `--ray-address`; the rows are the same as the local engine's.
    """
    from posterkg.embed.posters import FeaturesConfig, run_poster_embed

    env.config.override("features", poster_encoder=encoder, batch_size=batch_size, limit=limit,
                        device=device, retry_failed=retry_failed, engine=engine, ray_address=ray_address,
                        workers=workers, parts=parts)
    cfg = env.config.section("features", FeaturesConfig)
    cfg.check()
    ids = _parse_movies(movies)
    with env.store() as store:
        summary = run_poster_embed(store, cfg, movies=ids, name=cfg.poster_encoder or "efficientnet-lite0")
    print_table(_summary_rows(summary), ["embed posters", "value"])


@embed.command()
@common_options
@click.option("--model", help="Text encoder: HF id, local path, or minilm | bge-small | bge-m3 "
              "[config: features.text_model, else [embed] model].")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N movies by id.")
@click.option("--batch-size", type=click.IntRange(min=1), default=512, show_default=True,
              help="Movies per transaction.")
@click.option("--force", is_flag=True, help="Re-embed movies that already have a vector of this model.")
@pass_env
def texts(env: Env, model, limit, batch_size, force) -> None:
    """Embed "title (year): genres" of every movie into table text_embeddings.

    The text encoder is the vocabulary stage's ([embed] model; `--model minilm` is the offline
    all-MiniLM-L6-v2 shipped in a wheel).
    """
    from posterkg.embed.posters import FeaturesConfig, _text_encoder, embed_texts

    env.config.override("features", text_model=model)
    cfg = env.config.section("features", FeaturesConfig)
    with env.store() as store:
        summary = embed_texts(store, _text_encoder(env.config, cfg), limit=limit, batch_size=batch_size,
                              force=force)
    print_table(_summary_rows(summary), ["embed texts", "value"])


@embed.command(name="list")
@common_options
@pass_env
def list_(env: Env) -> None:
    """Feature sets in the database: kind, encoder, movies, dimension."""
    from posterkg.embed.posters import feature_encoders

    with env.store(read_only=True) as store:
        rows = feature_encoders(store)
    print_table(rows, ["kind", "encoder", "movies", "dim"])
