"""The model registry: one list of every recommender, its class and its default settings.

An entry is data (as RecBole keeps model defaults as data): the class (imported lazily, so
``posterkg --help`` never imports torch), overrides of the class's ``Config`` dataclass, and
overrides of the training loop's :class:`~posterkg.gnn.train.TrainConfig` that suit the model
(e.g. SASRec's learning rate). Config files override both: ``[gnn]`` for training,
``[models.<name>]`` for the model (``[gnn_model]`` is read for the posterkg GNN variants too).

To add a model: write a :class:`~posterkg.gnn.base.Recommender` subclass, add an entry here,
and it is in ``posterkg train --model``, the pipeline, ``benchmarks/accuracy.py`` and the shared
contract test (``tests/gnn/test_contract.py``) at once.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from posterkg.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    target: str                                   # "module:Class"
    description: str
    config: dict = dataclasses.field(default_factory=dict)   # overrides of Class.Config
    train: dict = dataclasses.field(default_factory=dict)    # overrides of TrainConfig
    stochastic: bool = True                       # seeds matter (benchmarks run 3 seeds)
    uses_visual: bool = False                     # reads concepts or poster features

    def cls(self):
        mod, attr = self.target.split(":")
        return getattr(importlib.import_module(mod), attr)


# Training budgets (valid-chosen; docs/gnn.md). BPR models: 16,384 pairs per step, lr 0.02, early
# stopping after 5 evaluations without a better valid NDCG@20. Sequence models: 128 windows of 200
# ratings per step, Adam lr 0.003, stop after 3 evaluations without a gain, at most 30 epochs (the
# same cap for SASRec and posterkg-seq until posterkg-seq's _SEQ_PK below; at 20 both were still
# improving on valid, best epochs 16-20, and posterkg-seq's seed-0 valid went on rising to epoch
# 26), never before epoch 8: both sit at popularity level for their first epochs (ML-1M valid
# NDCG@20 0.07 after epoch 1, lower after epoch 2 for SASRec) before they take off, and patience
# alone can end a run there.
_BPR = {"epochs": 60}
# and the weights kept are an exponential moving average (decay 0.98 per step, ~1.6 epochs of
# ML-1M's 31 steps): a smooth valid curve (seed 0: best 0.2281 at epoch 24 vs 0.2247 at epoch 26
# without; docs/gnn.md)
_SEQ = {"lr": 0.003, "epochs": 30, "patience": 3, "batch_size": 128, "min_epochs": 8, "ema": 0.98}
# posterkg-seq's speed settings (chosen on valid, docs/gnn.md "Epoch speed"): no dropout on the
# attention weights, length-bucketed batches; 2.1x faster per epoch on CPU, valid NDCG@20 0.2211
# vs 0.2232 with SASRec's settings (seed 0; seed-to-seed std 0.0027)
_SEQ_FAST = {"attn_dropout": 0.0, "bucket": True}
# posterkg-seq's collaborative part (SASRec.Config.item_item): after training, the sequence
# scores are blended with EASE's over the user's whole history, weight and lambda chosen together
# on valid (seed 0: valid NDCG@20 0.2281 -> 0.2369 at weight 0.1, lambda 2000; docs/gnn.md), on
# one global scale (item_item_scale "global": raw scores, EASE's rescaled by the ratio of the two
# parts' mean per-user spreads, instead of z-scores per user; seed 0, valid: posterkg-seq 0.2395
# -> 0.2422, sasrec-all-ease 0.2358 -> 0.2387; docs/gnn.md)
_SEQ_II = {"item_item": -1.0, "item_item_scale": "global"}
# posterkg-seq's time part (SASRec.Config.time_bias): each attention weight between two ratings
# gets a learned bias by the time between them, log2-minute buckets (seed 0, valid NDCG@20:
# sequence alone 0.2281 at epoch 29, level with the model without it, which it leads from epoch 8
# to 22; blended 0.2398 against 0.2369; docs/gnn.md)
_SEQ_TIME = {"time_bias": True}
# posterkg-seq's rating input (SASRec.Config.rating_input): each token also gets an embedding of
# its rating in half stars, so a 5 reads apart from a 4 (the sign alone does not tell them). 3
# seeds, valid NDCG@20 blended: 0.2446, 0.2435, 0.2429 against 0.2422, 0.2426, 0.2422; sequence
# alone 0.2308, 0.2304, 0.2302 against 0.2280, 0.2282, 0.2301 (docs/gnn.md, with its test figures)
_SEQ_STARS = {"rating_input": True}
# posterkg-seq and its ablation stop at 25 epochs (the peers keep 30): the learning rate is
# constant, so a lower cap changes nothing but where training ends, and with the 30-epoch cap 5 of
# their 6 reported runs had their best epoch at 20-25 (early stopping ended 5 by epoch 28);
# posterkg-seq's seed 0 peaked at 29 (sequence alone, valid NDCG@20 0.2281; 0.2280 at 25). And
# valid was first evaluated at epoch 16 (12 since the 32-window steps below; from 8 until 2026-12-06: every reported run of the two
# models had its best epoch at 20-25 and none stopped before its cap, so the choices are the same),
# which saves 15 of 25 evaluations. Both are for `make run`'s 10-minute budget on a 2-core
# machine (docs/gnn.md)
# and since 2026-12-07 (later) they take 32 windows per step instead of 128 (4x the optimizer
# steps per epoch, about the same time per epoch): with mask_seen on, valid NDCG@20 blended over
# 3 seeds 0.2494, 0.2495, 0.2480 against 0.2434, 0.2459, 0.2429 (64 windows, seed 0: 0.2482), best
# epochs 17-19 instead of 23-25; evaluated from epoch 12 (docs/gnn.md "32 windows per step")
_SEQ_PK = {**_SEQ, "epochs": 25, "batch_size": 32, "eval_from": 12}
# posterkg-seq's softmax (SASRec.Config.mask_seen, since 2026-12-07): each target's softmax leaves
# out the other movies of its training window, as scoring leaves out seen movies. Chosen on valid
# over 3 seeds, blended: 0.2434, 0.2459, 0.2429 against 0.2446, 0.2435, 0.2429 (mean 0.2441 vs
# 0.2437: level within the seeds' spread); the sequence part alone is well ahead (seed 0: 0.2396
# vs 0.2308). Given to the ablation too; docs/gnn.md "Masking the window's movies"
_SEQ_MASK = {"mask_seen": True}
# the strongest peer's budget (sasrec-all-ease-mask and its ensemble): 64 windows per step, its own
# best on valid (docs/gnn.md "32 windows per step")
_SEQ_PEER = {**_SEQ, "batch_size": 64}
# TIGER (posterkg/gnn/tiger.py): the causal encoder (every target of a window from one encoder
# pass: one full pass over the ~227k ML-1M targets in ~45 s on one thread, where the
# bidirectional encoder took ~80-150 s for 50k), 32 windows of 21 liked movies per step (~400
# steps per pass; poster IDs, seed 0, valid NDCG@20 after 5 passes: 0.057 with 128 windows,
# 0.060 with 64 at lr 0.005, 0.103 with 32; 16 was no better over its first 4 passes;
# benchmarks/results/tiger_tuning.json), Adam lr 0.003, the sequence models' patience and floor
# (valid sits at popularity level, ~0.06, for the first epochs), at most 30 passes, and the
# sequence models' weight averaging (ema 0.98; poster IDs, seed 0, valid NDCG@20 0.1861 at epoch
# 28 against 0.1768 without, ahead from epoch 4 on). Not better on valid (seed 0, poster IDs):
# a cosine lr decay over the 30 passes (0.1788), lr 0.006 or 0.012 with a warm-up (stuck at
# popularity level). The encoder reads one position per history movie (history_input "movies":
# the sum of its code embeddings): 1.5x faster per pass, and valid NDCG@20 (seed 0) 0.1937
# against 0.1861 with poster IDs, 0.1995 against 0.1945 with text IDs. Level on valid at
# convergence, though faster at first (seed 0, 2026-12-06): IDs with a collab block (poster
# 0.1958, text 0.1981) and id_input (0.1946, 0.1967), and each code's softmax over the trie's
# children (code_softmax "trie": 0.1936, text 0.1987). Each code's softmax runs over the trie's
# children less those whose movies all lie in the target's window (code_softmax "unseen", since
# 2026-12-07; 3 seeds, valid 0.1957 against 0.1934 with "full", up in every seed; text 0.1990
# against 0.1986; test 0.1755 / 0.1777 against 0.1726 / 0.1771). 4 encoder + 4 decoder layers
# (3 seeds each, 2026-12-07): valid 0.1974 / 0.2005, test level (0.1761 / 0.1776), 1.7x the
# time per pass; not adopted.
# docs/tiger.md
_TIGER = {"lr": 0.003, "epochs": 30, "patience": 3, "batch_size": 32, "min_epochs": 8, "ema": 0.98}
_TIGER_CFG = {"encoder": "causal", "history_input": "movies", "code_softmax": "unseen"}

_ENTRIES = [
    Entry("mostpop", "posterkg.gnn.baselines:MostPop", "most train positives first", stochastic=False),
    Entry("itemknn", "posterkg.gnn.neighbours:ItemKNN", "item-based cosine kNN (shrunk), on the user's history",
          stochastic=False),
    Entry("ease", "posterkg.gnn.neighbours:EASE", "EASE (Steck 2019): closed-form item-item regression",
          stochastic=False),
    Entry("bprmf", "posterkg.gnn.baselines:BPRMF", "matrix factorisation with BPR", train={"lr": 0.005, **_BPR}),
    Entry("lightgcn", "posterkg.gnn.baselines:LightGCN", "LightGCN over ids (positive train edges)", train=_BPR),
    Entry("lightgcn-genre", "posterkg.gnn.baselines:LightGCN", "LightGCN over ids plus movie-genre edges",
          config={"genres": True}, train=_BPR),
    Entry("sasrec", "posterkg.gnn.sequential:SASRec",
          "SASRec: self-attentive next-item model over each user's time-ordered positives",
          train=_SEQ),
    # SASRec reading every rating with its sign (posterkg-seq's input rule; on valid, seed 0:
    # 0.2212 against 0.2162 over positives; docs/gnn.md): the stronger sequence peer
    Entry("sasrec-all", "posterkg.gnn.sequential:SASRec",
          "SASRec over each user's time-ordered ratings of every sign (rating-sign embedding)",
          config={"inputs": "all"}, train=_SEQ),
    # sasrec-all with posterkg-seq's collaborative part (the same EASE blend, chosen on valid the
    # same way): the peer that tells how much of posterkg-seq's lead is that part (seed 0 valid
    # NDCG@20 0.2212 -> 0.2358 at weight 0.1, lambda 4000)
    Entry("sasrec-all-ease", "posterkg.gnn.sequential:SASRec",
          "sasrec-all blended with EASE over the user's whole history (posterkg-seq's collaborative part)",
          config={"inputs": "all", **_SEQ_II}, train=_SEQ),
    # the same with each target's window movies left out of its softmax (mask_seen; 2026-12-07,
    # seed 0: valid 0.2433 against 0.2387, test continue 0.2329 against 0.2273): the strongest
    # peer measured. posterkg-seq has the mask too (_SEQ_MASK, chosen on valid over 3 seeds).
    # It takes 64 windows per step (since 2026-12-07, later; posterkg-seq's 32 was tried first):
    # valid NDCG@20 blended 0.2439, 0.2443, 0.2465 against 0.2433, 0.2435, 0.2411 with 128; 32
    # windows, seed 0: 0.2403 (docs/gnn.md "32 windows per step")
    Entry("sasrec-all-ease-mask", "posterkg.gnn.sequential:SASRec",
          "sasrec-all-ease with each target's window movies left out of its softmax (as scoring leaves out seen movies)",
          config={"inputs": "all", **_SEQ_II, **_SEQ_MASK}, train=_SEQ_PEER),
    Entry("vbpr", "posterkg.gnn.vbpr:VBPR", "VBPR: id factors plus a learned projection of the poster feature and a visual bias", train={"lr": 0.005}, uses_visual=True),
    Entry("posterkg", "posterkg.gnn.model:PosterKG",
          "the posterkg two-stage relation-aware GNN over users, movies and visual concepts",
          uses_visual=True, train=_BPR),
    Entry("posterkg-novisual", "posterkg.gnn.model:PosterKG", "the posterkg GNN without concept nodes",
          config={"item_side": False, "user_side": False, "concepts": False}, train=_BPR),
    Entry("posterkg-seq", "posterkg.gnn.sequential:PosterKGSeq",
          "time-aware posterkg: short-term self-attention over fused movie representations "
          "(id + concepts + genres + poster features) and the ratings' stars, biased by the time "
          "between ratings, gated with a long-term taste vector, "
          "blended with EASE over the whole history",
          config={**_SEQ_FAST, **_SEQ_II, **_SEQ_TIME, **_SEQ_STARS, **_SEQ_MASK}, train=_SEQ_PK, uses_visual=True),
    Entry("posterkg-seq-novisual", "posterkg.gnn.sequential:PosterKGSeq",
          "posterkg-seq without visual concepts or poster features (ablation)",
          config={"concepts": False, "features": [], **_SEQ_FAST, **_SEQ_II, **_SEQ_TIME, **_SEQ_STARS, **_SEQ_MASK},
          train=_SEQ_PK),
    # seed ensembles (SASRec.Config.members): three trainings each, so not what `make run` trains
    # (2-core budget); the mean of 3 seeds' sequence scores, the collaborative part chosen once on
    # it. Valid NDCG@20 of posterkg-seq's seeds 0-2 as one ensemble: 0.2483 against 0.2437 for
    # one model (mean of the three; benchmarks/seed_ensemble.py, docs/gnn.md "Seed ensembles")
    # Since 2026-12-07 (later) with posterkg-seq's mask and 32-window steps: valid 0.2543 against
    # 0.2483 for the ensemble of the earlier settings (one run, members = seeds 0-2)
    Entry("posterkg-seq-x3", "posterkg.gnn.sequential:PosterKGSeq",
          "posterkg-seq as an ensemble of 3 seeds (3 trainings; scores averaged, then blended with EASE)",
          config={**_SEQ_FAST, **_SEQ_II, **_SEQ_TIME, **_SEQ_STARS, **_SEQ_MASK, "members": 3}, train=_SEQ_PK,
          uses_visual=True),
    # the peer's ensemble takes the settings of the single peer (sasrec-all-ease-mask: the mask,
    # 64 windows per step) since 2026-12-07 (later), like posterkg-seq-x3 takes posterkg-seq's
    Entry("sasrec-all-ease-x3", "posterkg.gnn.sequential:SASRec",
          "sasrec-all-ease-mask as an ensemble of 3 seeds (the peer of posterkg-seq-x3)",
          config={"inputs": "all", **_SEQ_II, **_SEQ_MASK, "members": 3}, train=_SEQ_PEER),
    Entry("tiger", "posterkg.gnn.tiger:TIGER",
          "TIGER: encoder-decoder transformer generating the next movie's semantic ID (poster + genre "
          "RQ-VAE codes), trie-constrained beam search", config={"semantic_ids": "poster", **_TIGER_CFG}, train=_TIGER,
          uses_visual=True),
    Entry("tiger-text", "posterkg.gnn.tiger:TIGER",
          "TIGER over text-only semantic IDs (text embedding + genre RQ-VAE codes; ablation)",
          config={"semantic_ids": "text", **_TIGER_CFG}, train=_TIGER),
]

REGISTRY: dict[str, Entry] = {e.name: e for e in _ENTRIES}
MODELS: tuple[str, ...] = tuple(REGISTRY)


def entry(name: str) -> Entry:
    if name not in REGISTRY:
        import difflib

        near = difflib.get_close_matches(name, MODELS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"unknown model {name!r}{hint}; choose from {', '.join(MODELS)}")
    return REGISTRY[name]


def _config(name: str, values: dict[str, Any], where: str):
    cls = entry(name).cls().Config
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)


def model_config(name: str, overrides: dict[str, Any] | None = None):
    """The model's Config dataclass: class defaults, then the registry's, then ``overrides``."""
    values = {**entry(name).config, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return _config(name, values, f"[models.{name}]")


def stored_model_config(name: str, saved: dict[str, Any]):
    """The Config of a stored model from its saved values (a whole ``dataclasses.asdict``). A
    field the save lacks was added to posterkg after it: it takes the class default (new options
    are off there), the behaviour the model was trained with, not the registry's current
    setting, so models stored before a registry change still load and score as they did."""
    return _config(name, {k: v for k, v in saved.items() if v is not None}, f"stored {name} model")


def build(name: str, inputs, cfg=None, seed: int = 0):
    """Instantiate model ``name`` over ``inputs`` (seeded)."""
    import torch

    e = entry(name)
    torch.manual_seed(seed)
    model = e.cls()(inputs, cfg if cfg is not None else model_config(name))
    model.name = name
    return model
