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


def demo_config(root, seed: int = 0) -> dict:
    """The configuration ``posterkg demo`` runs the pipeline with (built in code, no file)."""
    from pathlib import Path

    root = Path(root)
    data = root / "data"
    return {
        "db": str(root / "demo.duckdb"),
        "ingest": {"source": str(data), "posters": str(data / "posters")},
        "split": {"scheme": "temporal", "valid": 0.1, "test": 0.1, "seed": seed},
        "tag": {"backend": "pixels", "batch_size": 32},
        "embed": {"model": "minilm"},        # shipped in a wheel: no hub, no network
        # the pixels tagger answers from a small closed set of exact phrases, and opposite values
        # ("warm palette" / "cool palette") embed close together: discover on every poster and
        # merge only near-identical phrases, or planted opposites would share one concept
        "schema": {"seed": seed, "sample": 1.0, "method": "agglomerative",
                   "distance_threshold": 0.05, "min_concepts": 1, "max_concepts": 60},
        "graph": {"short_n": 10, "half_life_days": 60.0},
        "gnn": {"seed": seed, "dim": 32, "epochs": 20, "batch_size": 2048, "patience": 3},
    }


@click.command()
@click.option("--dir", "out_dir", type=click.Path(file_okay=False), default="runs/demo",
              show_default=True, help="Working folder: generated data, database, results.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated set.")
@click.option("--movies", type=int, default=300, show_default=True, help="Movies to generate.")
@click.option("--users", type=int, default=300, show_default=True, help="Users to generate.")
@click.option("--until", type=click.Choice([n for n, _ in PIPELINE]), default=None,
              help="Stop the pipeline after this stage (the check needs 'graph').")
@click.option("--force", is_flag=True, help="Re-run every stage even if its inputs did not change.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the check (tables, verdict, timing) to this JSON file, e.g. "
                   "benchmarks/results/demo.json, which the README's demo block is generated from.")
def demo(out_dir: str, seed: int, movies: int, users: int, until: str | None, force: bool,
         json_out: str | None) -> None:
    """Self-check on a generated data set: no network, no GPU, a few minutes on 2 cores.

    \b
    1. generates a small MovieLens-1M-format set in DIR/data: posters drawn with known visual
       traits (warm/cool palette, dark/bright key, busy/minimal layout, big title or none) and
       users with planted tastes (each likes 1-2 traits, dislikes one) rating by those tastes;
    2. runs the pipeline on it (ingest -> split -> tag with the `pixels` tagger -> schema ->
       graph -> train) into DIR/demo.duckdb;
    3. CHECKS that the planted tastes are recovered from the graph's user -> concept
       preferences (and, when a model was trained, from its recommendations), against chance.

    It proves the machinery works end to end; it says nothing about accuracy on real data.
    For real MovieLens: `posterkg run --config configs/ml1m.toml` (see README).

    \b
    Examples:
      posterkg demo
      posterkg demo --dir /tmp/pk-demo --seed 3
      posterkg demo --force --json benchmarks/results/demo.json   # the README's figures
    """
    import time
    from pathlib import Path

    from posterkg.config import Config
    from posterkg.store import open_store
    from posterkg.synthetic import MODEL_MIN_SHARE, check_recovery, generate, load_truth

    started = time.perf_counter()
    root = Path(out_dir)
    data = root / "data"
    want = {"n_movies": movies, "n_users": users, "seed": seed}
    truth = load_truth(data) if (data / "truth.json").is_file() else None
    if truth is None or any(truth.params.get(k) != v for k, v in want.items()):
        t0 = time.perf_counter()
        truth = generate(data, n_movies=movies, n_users=users, seed=seed)
        click.echo(f"generated {len(truth.movies)} movies with posters, {len(truth.users)} users, "
                   f"{truth.n_ratings:,} ratings in {data} ({time.perf_counter() - t0:.1f}s)")
    else:
        click.echo(f"using the generated set in {data} (seed {seed})")
    config = Config(data=demo_config(root, seed))
    if until is None:
        until = _last_available_stage()
        if until != PIPELINE[-1][0]:
            click.echo(f"(stages after '{until}' are not installed: the demo stops there)")
    with open_store(config.db) as store:
        rows = run_pipeline(store, config, force=force, until=until)
        print_table([(n, s, f"{t:.1f}s") for n, s, t in rows], ["stage", "status", "time"])
        if not store.table_exists("user_prefs"):
            click.echo("the graph stage did not run: nothing to check")
            return
        trained = store.table_exists("models") and store.count("models") > 0
        rec = check_recovery(store, truth, model=(lambda: _load_model(store)) if trained else None)

    click.echo()
    print_table([(m["trait"], m["concept"] or "(not detected)", m["gap"]) for m in rec.mapping],
                ["planted trait", "concept it became", "gap"],
                title="posters: which concept the tagger + vocabulary gave each planted trait")
    click.echo()
    print_table([(r["horizon"], r["metric"], r["recovered"],
                  "" if r["chance"] is None else r["chance"]) for r in rec.rows],
                ["horizon", "metric", "recovered", "chance"],
                title=f"users: planted tastes vs. what the graph recovered ({rec.users} users)")
    click.echo()
    if rec.passed:
        verdict = "SELF-CHECK PASSED: the planted visual tastes are recovered well above chance."
    elif rec.error:
        verdict = f"SELF-CHECK FAILED: the trained model could not be checked: {rec.error}"
    elif not rec.graph_passed:
        verdict = ("SELF-CHECK FAILED: the graph did not recover the planted tastes well enough "
                   "(see the tables above).")
    else:
        verdict = (f"SELF-CHECK FAILED: the trained model's recommendations are not at least "
                   f"{MODEL_MIN_SHARE:.0%} of the way from chance to the best top-10 (model rows above).")
    if json_out:
        _write_demo_json(Path(json_out), rec, verdict, want, stages=rows,
                         seconds=time.perf_counter() - started)
    click.echo(verdict)
    if not rec.passed:
        raise SystemExit(1)


def _write_demo_json(path, rec, verdict: str, params: dict, stages, seconds: float) -> None:
    """The demo's check as JSON (``--json``): what scripts/results_tables.py renders in the README."""
    import dataclasses
    import datetime as dt
    import json
    import os
    import platform

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "benchmark": "demo",
        "command": f"posterkg demo --movies {params['n_movies']} --users {params['n_users']} "
                   f"--seed {params['seed']}",
        "params": params, "seconds": round(seconds, 1),
        "stages": [{"stage": n, "status": st, "seconds": round(t, 2)} for n, st, t in stages],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "created_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **dataclasses.asdict(rec), "verdict": verdict,
    }, indent=1, default=float) + "\n", encoding="utf-8")


def _last_available_stage() -> str:
    """The last stage of the leading run of PIPELINE stages whose module can be imported."""
    import importlib.util

    last = PIPELINE[0][0]
    for name, module in PIPELINE:
        try:
            if importlib.util.find_spec(module) is None:
                break
        except ModuleNotFoundError:
            break
        last = name
    return last


def _load_model(store):
    """The most recently trained model (the configured one: the train stage saves it last)."""
    from posterkg.gnn.api import load_model

    return load_model(store)
