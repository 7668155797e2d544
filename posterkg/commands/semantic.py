"""``posterkg semantic-ids build|show|assign``: RQ-VAE semantic IDs of the movies."""

from __future__ import annotations

import click

from posterkg.clikit import Env, common_options, pass_env, print_table


def _pct(xs) -> str:
    return " / ".join(f"{100 * x:.1f}%" for x in xs)


@click.group(name="semantic-ids")
def semantic_ids() -> None:
    """Semantic IDs: every movie as L RQ-VAE codes + 1 disambiguation code (tables semantic_ids,
    semantic_id_versions).

    \b
      posterkg semantic-ids build                   # versions "poster" and "text" (defaults)
      posterkg semantic-ids build --version poster --rebuild
      posterkg semantic-ids show
      posterkg semantic-ids assign --version poster # IDs for movies ingested later
    Versions are [semantic_ids.<version>] tables of the config (features, levels, codebook_size,
    code_dim, hidden, epochs, lr, batch_size, beta, seed, poster_encoder, text_encoder, reseed,
    rotation, device). Models read them with posterkg.semantic.load_codes(store, version).
    """


@semantic_ids.command()
@common_options
@click.option("--version", "version_names", multiple=True,
              help="Version to build (repeatable) [every configured one; default poster and text].")
@click.option("--rebuild", is_flag=True, help="Replace versions that exist (their IDs change).")
@pass_env
def build(env: Env, version_names, rebuild) -> None:
    """Train the RQ-VAE of each version on every movie and store the IDs.

    A version that exists is refused unless --rebuild: IDs are ground truth for the models trained
    on them. Seeds fixed: the same config on the same features gives the same IDs.
    """
    from posterkg.semantic.ids import build as run_build

    with env.store() as store:
        summaries = run_build(store, env.config, version_names=list(version_names) or None, rebuild=rebuild)
    for s in summaries:
        rows = [("features", ", ".join(s["features"])), ("levels x codes", f"{s['levels']} x {s['codebook_size']}"),
                ("movies", s["movies"]), ("input dim", s["dim"]),
                *[(f"missing {k}", v) for k, v in s["missing"].items()],
                ("usage per level", _pct(s["usage"])), ("collision rate", f"{100 * s['collision_rate']:.2f}%"),
                ("largest group", s["max_group"]), ("reconstruction", s["recon_loss"]),
                ("re-seeded codes", s["reseeded"]), ("seconds", round(s["seconds"], 1))]
        print_table(rows, [f"semantic ids {s['version']}", "value"])


@semantic_ids.command()
@common_options
@pass_env
def show(env: Env) -> None:
    """Stored versions: usage per level, collision rate (before disambiguation), largest group."""
    from posterkg.errors import InputError
    from posterkg.semantic.ids import describe

    with env.store(read_only=True) as store:
        rows = describe(store)
    if not rows:
        raise InputError("no semantic IDs in the database: run `posterkg semantic-ids build` first")
    print_table([(r["version"], "+".join(r["features"]), f"{r['levels']}x{r['codebook_size']}", r["movies"],
                  _pct(r.get("usage", [])), f"{100 * r.get('collision_rate', 0):.2f}%", r.get("max_group"),
                  r["max_disambiguation"], r.get("recon_loss"), str(r["created_at"])[:19]) for r in rows],
                ["version", "features", "LxK", "movies", "usage per level", "collisions", "max group",
                 "max extra code", "recon", "created"])


@semantic_ids.command()
@common_options
@click.option("--version", "version_names", multiple=True,
              help="Version (repeatable) [every stored one].")
@pass_env
def assign(env: Env, version_names) -> None:
    """Give movies without an ID one from the frozen RQ-VAE (no retraining; existing IDs never change)."""
    from posterkg.errors import InputError
    from posterkg.semantic.ids import assign as run_assign
    from posterkg.semantic.ids import versions

    with env.store() as store:
        names = list(version_names) or versions(store)
        if not names:
            raise InputError("no semantic IDs in the database: run `posterkg semantic-ids build` first")
        out = [run_assign(store, v) for v in names]
    print_table([(s["version"], s["movies_before"], s["assigned"], s["new_collisions"], s["max_group"],
                  ", ".join(f"{k} {v}" for k, v in s["missing"].items() if v) or "-") for s in out],
                ["version", "had IDs", "assigned", "new collisions", "max group", "missing features"])
