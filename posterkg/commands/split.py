"""``posterkg split``."""

from __future__ import annotations

import click

from posterkg.clikit import Env, common_options, pass_env, print_table


@click.command()
@common_options
@click.option("--scheme", type=click.Choice(["temporal", "random", "coldstart", "files"]), help="Split scheme [temporal].")
@click.option("--train", "train_file", type=click.Path(dir_okay=False), help="--scheme files: the train file.")
@click.option("--valid", help="Fraction of each user's ratings (coldstart: of movies) for validation [0.1]; "
              "--scheme files: the valid file.")
@click.option("--test", help="Fraction of each user's ratings (coldstart: of movies) for test [0.1]; "
              "--scheme files: the test file.")
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
    rest to train (cold movies have no train rating). files: import a split given as three
    TSV/CSV files (user, item[, rating, timestamp]; RecBole .inter files too) to reproduce the
    exact split another toolkit used. Deterministic: the same inputs give the same split.

    \b
    Examples:
      posterkg split
      posterkg split --scheme random --seed 1
      posterkg split --scheme coldstart --valid 0.1 --test 0.1 --seed 0
      posterkg --config configs/ml1m.toml split --test 0.2
      posterkg split --scheme files --train a.train.inter --valid a.valid.inter --test a.test.inter
    """
    from posterkg.errors import InputError
    from posterkg.split import SplitConfig, describe, import_split, make_split

    train_file = flags.pop("train_file")
    if flags.get("scheme") == "files":
        if not (train_file and flags.get("valid") and flags.get("test")):
            raise click.UsageError("--scheme files needs --train FILE --valid FILE --test FILE")
        with env.store() as store:
            summary = import_split(store, train_file, flags["valid"], flags["test"])
        click.echo(describe(summary))
        _print_parts(summary)
        return
    if train_file:
        raise click.UsageError("--train is only for --scheme files")
    for key in ("valid", "test"):
        if flags.get(key) is not None:
            try:
                flags[key] = float(flags[key])
            except ValueError:
                raise InputError(f"--{key} must be a fraction such as 0.1 (or a file with --scheme files), "
                                 f"not {flags[key]!r}") from None
    env.config.override("split", **flags)
    cfg = env.config.section("split", SplitConfig)
    with env.store() as store:
        summary = make_split(store, cfg.scheme, cfg.valid, cfg.test, cfg.seed, min_ratings=cfg.min_ratings)
    click.echo(describe(summary))
    _print_parts(summary)


def _print_parts(summary: dict) -> None:
    total = sum(summary["parts"].values())
    if "movies" in summary:
        print_table([(p, n, summary["movies"][p], f"{100 * n / total:.1f}%") for p, n in summary["parts"].items()],
                    ["part", "ratings", "movies", "share"])
    else:
        print_table([(p, n, f"{100 * n / total:.1f}%") for p, n in summary["parts"].items()],
                    ["part", "ratings", "share"])
