"""``posterkg train``, ``posterkg evaluate`` and ``posterkg recommend``."""

from __future__ import annotations

import click

from posterkg.clikit import Env, common_options, pass_env, print_table
from posterkg.errors import InputError

from posterkg.gnn.registry import MODELS as KINDS  # noqa: E402  (cheap: no torch import)

SHOWN = ["recall@10", "recall@20", "ndcg@10", "ndcg@20", "coverage@20"]


@click.command()
@common_options
@click.option("--model", "kind", type=click.Choice(KINDS), help="What to train [default: [gnn] model, else posterkg].")
@click.option("--seed", type=int, help="Random seed [default: [gnn] seed, else 0].")
@click.option("--epochs", type=int, help="Maximum epochs (early stopping on valid NDCG@20 may end sooner).")
@click.option("--device", help="cpu, cuda, cuda:1 ... [default: [gnn] device, else cpu].")
@click.option("--max-steps", type=click.IntRange(min=0),
              help="Stop after this many optimizer steps in all (0: no bound) [default: [gnn] max_steps].")
@click.option("--refit/--no-refit", default=None,
              help="After early stopping, train again from scratch on train + valid for the chosen "
                   "epoch count, and store that model [default: [gnn] refit, else no].")
@click.option("--continue-epochs", type=click.IntRange(min=0),
              help="After early stopping, train the chosen state N more epochs on train + valid, so the "
                   "valid ratings are targets too, and store that model; 0: off [default: [gnn] "
                   "continue_epochs; configs/ml1m.toml: 4].")
@click.option("--id", "model_id", help="Store under this model id [default: <model>-seed<seed>].")
@click.option("-v", "--verbose", is_flag=True, help="Print one line per epoch.")
@pass_env
def train(env: Env, kind, seed, epochs, device, max_steps, refit, continue_epochs, model_id, verbose) -> None:
    """Train a registered model, evaluate it on test, and store it.

    Models (posterkg/gnn/registry.py): posterkg-seq (the time-aware posterkg: short-term
    self-attention + long-term taste over movies as id + visual concepts + genres), posterkg
    (the relation-aware GNN), their -novisual ablations, and the baselines mostpop, itemknn,
    ease, bprmf, lightgcn, lightgcn-genre, sasrec, vbpr. Each trains on the train part with
    its own trainer (BPR, closed form, or next-item cross-entropy), stops early on valid
    NDCG@20, then is evaluated on test with the fixed protocol, reading the user's train +
    valid ratings as history (see `posterkg evaluate --help`); the test_robust row drops test
    ratings in the same second as the user's last valid one. With [gnn] continue_epochs = N
    (configs/ml1m.toml: 4) the state chosen on valid first trains N more epochs on train + valid,
    so the valid ratings are targets too; --refit trains again from scratch instead. The model, its id vocabulary,
    config and metrics go to the `models` and `eval_results` tables. Settings: `[gnn]` (all
    models), `[train.<model>]` (training, one model), `[models.<model>]` (the model's own).

    \b
    Examples:
      posterkg train                              # [gnn] model (configs/ml1m.toml: posterkg-seq)
      posterkg train --model sasrec --seed 1 -v   # -v: one line per epoch
      posterkg train --model posterkg-seq-novisual  # ablation: no concepts, no poster features
      posterkg train --refit                      # then again on train + valid (the refit rule)
      posterkg train --continue-epochs 0          # fold-in only: no training on the valid ratings
    """
    from posterkg.gnn.stage import configs, train_and_store

    if refit and continue_epochs is None:
        continue_epochs = 0              # --refit replaces a configured continue rule
    env.config.override("gnn", model=kind, seed=seed, epochs=epochs, device=device, max_steps=max_steps,
                        refit=refit, continue_epochs=continue_epochs)
    cfg = configs(env.config)
    with env.store() as store:
        mid, res, test = train_and_store(store, env.config, cfg.model, verbose=verbose, model_id=model_id)
    click.echo(f"stored {mid}: {res.epochs_run} epochs (best {res.best_epoch}"
               f"{'; refit on train + valid' if res.refit else ''}"
               f"{f'; then {res.continued} on train + valid' if res.continued else ''}), "
               f"{res.seconds_per_epoch:.1f} s/epoch, valid NDCG@20 {res.valid.get('ndcg@20', 0):.4f}")
    print_table([[mid, part, t["n_users"], *[t[k] for k in SHOWN]] for part, t in test.items()],
                ["model", "part", "users", *SHOWN], title="test (test_robust: without ratings in the "
                "second of the user's last valid rating)")


