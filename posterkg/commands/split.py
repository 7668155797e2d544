"""``posterkg split``."""

from __future__ import annotations

import click

from posterkg.clikit import Env, common_options, pass_env, print_table


@click.command()
@common_options
@click.option("--scheme", type=click.Choice(["temporal", "random", "coldstart"]), help="Split scheme [temporal].")
@click.option("--valid", type=float, help="Fraction of each user's ratings (coldstart: of movies) for validation [0.1].")
@click.option("--test", type=float, help="Fraction of each user's ratings (coldstart: of movies) for test [0.1].")
@click.option("--seed", type=int, help="Seed of the random and coldstart schemes [0].")
@click.option("--min-ratings", type=int, help="Users with fewer ratings are dropped [10].")
@pass_env
def split(env: Env, **flags) -> None:
    """Split every user's ratings into train / valid / test (table split).

    temporal (the evaluation protocol): per user, ratings sorted by (ts, movie_id); the last
    max(1, floor(n * test)) go to test, the max(1, floor(n * valid)) before them to valid, the
    rest to train; users with fewer than 10 ratings are dropped. random: the same counts on a
    seeded per-user shuffle. coldstart: a seeded max(1, floor(M * test)) of the M rated movies
    with every rating of them go to test, the next max(1, floor(M * valid)) movies to valid, the
    rest to train (cold movies have no train rating). Deterministic: the same inputs give the
    same split.

    \b
    Examples:
      posterkg split
      posterkg split --scheme random --seed 1
      posterkg split --scheme coldstart --valid 0.1 --test 0.1 --seed 0
      posterkg --config configs/ml1m.toml split --test 0.2
    """
    from posterkg.split import SplitConfig, describe, make_split

    env.config.override("split", **flags)
    cfg = env.config.section("split", SplitConfig)
    with env.store() as store:
        summary = make_split(store, cfg.scheme, cfg.valid, cfg.test, cfg.seed, min_ratings=cfg.min_ratings)
    click.echo(describe(summary))
    total = sum(summary["parts"].values())
    if "movies" in summary:
        print_table([(p, n, summary["movies"][p], f"{100 * n / total:.1f}%") for p, n in summary["parts"].items()],
                    ["part", "ratings", "movies", "share"])
    else:
        print_table([(p, n, f"{100 * n / total:.1f}%") for p, n in summary["parts"].items()],
                    ["part", "ratings", "share"])
