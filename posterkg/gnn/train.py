"""Training: one harness for every registered model, early stopping on valid NDCG@20.

* ``trainer = "bpr"`` models (BPR-MF, LightGCN, the posterkg GNN): mini-batched BPR with
  full-graph propagation. Each epoch visits every train positive (rating >= 4) once in random
  order; each (user, positive) pair gets one negative sampled uniformly from the catalogue
  (re-drawn when it is one of the user's train positives) and, for models that ask for them, one
  *hard* negative: a movie the user disliked in train. Each mini-batch runs the model's
  ``embeddings(graph)``, the BPR loss, the L2 regulariser and the model's own terms
  (:mod:`posterkg.gnn.losses`).
* ``trainer = "fit"`` models (EASE, ItemKNN, SASRec, posterkg-seq) train themselves through
  ``fit(inputs, cfg, valid_fn)`` with the same early-stopping rule where they have epochs.
* ``trainer = "none"`` (MostPop) needs nothing.

Validation is the fixed protocol of :mod:`posterkg.gnn.evaluate` on the valid part with the
train history; the best state by valid NDCG@20 is kept and training stops after ``patience``
evaluations without improvement. Deterministic under ``seed`` on one device and thread count.

Config section ``[gnn]`` (:class:`TrainConfig`); each model's own settings are its ``Config``
dataclass with defaults from :mod:`posterkg.gnn.registry`, overridden by ``[models.<name>]``
(``[gnn_model]`` for the posterkg GNN variants).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from typing import Any, Callable

import numpy as np
import torch

from posterkg.errors import ConfigError
from posterkg.gnn import losses, registry
from posterkg.gnn.base import ModelInputs, Recommender
from posterkg.gnn.data import Interactions
from posterkg.gnn.evaluate import evaluate_model
from posterkg.lookup import find_sorted
from posterkg.progress import bar

MODELS = registry.MODELS
LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass
class TrainConfig:
    model: str = "posterkg"        # one of posterkg.gnn.registry.MODELS
    seed: int = 0
    device: str = "cpu"            # "cpu", "cuda", "cuda:1", ...
    dim: int = 64                  # embedding size (models with a `dim` setting)
    epochs: int = 40               # upper bound; early stopping usually ends sooner
    batch_size: int = 16384        # BPR pairs per step (one full-graph propagation per step)
    lr: float = 0.02               # with batch_size 16384; chosen on ML-1M valid NDCG@20 (docs/gnn.md)
    reg: float = 1e-4              # L2 on the batch's ego embeddings
    eval_every: int = 1            # epochs between valid evaluations
    eval_from: int = 1             # the first epoch evaluated on valid (and so the earliest that can
                                   # be kept); the ones before it only train (posterkg-seq: 8, its
                                   # min_epochs: its valid sits at popularity level before that)
    patience: int = 5              # evaluations without a better valid NDCG@20 before stopping
    min_epochs: int = 0            # early stopping never ends training before this epoch (sequence
                                   # models sit at popularity level for their first epochs)
    eval_batch_size: int = 1024
    max_steps: int = 0             # optimizer steps in all (0 = no bound): the epoch it ends in is cut
                                   # there, evaluated on valid and is the last (big data on a CPU)
    threads: int = 0               # torch intra-op threads; 0 = torch's default
    ema: float = 0.0               # > 0: validate and keep an exponential moving average of the weights
                                   # (this decay per optimizer step) instead of the weights themselves
    lr_schedule: str = "constant"  # "cosine": the learning rate falls from lr to 0 along a half cosine
                                   # over the whole budget (epochs x steps per epoch, or max_steps);
                                   # every model trained in epochs (fit_epochs: BPR models, sequence models, TIGER)
    lr_warmup: int = 0             # > 0: the learning rate first rises linearly from lr / lr_warmup to lr
                                   # over this many optimizer steps (then lr_schedule over the rest)
    refit: bool = False            # pipeline/`posterkg train`: after early stopping, train again from
                                   # scratch on train + valid for the chosen epoch count (refit())
    continue_epochs: int = 0       # > 0, pipeline/`posterkg train`: after early stopping, go on training
                                   # the chosen state on train + valid for this many epochs, so the valid
                                   # period's ratings are targets too (continue_training(); closed-form
                                   # models are solved again on train + valid)
    baselines: list = dataclasses.field(default_factory=list)   # pipeline: also train these kinds

    def validate(self) -> None:
        for kind in [self.model, *self.baselines]:
            registry.entry(kind)
        for name in ("dim", "epochs", "batch_size", "eval_every", "eval_from", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"[gnn] {name} must be >= 1")
        if self.max_steps < 0:
            raise ConfigError("[gnn] max_steps must be >= 0 (0: no bound)")
        if self.min_epochs < 0:
            raise ConfigError("[gnn] min_epochs must be >= 0")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError("[gnn] ema must be in [0, 1) (0: off)")
        if self.lr <= 0:
            raise ConfigError("[gnn] lr must be > 0")
        if self.lr_warmup < 0:
            raise ConfigError("[gnn] lr_warmup must be >= 0 (0: no warm-up)")
        if self.continue_epochs < 0:
            raise ConfigError("[gnn] continue_epochs must be >= 0 (0: off)")
        if self.continue_epochs and self.refit:
            raise ConfigError("[gnn] refit and continue_epochs are two rules for the valid ratings: set one")
        check_lr_schedule(self.lr_schedule)


def for_model(cfg: TrainConfig, kind: str, explicit: set[str] | frozenset = frozenset()) -> TrainConfig:
    """``cfg`` for model ``kind``: the registry's training defaults for that model, except for
    the keys the user set explicitly (``explicit``)."""
    over = {k: v for k, v in registry.entry(kind).train.items() if k not in explicit}
    return dataclasses.replace(cfg, model=kind, baselines=[], **over)


@dataclasses.dataclass
class TrainResult:
    model: Recommender
    config: TrainConfig
    history: list[dict[str, Any]]
    best_epoch: int
    valid: dict[str, float]
    seconds_per_epoch: float
    seconds: float
    model_config: Any = None
    refit: bool = False            # trained again on train + valid (:func:`refit`)
    continued: int = 0             # epochs trained on train + valid after early stopping (:func:`continue_training`)

    @property
    def epochs_run(self) -> int:
        return len([h for h in self.history if "loss" in h])


def build_model(cfg: TrainConfig, inputs: ModelInputs, model_cfg=None) -> Recommender:
    """Instantiate ``cfg.model`` over ``inputs`` (seeded). ``model_cfg``: the model's Config
    (default: the registry's, with ``dim`` from ``cfg``)."""
    if model_cfg is None:
        model_cfg = default_model_config(cfg.model, cfg)
    return registry.build(cfg.model, inputs, model_cfg, seed=cfg.seed)


def default_model_config(kind: str, cfg: TrainConfig | None = None, overrides: dict | None = None):
    ov = dict(overrides or {})
    mc_cls = registry.entry(kind).cls().Config
    if cfg is not None and "dim" in {f.name for f in dataclasses.fields(mc_cls)} and "dim" not in ov \
            and "dim" not in registry.entry(kind).config:
        ov["dim"] = cfg.dim
    return registry.model_config(kind, ov)


class PairSampler:
    """Epoch-wise (user, positive, negative[, hard negative]) index batches, seeded."""

    def __init__(self, data: Interactions, seed: int, hard: bool = False):
        self.rng = np.random.default_rng(seed)
        pos = data.train_pos.tocoo()
        self.users = pos.row.astype(np.int64)
        self.pos = pos.col.astype(np.int64)
        self.n_movies = data.n_movies
        self.keys = np.sort(self.users * self.n_movies + self.pos)
        self.hard = hard
        neg = data.train_neg
        self.neg_ptr, self.neg_idx = neg.indptr.astype(np.int64), neg.indices.astype(np.int64)

    def __len__(self) -> int:
        return len(self.users)

    def _is_pos(self, u: np.ndarray, j: np.ndarray) -> np.ndarray:
        k = u * self.n_movies + j
        return find_sorted(self.keys, k)[1]

    def epoch(self, batch_size: int):
        order = self.rng.permutation(len(self.users))
        for start in range(0, len(order), batch_size):
            sel = order[start:start + batch_size]
            u, p = self.users[sel], self.pos[sel]
            n = self.rng.integers(0, self.n_movies, len(sel))
            for _ in range(5):
                bad = self._is_pos(u, n)
                if not bad.any():
                    break
                n[bad] = self.rng.integers(0, self.n_movies, int(bad.sum()))
            batch = {"users": torch.from_numpy(u), "pos": torch.from_numpy(p), "neg": torch.from_numpy(n)}
            if self.hard:
                deg = self.neg_ptr[u + 1] - self.neg_ptr[u]
                has = deg > 0
                pick = self.neg_ptr[u] + (self.rng.random(len(u)) * np.maximum(deg, 1)).astype(np.int64)
                if len(self.neg_idx):
                    hard = np.where(has, self.neg_idx[np.minimum(pick, len(self.neg_idx) - 1)], 0)
                else:
                    hard = np.zeros(len(u), np.int64)
                batch["hard"] = torch.from_numpy(hard.astype(np.int64))
                batch["hard_mask"] = torch.from_numpy(has)
            yield batch


class StepBudget:
    """``[gnn] max_steps``: optimizer steps left in the whole run (0 = unbounded). A trainer calls
    :meth:`take` after each step and ends the epoch when it returns True; the epoch is then
    evaluated and is the last one (:meth:`EarlyStopping.end_epoch` with ``last``)."""

    def __init__(self, max_steps: int):
        self.max_steps, self.steps = int(max_steps or 0), 0

    @property
    def spent(self) -> bool:
        return bool(self.max_steps) and self.steps >= self.max_steps

    def take(self) -> bool:
        self.steps += 1
        return self.spent

    def left(self, n_batches: int) -> int:
        """Steps the next epoch will run (for its progress bar and loss means)."""
        return n_batches if not self.max_steps else max(0, min(n_batches, self.max_steps - self.steps))


class EarlyStopping:
    """Best-by-valid-NDCG@20 bookkeeping shared by the BPR loop and the models' own ``fit``."""

    def __init__(self, patience: int, min_epochs: int = 0):
        self.patience = patience
        self.min_epochs = min_epochs
        self.best, self.best_epoch, self.best_valid, self.best_state, self.stale = -1.0, 0, {}, None, 0

    def update(self, epoch: int, valid: dict, model: torch.nn.Module) -> bool:
        """Record one evaluation; return True when training should stop (``patience``
        evaluations without a gain, and not before epoch ``min_epochs``)."""
        if valid["ndcg@20"] > self.best:
            self.best, self.best_epoch, self.best_valid, self.stale = valid["ndcg@20"], epoch, valid, 0
            self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.stale += 1
        return self.stale >= self.patience and epoch >= self.min_epochs

    def end_epoch(self, epoch: int, row: dict, cfg: "TrainConfig", valid_fn, model: torch.nn.Module,
                  history: list, verbose: bool, last: bool = False) -> bool:
        """The end of one epoch for every trainer: evaluate on valid when due (always when
        ``last``: the step budget is spent), record the row, log it; return True when training
        should stop."""
        done = last
        due = epoch % cfg.eval_every == 0 and epoch >= getattr(cfg, "eval_from", 1)
        if last or due or epoch == cfg.epochs:
            valid = valid_fn(model)
            if valid is None:              # nothing to validate on (refit, continue): the state
                self.best_epoch = epoch      # after the latest epoch is the result (with [gnn] ema
                self.best_state = copy.deepcopy(model.state_dict())    # the average, swapped in)
            else:
                row["valid_ndcg@20"] = valid["ndcg@20"]
                done = self.update(epoch, valid, model) or last
        history.append(row)
        log_row(row, verbose)
        return done

    def restore(self, model: torch.nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


class WeightAverage:
    """``[gnn] ema``: an exponential moving average of a model's trainable parameters, updated
    after every optimizer step (torch's ``get_ema_multi_avg_fn``), and :meth:`swapped` to put it
    in the model for a while (validation, the best-state copy) without copying the model."""

    def __init__(self, model: torch.nn.Module, decay: float):
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        # a model may train only part of its parameters (an ensemble member: trained_parameters)
        own = getattr(model, "trained_parameters", None)
        self.params = [p for p in (own() if own is not None else model.parameters()) if p.requires_grad]
        self.avg = [p.detach().clone() for p in self.params]
        self.update_fn = get_ema_multi_avg_fn(decay)
        self.steps = 0

    @torch.no_grad()
    def update(self) -> None:
        self.update_fn(self.avg, [p.detach() for p in self.params], self.steps)
        self.steps += 1

    @contextlib.contextmanager
    def swapped(self):
        with torch.no_grad():
            live = [p.detach().clone() for p in self.params]
            for p, a in zip(self.params, self.avg):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, x in zip(self.params, live):
                    p.copy_(x)


def check_lr_schedule(kind: str) -> None:
    if kind not in LR_SCHEDULES:
        raise ConfigError(f"[gnn] lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not {kind!r}")


def lr_scheduler(opt: torch.optim.Optimizer, kind: str, total_steps: int, warmup: int = 0):
    """``[gnn] lr_schedule`` and ``lr_warmup`` as one torch scheduler stepped after every
    optimizer step, or None (constant, no warm-up). ``warmup`` steps of torch's ``LinearLR``
    (from lr / warmup up to lr), then for "cosine" torch's ``CosineAnnealingLR`` from lr down to
    0 at step ``total_steps`` (the whole budget: early stopping may end training before the
    bottom), for "constant" lr."""
    from torch.optim import lr_scheduler as sch

    check_lr_schedule(kind)
    total, warmup = max(1, int(total_steps)), max(0, int(warmup))
    warm = sch.LinearLR(opt, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup) if warmup else None
    if kind == "constant":
        return warm
    cosine = sch.CosineAnnealingLR(opt, T_max=max(1, total - warmup), eta_min=0.0)
    return cosine if warm is None else sch.SequentialLR(opt, [warm, cosine], milestones=[warmup])


def fit_epochs(model, train_cfg, valid_fn, opt, *, epoch_batches, step_loss, n_batches: int,
               verbose: bool = False, row_extra: dict | None = None):
    """The one epoch loop (the BPR loop of :func:`train` and the models that train themselves,
    ``trainer = "fit"``: the sequence models, TIGER): ``epoch_batches()`` gives one epoch's
    batches, ``step_loss(batch)`` the loss of one, a tensor or a dict of loss terms (summed, and
    each term's epoch mean logged); one optimizer step per batch within ``[gnn] max_steps``, then
    :meth:`EarlyStopping.end_epoch`; the best state by valid NDCG@20 is restored. Returns the
    :class:`~posterkg.gnn.base.FitInfo`."""
    from posterkg.gnn.base import FitInfo

    stop = EarlyStopping(train_cfg.patience, getattr(train_cfg, "min_epochs", 0))
    budget = StepBudget(getattr(train_cfg, "max_steps", 0))    # [gnn] max_steps
    decay = float(getattr(train_cfg, "ema", 0.0) or 0.0)
    average = WeightAverage(model, decay) if decay > 0 else None
    schedule = lr_scheduler(opt, getattr(train_cfg, "lr_schedule", "constant"),
                            budget.max_steps or train_cfg.epochs * n_batches, getattr(train_cfg, "lr_warmup", 0))
    history, secs = [], 0.0
    for epoch in range(1, train_cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        totals: dict[str, float] = {}
        n_steps = budget.left(n_batches)
        for batch in bar(epoch_batches(), total=n_steps, desc=f"{model.name} epoch {epoch}",
                         unit="batch", disable=not verbose or None):
            out = step_loss(batch)
            terms = out if isinstance(out, dict) else {"loss": out}
            loss = sum(terms.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if schedule is not None:
                schedule.step()
            if average is not None:
                average.update()
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach()) / max(n_steps, 1)
            if budget.take():
                break
        secs += time.perf_counter() - t0
        parts = {} if list(totals) == ["loss"] else totals
        row = {"epoch": epoch, "loss": sum(totals.values()), **parts, "seconds": time.perf_counter() - t0,
               **(row_extra or {})}
        if budget.max_steps:
            row["steps"] = budget.steps
        # with [gnn] ema the averaged weights are what is validated and kept as the best state
        with average.swapped() if average is not None else contextlib.nullcontext():
            done = stop.end_epoch(epoch, row, train_cfg, valid_fn, model, history, verbose, last=budget.spent)
        if done:
            break
    stop.restore(model)
    model.eval()
    return FitInfo(history, stop.best_epoch, stop.best_valid, secs / max(len(history), 1))


def not_measured(model) -> None:
    """The ``valid_fn`` of a run with nothing to validate on (:func:`refit`,
    :func:`continue_training`): no valid score is recorded or printed, no early stopping, and a
    choice made inside ``fit`` (EASE's lambda, posterkg-seq's blend) keeps its one fixed setting."""
    return None


def log_row(row: dict, verbose: bool) -> None:
    if verbose:
        print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)


def train(inputs: ModelInputs, cfg: TrainConfig, *, model_cfg=None, model: Recommender | None = None,
          verbose: bool = False, valid_fn: Callable[[Recommender], dict] | None = None) -> TrainResult:
    """Train ``cfg.model`` (or the given ``model``) with early stopping; return the best state.

    Early stopping reads ``valid_fn(model)["ndcg@20"]``; by default that is the fixed protocol
    on the valid part (:func:`posterkg.gnn.evaluate.evaluate_model`). A benchmark with another
    protocol (the cold-start split ranks only the valid part's cold movies) passes its own;
    :func:`not_measured` (None) trains with nothing to validate on."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"[gnn] device = {cfg.device!r} but torch sees no CUDA device")
    t_start = time.perf_counter()
    data = inputs.data
    if model is None:
        model_cfg = model_cfg if model_cfg is not None else default_model_config(cfg.model, cfg)
        model = build_model(cfg, inputs, model_cfg)
    model = model.to(device)

    def protocol_valid(m: Recommender) -> dict:
        m.eval()
        return evaluate_model(m, data, "valid", device=device, batch_size=cfg.eval_batch_size)

    if valid_fn is None:
        valid_fn = protocol_valid
    else:
        custom = valid_fn

        def valid_fn(m: Recommender) -> dict:
            m.eval()
            with torch.no_grad():
                return custom(m)

    if model.trainer == "none":
        valid = valid_fn(model)
        row = {"epoch": 0} if valid is None else {"epoch": 0, "valid_ndcg@20": valid["ndcg@20"]}
        return TrainResult(model, cfg, [row], 0, valid or {}, 0.0, time.perf_counter() - t_start, model.cfg)
    if model.trainer == "fit":
        torch.manual_seed(cfg.seed)
        info = model.fit(inputs, cfg, valid_fn, verbose=verbose)
        model.eval()
        return TrainResult(model, cfg, info.history, info.best_epoch, info.valid, info.seconds_per_epoch,
                           time.perf_counter() - t_start, model.cfg)

    torch.manual_seed(cfg.seed)
    sampler = PairSampler(data, cfg.seed, hard=getattr(model, "wants_hard_negatives", False))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    graph = model.graph
    n_batches = (len(sampler) + cfg.batch_size - 1) // cfg.batch_size

    def step_loss(batch) -> dict[str, torch.Tensor]:
        batch = {k: v.to(device) for k, v in batch.items()}
        emb = model.embeddings(graph)
        u, m = emb[0], emb[1]
        terms = {"bpr": losses.bpr(u[batch["users"]], m[batch["pos"]], m[batch["neg"]])}
        terms["reg"] = cfg.reg * model.reg_loss(batch["users"], batch["pos"], batch["neg"])
        terms.update(model.extra_loss(batch, emb))
        return terms

    info = fit_epochs(model, cfg, valid_fn, opt, epoch_batches=lambda: sampler.epoch(cfg.batch_size),
                      step_loss=step_loss, n_batches=n_batches, verbose=verbose)
    return TrainResult(model, cfg, info.history, info.best_epoch, info.valid, info.seconds_per_epoch,
                       time.perf_counter() - t_start, model.cfg)


def inputs_on(inputs: ModelInputs, data: Interactions) -> ModelInputs:
    """``inputs`` over other interactions ``data`` (a view of the same users and movies): a graph
    with user-movie relations gets ``data``'s train rows as those edges."""
    graph = inputs.graph
    if graph is not None and "pos" in graph:
        graph = graph.with_history(data.history("valid"))
    return dataclasses.replace(inputs, data=data, graph=graph)


def refit_inputs(inputs: ModelInputs) -> ModelInputs:
    """``inputs`` with the valid rows moved into train (:meth:`Interactions.refit_view`), the
    graph's user-movie relations from train + valid."""
    return inputs_on(inputs, inputs.data.refit_view())


def refit(inputs: ModelInputs, first: TrainResult, *, verbose: bool = False) -> TrainResult:
    """The harness's *refit* rule: train ``first``'s model again from scratch, same seed and
    settings, on train + valid (:func:`refit_inputs`) for the epoch count chosen on valid
    (``first.best_epoch``; models that choose settings inside ``fit`` keep the chosen ones,
    :meth:`~posterkg.gnn.base.Recommender.refit_config`). Nothing is left to validate on, so there
    is no early stopping: the state after the last epoch is the result. ``valid`` and
    ``best_epoch`` of the result are ``first``'s (what the choice was made on)."""
    cfg = first.config
    # models without epochs (MostPop, EASE/ItemKNN, whose best_epoch indexes their grid) never
    # read the count
    rcfg = dataclasses.replace(cfg, epochs=max(1, int(first.best_epoch)), patience=10 ** 9, min_epochs=0,
                               eval_every=10 ** 9)
    t0 = time.perf_counter()
    res = train(refit_inputs(inputs), rcfg, model_cfg=first.model.refit_config(), verbose=verbose,
                valid_fn=not_measured)
    return dataclasses.replace(res, config=cfg, valid=first.valid, best_epoch=first.best_epoch, refit=True,
                               seconds=time.perf_counter() - t0)


def continue_training(inputs: ModelInputs, first: TrainResult, epochs: int, *,
                      verbose: bool = False) -> TrainResult:
    """The harness's *continue* rule (``[gnn] continue_epochs``): a copy of ``first``'s model,
    its state the one chosen on valid, trained ``epochs`` more epochs on train + valid
    (:func:`refit_inputs`: the valid period's ratings become training targets, not only history)
    with the same settings, a fresh optimizer and (with ``ema``) a fresh average from that state.
    Settings chosen inside ``fit`` stay fixed (:meth:`~posterkg.gnn.base.Recommender.refit_config`:
    posterkg-seq keeps its collaborative part's weight and lambda, EASE's matrix is solved again
    on train + valid with its chosen lambda: for a closed-form model this rule is its refit).
    Nothing is left to validate on: the state after the last epoch is the result. ``valid`` and
    ``best_epoch`` are ``first``'s. Decided on valid by playing the protocol one period earlier
    (``benchmarks/continue_rule.py``)."""
    if epochs < 1:
        raise ConfigError(f"continue_epochs must be >= 1, not {epochs}")
    if first.model.trainer == "none":            # nothing trained (MostPop): rebuilt on train + valid
        return dataclasses.replace(refit(inputs, first, verbose=verbose), refit=False, continued=int(epochs))
    cfg = first.config
    # a copy: built again over the same inputs (models keep sparse matrices, which deepcopy cannot
    # copy), the chosen state loaded
    model = registry.build(cfg.model, inputs, copy.deepcopy(first.model.refit_config()), seed=cfg.seed)
    model.load_state_dict(first.model.state_dict())
    model = model.to(next(first.model.parameters(), torch.zeros(0)).device)
    # [gnn] max_steps (big data on a CPU) bounds these epochs too, as it bounded the first run
    # (the last epoch is always evaluated, here by not_measured: it keeps that state)
    ccfg = dataclasses.replace(cfg, epochs=int(epochs), patience=10 ** 9, min_epochs=0, eval_every=10 ** 9)
    t0 = time.perf_counter()
    # quiet inside (its lines would number the epochs from 1); its own lines below
    res = train(refit_inputs(inputs), ccfg, model=model, verbose=False, valid_fn=not_measured)
    # one history: the first run's epochs, then these (numbered on, marked as trained on train + valid)
    done = max((int(r.get("epoch", 0)) for r in first.history), default=0)
    more = [{**r, "epoch": done + int(r.get("epoch", 0)), "on": "train+valid"} for r in res.history]
    for r in more:
        log_row(r, verbose)
    return dataclasses.replace(res, config=cfg, valid=first.valid, best_epoch=first.best_epoch,
                               history=[*first.history, *more], continued=int(epochs),
                               seconds_per_epoch=first.seconds_per_epoch,
                               seconds=first.seconds + time.perf_counter() - t0)
