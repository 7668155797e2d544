"""``posterkg run`` (the whole pipeline from a config) and ``posterkg demo`` (self-check)."""

from __future__ import annotations

import click

from posterkg.clikit import Env, common_options, pass_env, print_table
from posterkg.pipeline import PIPELINE, run_pipeline


@click.command()
@common_options
@click.option("--only", multiple=True, type=click.Choice([n for n, _ in PIPELINE]),
              help="Run only these stages (repeatable); the others are left as they are.")
@click.option("--until", type=click.Choice([n for n, _ in PIPELINE]), help="Stop after this stage.")
@click.option("--force", is_flag=True, help="Re-run stages even if their inputs did not change.")
@pass_env
def run(env: Env, only: tuple[str, ...], until: str | None, force: bool) -> None:
    """Run ingest -> split -> tag -> schema -> graph -> train/evaluate from one config.

    A stage whose inputs (source files, its config section, the stages before it) have not
    changed since it last finished is skipped, so re-running after an edit only redoes what the
    edit touches. Example config: configs/ml1m.toml.
    """
    with env.store() as store:
        rows = run_pipeline(store, env.config, only=list(only) or None, force=force, until=until)
    print_table([(n, s, f"{t:.1f}s") for n, s, t in rows], ["stage", "status", "time"])