@click.command()
@common_options
@click.option("--model", "model_id", help="Only this model id [default: every stored model].")
@click.option("--part", type=click.Choice(["valid", "test"]), default="test", show_default=True)
@pass_env
def evaluate(env: Env, model_id, part) -> None:
    """Re-evaluate stored models on the fixed protocol and print the table.

    Protocol: relevant = movies of the part rated >= 4; full ranking over all movies, excluding
    the user's train (and, for test, valid) movies; Recall@10/20, NDCG@10/20 (binary), and
    coverage@20 (share of the catalogue in some user's top 20). Users without a relevant movie
    in the part are left out of the means. Results are written to `eval_results`.

    \b
    Examples:
      posterkg evaluate
      posterkg evaluate --model lightgcn-seed0 --part valid
    """
    from posterkg.gnn.api import list_models, load_model, write_eval
    from posterkg.gnn.evaluate import evaluate_model
    from posterkg.gnn.stage import configs

    batch = configs(env.config).eval_batch_size      # users scored at a time ([gnn] eval_batch_size)
    with env.store() as store:
        models = list_models(store)
        ids = [model_id] if model_id else list(models["model_id"])
        if not ids:
            raise InputError("no trained model in the database: run `posterkg train` first")
        rows = []
        for mid in sorted(ids):
            tm = load_model(store, mid)
            res = evaluate_model(tm.model, tm.data, part, batch_size=batch)
            write_eval(store, mid, tm.kind, tm.seed, part, res)
            rows.append([mid, res["n_users"], *[res[k] for k in SHOWN]])
    print_table(rows, ["model", "users", *SHOWN], title=f"{part} (fixed protocol)")


@click.command()
@common_options
@click.option("--user", "users", type=int, multiple=True, help="User id (repeatable).")
@click.option("--all", "all_users", is_flag=True, help="Every user of the split.")
@click.option("-k", type=click.IntRange(min=1), default=10, show_default=True, help="Movies per user.")
@click.option("--model", "model_id", help="Model id [default: the most recently trained].")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write a TSV: user_id, movie_id, rank, score.")
@pass_env
def recommend(env: Env, users, all_users, k, model_id, out) -> None:
    """Top-k movies per user, excluding the movies the user rated in train and valid.

    With --all the rows are also stored in the `recommendations` table, streamed: users are
    scored in batches and each batch is stored (and written to --out) before the next.

    \b
    Examples:
      posterkg recommend --user 42 -k 10
      posterkg recommend --all -k 50 --out recs.tsv
    """
    from posterkg.gnn.api import load_model, write_recommendations

    if not users and not all_users:
        raise click.UsageError("give --user U (repeatable) or --all")
    with env.store(read_only=not all_users) as store:   # --user only reads; --all stores its rows
        tm = load_model(store, model_id)
        ids = [int(u) for u in tm.user_ids] if all_users else list(users)
        if all_users:
            n_rows = write_recommendations(store, tm, ids, k, out=out)
        else:
            recs = tm.recommend_many(ids, k)
            import pandas as pd

            df = pd.DataFrame([(tm.model_id, u, m, r + 1, s) for u in ids for r, (m, s) in enumerate(recs[u])],
                              columns=["model_id", "user_id", "movie_id", "rank", "score"])
            titles = dict(store.execute("SELECT movie_id, title FROM movies").fetchall())
            for u in ids:
                sub = df[df["user_id"] == u]
                print_table([[int(r), int(m), titles.get(int(m), ""), float(s)] for r, m, s in
                             zip(sub["rank"], sub["movie_id"], sub["score"])],
                            ["rank", "movie_id", "title", "score"], title=f"user {u} ({tm.model_id})")
    if all_users:
        click.echo(f"stored {n_rows:,} recommendations for {len(ids):,} users ({tm.model_id})")
        if out:
            click.echo(f"wrote {n_rows:,} rows to {out}")
    elif out:
        df[["user_id", "movie_id", "rank", "score"]].to_csv(out, sep="\t", index=False)
        click.echo(f"wrote {len(df):,} rows to {out}")
