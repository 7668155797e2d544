"""Pipeline stage ``train``: train the configured model (``[gnn] model``) and any
``[gnn] baselines``, evaluate each on the test part, store them (models, eval_results)."""

from __future__ import annotations

import dataclasses

from posterkg.clikit import print_table
from posterkg.config import Config
from posterkg.pipeline import Stage
from posterkg.store import Store


def configs(config: Config):
    from posterkg.gnn.model import ModelConfig
    from posterkg.gnn.train import TrainConfig

    cfg = config.section("gnn", TrainConfig)
    cfg.validate()
    return cfg, config.section("gnn_model", ModelConfig)


def _inputs(store: Store, config: Config) -> str:
    sizes = [store.count(t) for t in ("split", "user_movie_edges", "movie_concept_edges", "user_prefs")]
    return f"{config.fingerprint('gnn', 'gnn_model')}|{sizes}"


def run_train(store: Store, config: Config, *, verbose: bool = False) -> list[dict]:
    from posterkg.gnn.data import load_interactions
    from posterkg.gnn.train import train_and_store

    cfg, mcfg = configs(config)
    data = load_interactions(store)
    rows = []
    # Baselines first, the configured model last: `recommend`, `explain` and `report` default to
    # the most recently trained model, which must be the one the config asked for.
    for kind in reversed(dict.fromkeys([cfg.model, *reversed(cfg.baselines)])):
        kcfg = dataclasses.replace(cfg, model=kind, baselines=[])
        mid, res, test = train_and_store(store, data, kcfg, mcfg, verbose=verbose)
        rows.append({"model_id": mid, "epochs": res.epochs_run, "best_epoch": res.best_epoch,
                     "s/epoch": res.seconds_per_epoch, **{k: test[k] for k in
                     ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "coverage@20")}})
    rows.reverse()   # print the configured model first
    print_table([list(r.values()) for r in rows], list(rows[0].keys()), title="test (fixed protocol)")
    return rows


def _run(store: Store, config: Config):
    # Training is the long stage of `posterkg run`: one line per epoch (loss, valid NDCG@20).
    return run_train(store, config, verbose=True)


STAGE = Stage("train", _inputs, _run)
