"""Pipeline stage ``train``: train the configured model (``[gnn] model``) and any
``[gnn] baselines``, evaluate each on the test part (and the robustness column), store them.
With ``[gnn] refit = true`` each model, once early stopping has chosen its epoch count on valid,
is trained again from scratch on train + valid for that many epochs (the refit rule,
:func:`posterkg.gnn.train.refit`) and that model is evaluated and stored. With ``[gnn]
continue_epochs = N`` the state chosen on valid is instead trained N more epochs on train + valid
(the continue rule, :func:`posterkg.gnn.train.continue_training`; configs/ml1m.toml's setting).

Settings, lowest precedence first: the :class:`~posterkg.gnn.train.TrainConfig` defaults, the
registry's training defaults for the model (:mod:`posterkg.gnn.registry`), the keys set in
``[gnn]``, then ``[train.<model>]``; the model's own settings: its ``Config`` defaults, the
registry's, ``[gnn_model]`` (posterkg GNN variants only), then ``[models.<model>]``.
"""

from __future__ import annotations

import dataclasses

import torch

from posterkg.config import Config
from posterkg.errors import ConfigError
from posterkg.pipeline import Stage
from posterkg.store import Store

SEMANTIC_KEY = "semantic_ids"      # the feature_spec key naming a semantic-ID version


def _table(config: Config, *path: str) -> dict:
    raw = config.data
    for p in path:
        raw = raw.get(p, {}) if isinstance(raw, dict) else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"[{'.'.join(path)}] must be a table")
    return raw


def configs(config: Config):
    """The shared [gnn] TrainConfig (validated)."""
    from posterkg.gnn.train import TrainConfig

    cfg = config.section("gnn", TrainConfig)
    cfg.validate()
    return cfg


def model_configs(config: Config, kind: str):
    """(TrainConfig, model Config) for ``kind`` with every layer of precedence applied."""
    from posterkg.gnn import registry
    from posterkg.gnn.train import TrainConfig, default_model_config, for_model

    base = configs(config)
    explicit = set(_table(config, "gnn"))
    tcfg = for_model(base, kind, explicit)
    per = _table(config, "train", kind)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(per) - known)
    if bad:
        raise ConfigError(f"[train.{kind}]: unknown key(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
    tcfg = dataclasses.replace(tcfg, **per)
    tcfg.validate()
    over = {}
    if registry.entry(kind).target.endswith(":PosterKG"):
        over.update(_table(config, "gnn_model"))
    over.update(_table(config, "models", kind))
    return tcfg, default_model_config(kind, tcfg, over)


def feature_spec(model_cfg) -> dict[str, str]:
    """name -> encoder of the dense features a model config asks for (``features`` key), plus
    ``"semantic_ids": version`` when it has a ``semantic_ids`` key (TIGER): what
    :func:`posterkg.gnn.inputs.assemble` loads for it."""
    feats = getattr(model_cfg, "features", None) or []
    encs = {"poster": getattr(model_cfg, "poster_encoder", "efficientnet-lite0"),
            "text": getattr(model_cfg, "text_encoder", "minilm")}
    out = {f: encs[f] for f in feats}
    version = getattr(model_cfg, "semantic_ids", None)
    if version:
        out[SEMANTIC_KEY] = str(version)
    return out


def train_and_store(store: Store, config: Config, kind: str, *, verbose: bool = False,
                    model_id: str | None = None, seed: int | None = None, assembled=None):
    """Train ``kind`` with the config's settings, evaluate it on test (+ robust), store it.
    Returns (model_id, TrainResult, {"test": ..., "test_robust": ...})."""
    from posterkg.gnn.api import save_model
    from posterkg.gnn.evaluate import evaluate_model
    from posterkg.gnn.inputs import assemble
    from posterkg.gnn.train import continue_training, refit, train

    tcfg, mcfg = model_configs(config, kind)
    if seed is not None:
        tcfg = dataclasses.replace(tcfg, seed=seed)
    feats = feature_spec(mcfg)
    asm = assembled if assembled is not None and not feats else assemble(store, features=feats)
    res = train(asm.inputs, tcfg, model_cfg=mcfg, verbose=verbose)
    if tcfg.refit:
        # the refit rule: the settings and epoch count chosen on valid, trained again on train + valid
        if verbose:
            print(f"{kind}: refit on train + valid for the chosen {max(1, res.best_epoch)} epoch(s)", flush=True)
        res = refit(asm.inputs, res, verbose=verbose)
    elif tcfg.continue_epochs:
        # the continue rule: the state chosen on valid trained further on train + valid
        if verbose:
            print(f"{kind}: best epoch {res.best_epoch}; {tcfg.continue_epochs} more epoch(s) on train + valid",
                  flush=True)
        res = continue_training(asm.inputs, res, tcfg.continue_epochs, verbose=verbose)
    res.model.feature_spec = feats
    dev = torch.device(tcfg.device)
    data = asm.inputs.data
    with torch.no_grad():
        test = {"test": evaluate_model(res.model, data, "test", device=dev, batch_size=tcfg.eval_batch_size),
                "test_robust": evaluate_model(res.model, data, "test", robust=True, device=dev,
                                              batch_size=tcfg.eval_batch_size)}
    mid = save_model(store, res, asm.inputs, test=test, model_id=model_id)
    return mid, res, test


def run_train(store: Store, config: Config, *, verbose: bool = False) -> list[dict]:
    from posterkg.gnn.inputs import assemble

    cfg = configs(config)
    shared = assemble(store)
    rows = []
    # Baselines first, the configured model last: `recommend`, `explain` and `report` default to
    # the most recently trained model, which must be the one the config asked for.
    for kind in reversed(dict.fromkeys([cfg.model, *reversed(cfg.baselines)])):
        mid, res, test = train_and_store(store, config, kind, verbose=verbose, assembled=shared)
        t, r = test["test"], test["test_robust"]
        rows.append({"model_id": mid, "epochs": res.epochs_run, "best_epoch": res.best_epoch,
                     "valid rule": "refit" if res.refit else (f"continue {res.continued}" if res.continued
                                                              else "fold-in"),
                     "s/epoch": res.seconds_per_epoch,
                     **{k: t[k] for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "coverage@20")},
                     "robust ndcg@20": r["ndcg@20"]})
    rows.reverse()   # the configured model first
    return rows


def _run(store: Store, config: Config):
    from posterkg.clikit import print_table

    # Training is the long stage of `posterkg run`: one line per epoch (loss, valid NDCG@20).
    rows = run_train(store, config, verbose=True)
    print_table([list(r.values()) for r in rows], list(rows[0].keys()), title="test (fixed protocol)")
    return rows


STAGE = Stage("train", sections=("gnn", "gnn_model", "models", "train"),
              reads=("movies", "ratings", "split", "user_movie_edges", "movie_concept_edges", "user_prefs",
                     "poster_embeddings", "text_embeddings"), run=_run)
