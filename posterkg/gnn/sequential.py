"""Sequential recommenders: SASRec and the time-aware posterkg (``posterkg-seq``).

**SASRec** (Kang & McAuley 2018): each user's time-ordered history (ratings sorted by
(timestamp, movie id), the protocol's order) goes through a causal Transformer encoder; the
hidden state at position ``t`` is scored against every movie's embedding to predict the movie at
``t + 1``. Trained with cross-entropy over the whole catalogue at every position whose next movie
is liked (rating >= 4): the full softmax is cheap for MovieLens-size catalogues and trains
faster than SASRec's original one-negative BCE. Input tokens are the liked movies
(``inputs = "positives"``) or every rated movie with a rating-sign embedding (``"all"``).
At evaluation the history is train for valid and train + valid for test, so the most recent
ratings before the evaluated period are in the window (the harness's fold-in rule); the last
``max_len`` ratings are used.

**posterkg-seq**: the posterkg design (long-term and short-term interests kept apart, the visual
knowledge graph on the movie side) as a sequence model.

* Movie representation (used for the sequence inputs *and* as the output embedding, so a movie
  nobody rated still has one): ``id embedding + sum_m gate_m * part_m`` over the switchable
  parts ``concepts`` (the row-normalised mean of the embeddings of the concepts its poster shows,
  from the graph's ``has`` edges and their weights), ``genres`` (same over the ``genre``
  relation) and dense ``features`` (a learned linear projection of the poster / text
  embedding); ``gate_m`` are learned scalars (the seeds' multimodal fusion, gated).
* Short-term interest: the causal self-attention encoder over the user's recent ratings, each
  token = movie representation + rating-sign embedding (liked / neutral / disliked: dislikes
  are inputs too); with ``time_bias`` (the registry's setting) each attention logit between two
  ratings gets a learned per-layer, per-head bias by the time between them (log2-minute buckets,
  :func:`time_buckets`), so the ratings of the user's current session can be weighed apart from
  older ones (TiSASRec's relative intervals, as a bias). Both models accept it.
* Long-term interest: at every position the running mean of the representations of the movies
  the user liked so far minus ``neg_weight`` times that of the movies they disliked, through a
  linear map (causal, so training sees exactly what evaluation sees).
* Fusion: a learned per-dimension gate ``g = sigmoid(W [short; long])`` and
  ``h = g * short + (1 - g) * long``; score = ``h . movie representation``. :meth:`explain_parts`
  splits a score into its short- and long-term parts (what ``explain`` reports as "recently" vs
  "over the years").

Both models follow :mod:`posterkg.gnn.base` (``trainer = "fit"``); ``score_graph`` scores under a
given (e.g. masked) graph so explanations can take gradients through the concept edges.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from posterkg.errors import ConfigError, InputError
from posterkg.gnn.base import FitInfo, Graph, ModelInputs, Recommender
from posterkg.gnn.losses import catalogue_log_softmax_at, exclude_logits_
from posterkg.gnn.neighbours import check_memory, ease_matrix, gram_matrix
from posterkg.gnn.sparse import row_norm, spmm
from posterkg.ratings import signs


class Block(nn.Module):
    """A pre-norm Transformer block (self-attention + GELU feed-forward) over [B, L, d]."""

    def __init__(self, dim: int, heads: int, dropout: float, attn_dropout: float | None = None):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)
        # dropout on the attention weights (a [B, heads, L, L] mask: the costliest part of a CPU
        # step); residual and feed-forward dropout stay `dropout`
        self.p = dropout if attn_dropout is None or attn_dropout < 0 else attn_dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``last_only``: only the last position's output ([B, 1, d]; its keys and values still
        come from every position) - all that scoring a user needs from the last block."""
        B, L, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if last_only:
            q, mask, x = q[:, :, -1:], mask[:, :, -1:], x[:, -1:]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(B, x.shape[1], d)))
        return x + self.drop(self.ff(self.ln2(x)))


STAR_LEVELS = 11       # a rating in half stars, round(2 * rating) clipped to 0 .. 10


def rating_codes(ratings: np.ndarray, stars: bool = False) -> np.ndarray:
    """The rating channel of a window: sign + 2 (1 disliked, 2 neutral, 3 liked; 0 = padding) in
    the low two bits; with ``stars``, also the rating in half stars (``round(2 * rating)``, 0 ..
    10) from bit 2 up. ``code & 3`` is the sign + 2 either way, ``code >> 2`` the half stars."""
    r = np.asarray(ratings, dtype=np.float64)
    code = signs(r).astype(np.int64) + 2
    if stars:
        code += 4 * np.clip(np.rint(2.0 * r), 0, STAR_LEVELS - 1).astype(np.int64)
    return code


def _windows(history, users: np.ndarray, max_len: int, positives_only: bool, with_ts: bool = False,
             stars: bool = False):
    """Left-padded [B, max_len] token arrays (movie index + 1, 0 = padding) and rating codes
    (:func:`rating_codes`) of the last ``max_len`` history rows of each user (``with_ts``: and
    their timestamps, 0 = padding)."""
    B = len(users)
    tok = np.zeros((B, max_len), np.int64)
    sgn = np.zeros((B, max_len), np.int64)
    ts = np.zeros((B, max_len), np.int64) if with_ts else None
    for i, u in enumerate(users):
        a, b = history.indptr[u], history.indptr[u + 1]
        m, r, t = history.movies[a:b], history.ratings[a:b], history.ts[a:b]
        if positives_only:
            keep = r >= 4.0
            m, r, t = m[keep], r[keep], t[keep]
        m, r, t = m[-max_len:], r[-max_len:], t[-max_len:]
        n = len(m)
        if n:
            tok[i, max_len - n:] = m + 1
            sgn[i, max_len - n:] = rating_codes(r, stars)   # & 3: 1 disliked, 2 neutral, 3 liked
            if with_ts:
                ts[i, max_len - n:] = t
    return (tok, sgn, ts) if with_ts else (tok, sgn)


def time_buckets(gap: torch.Tensor, n: int) -> torch.Tensor:
    """Bucket of a time gap in seconds: floor(log2(1 + |gap| / 60)), capped at ``n - 1`` (0: under
    a minute, 1: 1-3 minutes, ..., 10: 0.7-1.4 days, 19: 1-2 years). A minute is the finest step,
    so ratings in the same second (whose order the protocol breaks by movie id) look no different
    from ratings a few seconds apart. Exact: the bucket is the binary exponent (read off the
    bits) of the float64 quotient (|gap| + 60) / 60, which is correctly rounded and so never
    reaches a power of two that the exact quotient lies below (|gap| < 2^53 s: float64 holds it
    exactly; 2.2x faster than ``torch.bucketize`` over the edges). int64 buckets: the lookup's
    ``index_add_`` backward is ~8x slower with int32 indices."""
    x = gap.abs().double().add_(60.0).div_(60.0)             # >= 1
    return x.view(torch.int64).bitwise_right_shift_(52).sub_(1023).clamp_(0, n - 1)


def pairwise_time_buckets(tok: torch.Tensor, ts: torch.Tensor, n: int, last_row: bool = False) -> torch.Tensor:
    """[B, L, L] :func:`time_buckets` of the time between positions i (row) and j (column) of
    left-padded windows ([B, 1, L]: the last row only). Padding gets its window's last time (its
    buckets are masked anyway), so the times are taken from the window's last one and fit in
    int32 (half the memory traffic) whenever a window spans less than 2^30 s (34 years)."""
    last = ts.amax(1, keepdim=True)
    t = torch.where(tok != 0, ts, last) - last                   # <= 0
    if t.numel() and int(t.min()) > -(2 ** 30):
        t = t.int()
    rows = t[:, -1:] if last_row else t
    return time_buckets(rows.unsqueeze(2) - t.unsqueeze(1), n)


def window_spans(n: int, max_len: int) -> list[tuple[int, int]]:
    """(start, end) of the training windows of a sequence of ``n`` items: at most ``max_len + 1``
    consecutive items each, the most recent chunk first, then earlier ones overlapping it by one
    item, so every item after the first is a target in exactly one window."""
    return [(a, b) for a, b, _ in window_targets(n, max_len, max_len)]


def crop_mask(win: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """[B, L + 1] bool: the cells of left-padded windows ``win`` (0 = padding) to keep when each
    window, with probability ``p``, loses a uniformly drawn number (0 to its length - 2) of its
    oldest ratings. A dropped rating becomes padding in every array of the window (movie, sign,
    time): neither context nor a target."""
    n = (win > 0).sum(1)
    hit = torch.rand(len(win), generator=gen) < p
    drop = (torch.rand(len(win), generator=gen) * (n - 1).clamp(min=0).float()).long()
    drop = torch.where(hit, drop, torch.zeros_like(drop))
    # a window's ratings start at column L + 1 - n; its first `drop` of them go
    col = torch.arange(win.shape[1]).unsqueeze(0)
    return col >= (win.shape[1] - n + drop).unsqueeze(1)


def window_targets(n: int, max_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first) of the training windows of a sequence of ``n`` items with a stride:
    each window holds at most ``max_len + 1`` consecutive items ``[start, end)``, the most recent
    first, and its targets are the items ``[first, end)``: the last ``stride`` of them (all down
    to ``start + 1`` in the earliest window). So every item after the first is a target in
    exactly one window, and, but in the earliest window, each target reads at least
    ``max_len - stride`` items before it. ``stride = max_len`` is :func:`window_spans`."""
    if not 1 <= stride <= max_len:
        raise ValueError(f"window stride must be in [1, max_len = {max_len}], not {stride}")
    spans, end = [], n
    while end >= 2:
        start = max(0, end - (max_len + 1))
        first = start + 1 if start == 0 else max(start + 1, end - stride)
        spans.append((start, end, first))
        end = first if start > 0 else 0
    return spans


class _BucketBias(torch.autograd.Function):
    """Attention biases ``out[b, c, i, j] = weight[idx[b, i, j], c]`` ([B, C, R, L] from a small
    [rows, C] table and [B, R, L] int64 indices), returned as a strided view of a [C, B, R, L]
    tensor: each head's biases contiguous, which the CPU attention kernel reads without a copy
    (from a [B, R, L, C] embedding lookup it copies: ~2x the kernel's time). The backward sums
    the gradient per index with ``index_add_``, per head (about 10x faster on a CPU than the
    embedding backward for the ~5M indices of a [128, 200, 200] batch of time gaps)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        flat = idx.reshape(-1)
        ctx.save_for_backward(flat)
        ctx.rows = weight.shape[0]
        cols = weight.t().contiguous()
        out = weight.new_empty((weight.shape[1], *idx.shape))
        for c in range(weight.shape[1]):
            torch.index_select(cols[c], 0, flat, out=out[c].view(-1))
        return out.permute(1, 0, *range(2, idx.dim() + 1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (flat,) = ctx.saved_tensors
        g = grad.new_zeros(grad.shape[1], ctx.rows)
        for c in range(grad.shape[1]):
            g[c].index_add_(0, flat, grad[:, c].reshape(-1))
        return g.t(), None


# the collaborative part's blend weights and EASE lambdas tried together on valid (item_item = -1):
# 8 valid evaluations and 4 EASE solves after training. Every reported run (posterkg-seq, its
# ablation, sasrec-all-ease; 3 seeds each) chose weight 0.1 or 0.15 and a lambda of 1000-8000
# from the wider grids this replaces (weights 0.05-0.3 and lambdas from 250: 30 evaluations, 6
# solves; then weights 0.05-0.2: 16 evaluations), so their choices, and scores, are the same
ITEM_ITEM_GRID = (0.1, 0.15)
ITEM_ITEM_LAMBDAS = (1000.0, 2000.0, 4000.0, 8000.0)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Each row centred and scaled to unit standard deviation (over the catalogue)."""
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp(min=1e-6)


def _batches(lengths: torch.Tensor, bs: int, gen: torch.Generator, *, bucket: bool,
             chunk: int = 16) -> list[torch.Tensor]:
    """One epoch's batches of window indices, in random order. With ``bucket``, windows are
    shuffled, cut into chunks of ``chunk`` batches, sorted by length inside each chunk and
    batched, and the batches shuffled: batches hold windows of similar length, so trimming the
    common padding saves about half the positions on MovieLens (median window 81 of 201 slots)
    while every window is still seen once per epoch."""
    order = torch.randperm(len(lengths), generator=gen)
    if not bucket:
        return [order[s:s + bs] for s in range(0, len(order), bs)]
    out = []
    for s in range(0, len(order), chunk * bs):
        c = order[s:s + chunk * bs]
        c = c[torch.argsort(lengths[c], stable=True)]
        out.extend(c[b:b + bs] for b in range(0, len(c), bs))
    perm = torch.randperm(len(out), generator=gen).tolist()
    return [out[i] for i in perm]


class SASRec(Recommender):
    trainer = "fit"

    @dataclasses.dataclass
    class Config:
        dim: int = 64
        layers: int = 2
        heads: int = 2
        max_len: int = 200
        dropout: float = 0.2
        attn_dropout: float = -1.0    # dropout on attention weights; -1 = same as `dropout`
        inputs: str = "positives"     # "positives" | "all" (every rated movie, with its sign)
        weight_decay: float = 0.0
        horizon: int = 1              # targets: the liked movies among the next `horizon` positions
        # with inputs "all": the weight of a next movie the user rated 3 (neutral) / 1-2 (disliked)
        # as a target (0 = only liked movies are targets): they were still chosen to be watched
        neutral_target: float = 0.0
        disliked_target: float = 0.0
        # with inputs "all": unlikelihood on a next movie the user went on to rate 1-2 (disliked) /
        # 3 (neutral): the loss adds weight * -log(1 - p(that movie)), so the model learns which
        # movies the user would watch but not like (relevance is a rating >= 4); 0 = off. Its
        # gradient is about p (a liked target's is about 1 - p), so useful weights are large
        disliked_unlikely: float = 0.0
        neutral_unlikely: float = 0.0
        # label smoothing of the catalogue softmax (torch's `cross_entropy(label_smoothing=)`):
        # each target's loss is (1 - e) * -log p(target) + e * mean over the catalogue of -log p;
        # 0 = off. Needs the full softmax (negatives = 0)
        label_smoothing: float = 0.0
        bucket: bool = False          # batch windows of similar length (each target weighed alike)
        negatives: int = 0            # 0: softmax over the whole catalogue; N: over the target and
        #                               N uniformly sampled movies shared by the batch
        bf16_logits: bool = False     # training only: the catalogue logits and their log-softmax
        #                               in bfloat16 (AMX/AVX512-BF16 CPUs, GPUs); weights stay float32
        softmax_chunk: int = -1       # full softmax `chunk` positions at a time, logits recomputed in
        #                               the backward (same loss and gradients; its loss term 2.2x faster on a CPU);
        #                               0 = one [P, n_movies] log-softmax; -1 = 256 on CPU, 0 elsewhere
        # mask_seen: each target's softmax leaves out the other movies of its training window
        # (what the user rated around it), as scoring leaves out the movies a user has seen and
        # as SASRec's sampled negatives exclude the user's movies; full softmax only
        mask_seen: bool = False
        # ii_prior > 0: EASE's scores of everything the user rated before a position are added to
        # that position's logits during training (times a learned scalar, initialised to this),
        # and to the scores the same way, so the sequence model learns what EASE misses instead of
        # what it already says (a residual over a fixed prior; the collaborative part below is
        # then chosen on valid on top of it). Leak-free in training: a user's positions get the
        # EASE matrix solved on the other half of the users (lambda / 2: half the Gram matrix);
        # scoring uses the one solved on every user's ratings. Needs inputs "all" and the full
        # softmax; 0 = off
        ii_prior: float = 0.0
        ii_prior_l2: float = 4000.0
        # the collaborative part: scores = z(sequence scores) + item_item * z(EASE scores of the
        # user's whole history), z = standardised over the catalogue per user. 0 = off; -1 = the
        # weight (from item_item_grid) and EASE's lambda (from item_item_lambdas) chosen together
        # on valid after training (set into this config; 0 when no weight beats the sequence alone);
        # a weight > 0 is kept as configured
        item_item: float = 0.0
        item_item_l2: float = 0.0     # EASE's lambda; 0 = chosen on valid
        # how the two parts are put on one scale: "user" = z-scores per user, as above; "global" =
        # the raw scores, sequence + item_item * item_item_ratio * EASE, where the ratio (set by
        # fit, per lambda) is the mean per-user standard deviation of the sequence scores over
        # that of the EASE scores: one scale for everyone, so a user whose EASE scores stand out
        # (long histories, well co-rated movies) gets more of them
        item_item_scale: str = "user"
        item_item_ratio: float = 0.0
        item_item_grid: list = dataclasses.field(default_factory=lambda: list(ITEM_ITEM_GRID))
        item_item_lambdas: list = dataclasses.field(default_factory=lambda: list(ITEM_ITEM_LAMBDAS))
        # above this many movies the part is skipped: EASE's dense solve grows with the cube of
        # the catalogue (ML-1M's 3.7k movies: seconds on a CPU; ML-25M's 62k: hours per lambda)
        item_item_max_movies: int = 20000
        # time (the ratings' timestamps; none of it reads the time of the movie being predicted):
        # time_bias: each attention weight between two ratings gets a learned per-head, per-layer
        # bias by the bucketed time between them (TiSASRec's relative intervals, as a bias);
        # time_input: each token gets an embedding of the bucketed time since the previous rating
        time_bias: bool = False
        time_input: bool = False
        time_buckets: int = 24
        # rating_input: each token also gets an embedding of its rating in half stars (a 5 apart
        # from a 4, which the sign alone does not tell; zero-initialised, so training starts from
        # the model without it)
        rating_input: bool = False
        # members > 1: an ensemble of this many models of the same settings, trained one after
        # the other with seeds seed, seed + 1, ... (each with its own early stopping); the sequence
        # scores are the mean of theirs, and the collaborative part is chosen once, on the mean.
        # Costs `members` trainings (docs/gnn.md, "Seed ensembles")
        members: int = 1
        # item_init "svd": before training, the movies' id embeddings start from the top `dim`
        # eigenvectors of the training ratings' cosine item-item matrix (scaled by the square
        # roots of their eigenvalues, then to the random init's std 0.02), so training starts
        # from co-rating structure (every member of an ensemble from the same table); "random"
        # (normal, std 0.02) otherwise
        item_init: str = "random"
        # window_stride: training windows of max_len + 1 ratings whose targets are their last
        # `window_stride` ratings, the ratings before them context only (RecBole-style sliding
        # windows: each target but those of a user's earliest window reads at least
        # max_len - window_stride ratings); 0 = max_len: consecutive chunks, every rating a
        # target, the first targets of an earlier chunk with little before them
        window_stride: int = 0
        # crop: training only; each step, each window is cropped with this probability: it loses
        # a uniformly drawn number of its oldest ratings (as context and as targets; at least 2
        # stay), so the same targets are seen with varied context across epochs (the crop
        # augmentation of CL4SRec, Xie et al. 2022); 0 = off
        crop: float = 0.0

    def __init__(self, inputs: ModelInputs, cfg=None):
        super().__init__(inputs, cfg)
        c = self.cfg
        if c.item_init not in ("random", "svd"):
            raise ValueError(f"item_init must be 'random' or 'svd', not {c.item_init!r}")
        if not 0.0 <= float(c.crop) < 1.0:
            raise ValueError(f"crop must be in [0, 1), not {c.crop}")
        if c.crop and c.ii_prior:
            raise ValueError("crop does not go with ii_prior (the prior counts every rating of the window)")
        if not 0 <= int(c.window_stride) <= int(c.max_len):
            raise ValueError(f"window_stride must be in [0, max_len = {c.max_len}], not {c.window_stride}")
        if c.inputs not in ("positives", "all"):
            raise ValueError(f"inputs must be 'positives' or 'all', not {c.inputs!r}")
        if not (c.item_item == -1 or c.item_item >= 0):
            raise ValueError(f"item_item must be a weight >= 0 or -1 (chosen on valid), not {c.item_item}")
        if c.item_item_scale not in ("user", "global"):
            raise ValueError(f"item_item_scale must be 'user' or 'global', not {c.item_item_scale!r}")
        # EASE's item-item matrix of the collaborative part (sized by fit; empty = no such part)
        self.register_buffer("ii_S", torch.zeros(0))
        if float(c.ii_prior) < 0 or float(c.ii_prior_l2) <= 0:
            raise ValueError(f"ii_prior must be >= 0 and ii_prior_l2 > 0, not {c.ii_prior} / {c.ii_prior_l2}")
        self.prior_w = None
        if c.ii_prior:
            if c.inputs != "all":
                raise ValueError("ii_prior needs inputs = 'all' (the prior reads every rated movie)")
            if c.negatives or c.label_smoothing:
                raise ValueError("ii_prior needs the full softmax without label smoothing")
            # the prior's weight (learned) and EASE's matrix on every user's ratings (sized by fit)
            self.prior_w = nn.Parameter(torch.tensor(float(c.ii_prior)))
            self.register_buffer("prior_S", torch.zeros(0))
        self._seq_cache: dict | None = None      # sequence scores kept while fit searches the blend
        self._ii_cache: dict | None = None       # and z(EASE scores) of the lambda being tried
        for key in ("neutral_target", "disliked_target"):
            w = float(getattr(c, key))
            if not 0.0 <= w <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], not {w}")
            if w and c.inputs == "positives":
                raise ValueError(f"{key} needs inputs = 'all' (with 'positives' every target is liked)")
        if not 0.0 <= float(c.label_smoothing) < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), not {c.label_smoothing}")
        if c.label_smoothing and c.negatives:
            raise ValueError("label_smoothing needs the full softmax (negatives = 0)")
        if c.label_smoothing and c.mask_seen:
            # its catalogue mean would count the masked movies
            raise ValueError("label_smoothing does not go with mask_seen (set one of them off)")
        for key in ("neutral_unlikely", "disliked_unlikely"):
            w = float(getattr(c, key))
            if w < 0.0:
                raise ValueError(f"{key} must be >= 0, not {w}")
            if w and c.inputs == "positives":
                raise ValueError(f"{key} needs inputs = 'all' (with 'positives' every next movie is liked)")
        for sign in ("neutral", "disliked"):
            if getattr(c, f"{sign}_target") and getattr(c, f"{sign}_unlikely"):
                raise ValueError(f"{sign}_target and {sign}_unlikely exclude each other "
                                 f"(a {sign} next movie is either a target or an unlikelihood target)")
        self.item = nn.Embedding(self.n_movies + 1, c.dim, padding_idx=0)
        self.pos = nn.Embedding(c.max_len, c.dim)
        self.sign = nn.Embedding(4, c.dim, padding_idx=0)
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.dropout, c.attn_dropout) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.dim)
        self.drop = nn.Dropout(c.dropout)
        if self.uses_time and int(c.time_buckets) < 1:
            raise ValueError(f"time_buckets must be >= 1, not {c.time_buckets}")
        # zero-initialised: training starts from the model without time. time_bias: one table of
        # every layer's per-head biases (column layer * heads + head): one lookup per batch
        self.time_bias = nn.Embedding(int(c.time_buckets), c.layers * c.heads) if c.time_bias else None
        self.time_input = nn.Embedding(int(c.time_buckets), c.dim) if c.time_input else None
        self.stars = nn.Embedding(STAR_LEVELS, c.dim) if c.rating_input else None
        for emb in (self.time_bias, self.time_input, self.stars):
            if emb is not None:
                nn.init.zeros_(emb.weight)
        self._neg_gen: torch.Generator | None = None    # sampled negatives (seeded in fit)
        nn.init.normal_(self.item.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        nn.init.normal_(self.sign.weight, std=0.02)
        with torch.no_grad():
            self.item.weight[0].zero_()
            self.sign.weight[0].zero_()
        if c.item_init == "svd" and getattr(inputs, "data", None) is not None:
            # at build, from the training part (a continuation or a load overwrites it with the
            # saved state, as it does the random init)
            self._svd_init(inputs.data.history("valid"))
        # allowed[i, j]: position i may attend to position j <= i
        self.register_buffer("causal", torch.tril(torch.ones(c.max_len, c.max_len, dtype=torch.bool)),
                             persistent=False)
        # the ensemble's other members (members > 1), each a whole model of this class with one
        # member and no collaborative part of its own, initialised from seed s + i (s: the seed
        # this model is built with) on a forked generator, so member i is the model a one-member
        # build with that seed starts from, and this model's own initialisation is unchanged;
        # empty with one member (no state keys: a model saved before the option loads as it was)
        if int(c.members) < 1:
            raise ValueError(f"members must be >= 1, not {c.members}")
        one = dataclasses.replace(c, members=1, item_item=0.0, item_item_l2=0.0)
        seed = torch.initial_seed()
        self.extra = nn.ModuleList()
        for i in range(1, int(c.members)):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((seed + i) & 0xFFFF_FFFF_FFFF_FFFF)    # manual_seed's range
                self.extra.append(type(self)(inputs, copy.deepcopy(one)))
        self._solo = False          # True while fit trains this member: its scores alone

    # -- movie side ------------------------------------------------------------------------------
    def movie_table(self, graph: Graph | None = None) -> torch.Tensor:
        """[n_movies, dim] movie representations (inputs and outputs)."""
        return self.item.weight[1:]

    @torch.no_grad()
    def movie_vectors(self) -> torch.Tensor:
        """[n_movies, dim * members]: each member's movie representations side by side (a dot
        product of two rows is the sum of the members' dot products)."""
        own = self.movie_table(self.graph).detach()
        return torch.cat([own, *(m.movie_vectors() for m in self.extra)], 1) if len(self.extra) else own

    def trained_parameters(self) -> list[nn.Parameter]:
        """What training this member updates (its optimizer, its weight average): its own
        parameters, not those of the ensemble's other members."""
        others = {id(p) for p in self.extra.parameters()}
        return [p for p in self.parameters() if id(p) not in others]

    def _members(self) -> list["SASRec"]:
        """The models whose sequence scores are averaged: this one, and the ensemble's other
        members unless this one is being trained alone."""
        return [self] if self._solo else [self, *self.extra]

    def adopt_members(self, states: list[dict]) -> None:
        """Make this ensemble from one-member models trained before: member i takes
        ``states[i]`` (the ``state_dict()`` of a model of this class with ``members = 1``, such
        as separate seeds' saved runs), so k saved runs become the ``members = k`` model without
        training again. The states' own collaborative parts are dropped and this model's part is
        left empty: it belongs to the members' mean, chosen on valid afterwards (``item_item =
        -1`` and :meth:`_fit_item_item`, as ``fit`` does)."""
        members = [self, *self.extra]
        if len(states) != len(members):
            raise ValueError(f"{len(states)} states for an ensemble of {len(members)} members")
        empty = torch.zeros(0, device=self.ii_S.device)
        self.ii_S = empty
        for m, state in zip(members, states):
            if any(k.startswith("extra.") for k in state):
                raise ValueError("adopt_members takes one-member states; this one is an ensemble's")
            own = {**{k: v for k, v in state.items() if k != "ii_S"}, "ii_S": empty}
            # strict (the other members' keys aside): a state of another architecture or other
            # settings fails here, not at scoring
            got = nn.Module.load_state_dict(m, own, strict=False)
            missing = [k for k in got.missing_keys if not (m is self and k.startswith("extra."))]
            if missing or got.unexpected_keys:
                raise ValueError(f"a state that does not fit this model: missing {missing[:3]}, "
                                 f"unexpected {got.unexpected_keys[:3]}")

    # -- user side -------------------------------------------------------------------------------
    @property
    def per_user(self) -> bool:
        """Whether the model has a part of its own per user (training needs each window's user)."""
        return False

    @property
    def uses_time(self) -> bool:
        return bool(self.cfg.time_bias or self.cfg.time_input)

    def encode(self, tok: torch.Tensor, sgn: torch.Tensor, table: torch.Tensor,
               last_only: bool = False, ts: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, L, dim] of token windows (left-padded); ``last_only``: [B, 1, dim],
        the last position's (the last block computes nothing else). ``ts``: the tokens'
        timestamps (needed with ``time_bias`` / ``time_input``)."""
        if self.uses_time and ts is None:
            raise ValueError("this model reads the ratings' timestamps: pass ts")
        full = torch.cat([torch.zeros(1, table.shape[1], device=table.device), table])
        x = full[tok]
        if self.cfg.inputs == "all":
            x = x + self.sign(sgn & 3)
        if self.stars is not None:
            x = x + self.stars(sgn >> 2)
        L = tok.shape[1]
        nb = int(self.cfg.time_buckets)
        if self.time_input is not None:
            prev = torch.cat([ts[:, :1], ts[:, :-1]], 1)
            first = torch.cat([torch.ones_like(tok[:, :1], dtype=torch.bool), tok[:, :-1] == 0], 1)
            x = x + self.time_input(time_buckets(torch.where(first, 0, ts - prev), nb))
        x = x + self.pos.weight[-L:].unsqueeze(0)
        x = self.drop(x)
        # causal and not padding; every position may attend to itself (padded rows stay finite)
        allowed = self.causal[:L, :L].unsqueeze(0) & (tok != 0).unsqueeze(1)
        allowed = allowed | torch.eye(L, dtype=torch.bool, device=tok.device).unsqueeze(0)
        mask = allowed.unsqueeze(1)                  # [B, 1, L, L], broadcast over heads
        gaps = bias_table = None
        if self.time_bias is not None:
            # [B, L, L] buckets ([B, 1, L]: last row only); a pair that may not attend looks up an
            # extra row of -inf, so the mask and the time bias come from one lookup
            gaps = pairwise_time_buckets(tok, ts, nb, last_row=last_only and len(self.blocks) == 1)
            gaps = gaps.masked_fill_(~allowed[:, -gaps.shape[1]:], nb)
            w = self.time_bias.weight
            bias_table = torch.cat([w, torch.full((1, w.shape[1]), float("-inf"), dtype=w.dtype, device=w.device)])
        H = self.cfg.heads
        for i, blk in enumerate(self.blocks):
            last = last_only and i == len(self.blocks) - 1
            m = mask
            if gaps is not None:
                # [B, heads, L, L]; the last block of a last-only pass needs its last row only
                m = _BucketBias.apply(bias_table[:, i * H:(i + 1) * H], gaps[:, -1:] if last else gaps)
            x = blk(x, m, last_only=last)
        return self.norm(x)

    def user_states(self, tok, sgn, table, last_only: bool = False, ts=None, users=None) -> torch.Tensor:
        """Hidden states of the windows ``tok``; ``users`` (the windows' user indices) is read
        only by models with a per-user part (posterkg-seq's ``user_embedding``)."""
        return self.encode(tok, sgn, table, last_only, ts)

    def _batch(self, history, users: np.ndarray, device):
        """Token, sign and timestamp windows of ``users`` (timestamps None unless the model reads
        time), without the columns that are padding in every window (positions are
        right-aligned, so the model sees the same inputs)."""
        tok, sgn, *ts = _windows(history, users, self.cfg.max_len, self.cfg.inputs == "positives",
                                 with_ts=self.uses_time, stars=self.cfg.rating_input)
        filled = (tok > 0).any(0)
        keep = max(1, self.cfg.max_len - int(filled.argmax())) if filled.any() else 1

        def cut(a):
            return torch.from_numpy(np.ascontiguousarray(a[:, -keep:])).to(device)
        return cut(tok), cut(sgn), (cut(ts[0]) if ts else None)

    def _user_scores(self, users: np.ndarray, history, table: torch.Tensor) -> torch.Tensor:
        tok, sgn, ts = self._batch(history, users, table.device)
        uu = torch.from_numpy(np.asarray(users, dtype=np.int64)).to(table.device)
        out = self.user_states(tok, sgn, table, last_only=True, ts=ts, users=uu)[:, -1] @ table.T
        if self.prior_w is not None:
            out = out + self.prior_scores(users, history)
        return out

    def prior_scores(self, users: np.ndarray, history) -> torch.Tensor:
        """``ii_prior``: the prior's part of this member's scores, ``prior_w * x_u @ S`` (x_u =
        every movie the user rated in ``history``); zeros before fit has solved S."""
        w = self.prior_w
        if w is None or self.prior_S.numel() == 0:
            return torch.zeros(len(users), self.n_movies, device=self.item.weight.device)
        x = history.csr()[np.asarray(users, dtype=np.int64)]
        return w * (torch.from_numpy(x.toarray().astype(np.float32)).to(self.prior_S.device) @ self.prior_S)

    def score_graph(self, users: torch.Tensor, history, graph: Graph | None = None) -> torch.Tensor:
        graph = graph if graph is not None else self.graph
        u = users.cpu().numpy()
        members = self._members()
        seq = sum(m._user_scores(u, history, m.movie_table(graph)) for m in members) / len(members)
        return self._blend(seq, users, history)

    @torch.no_grad()
    def score(self, users: torch.Tensor, history=None) -> torch.Tensor:
        """:meth:`sequence_scores` blended with the collaborative part when it is on."""
        return self._blend(self.sequence_scores(users, history), users, history)

    @torch.no_grad()
    def sequence_scores(self, users: torch.Tensor, history) -> torch.Tensor:
        """The sequence model's scores of ``users`` alone, in batches of users with similar
        history lengths (each batch's windows trimmed to its longest; the rows come back in the
        order asked); kept while fit searches the blend."""
        key = None
        if self._seq_cache is not None:
            key = (id(history), users.cpu().numpy().tobytes())
        if key is not None and key in self._seq_cache:
            out = self._seq_cache[key]
        else:
            members = self._members()
            out = members[0]._own_sequence_scores(users, history)
            for m in members[1:]:
                out += m._own_sequence_scores(users, history)
            if len(members) > 1:
                out /= len(members)
            if key is not None:
                self._seq_cache[key] = out
        return out

    def _own_sequence_scores(self, users: torch.Tensor, history) -> torch.Tensor:
        """This member's sequence scores of ``users`` (see :meth:`sequence_scores`)."""
        table = self.movie_table(self.graph)
        u = users.cpu().numpy().astype(np.int64)
        out = torch.empty(len(u), self.n_movies, device=table.device)
        order = np.argsort(history.indptr[u + 1] - history.indptr[u], kind="stable")
        for start in range(0, len(u), 512):
            idx = order[start:start + 512]
            out[torch.from_numpy(idx).to(table.device)] = self._user_scores(u[idx], history, table)
        return out

    # -- the collaborative part ------------------------------------------------------------------
    def _item_item_on(self) -> bool:
        return self.cfg.item_item > 0 and self.ii_S.numel() > 0

    def item_item_scores(self, users: torch.Tensor, history) -> torch.Tensor:
        """EASE's scores ``x_u @ S`` of ``users`` ([len(users), n_movies]; x_u = every movie the
        user rated in ``history``)."""
        x = history.csr()[users.cpu().numpy()]
        return torch.from_numpy(x.toarray()).to(self.ii_S.device) @ self.ii_S

    def _blend(self, seq: torch.Tensor, users: torch.Tensor, history) -> torch.Tensor:
        if not self._item_item_on():
            return seq
        key = None if self._ii_cache is None else (id(history), users.cpu().numpy().tobytes())
        glob = self.cfg.item_item_scale == "global"
        if key is not None and key in self._ii_cache:
            ii = self._ii_cache[key]
        else:
            ii = self.item_item_scores(users, history)
            ii = ii if glob else _standardise(ii)
            if key is not None:
                self._ii_cache[key] = ii
        if glob:
            return seq + float(self.cfg.item_item) * float(self.cfg.item_item_ratio) * ii
        return _standardise(seq) + float(self.cfg.item_item) * ii

    def _scale_ratio(self, history, n: int = 2048) -> float:
        """``item_item_scale = "global"``: the mean per-user standard deviation of the sequence
        scores over that of the EASE scores, on up to ``n`` users of ``history`` (evenly spaced)."""
        users = np.flatnonzero(np.diff(history.indptr) > 0)
        users = torch.as_tensor(users[np.linspace(0, len(users) - 1, min(n, len(users))).astype(np.int64)])
        with torch.no_grad():
            seq = torch.cat([self.sequence_scores(users[a:a + 512], history).std(1)
                             for a in range(0, len(users), 512)])
            ii = torch.cat([self.item_item_scores(users[a:a + 512], history).std(1)
                            for a in range(0, len(users), 512)])
        return float(seq.mean()) / max(float(ii.mean()), 1e-12)

    def load_state_dict(self, state, *args, **kwargs):
        state = dict(state)
        # the item-item matrix is sized by fit (models saved before the part existed have none)
        self.ii_S = torch.empty_like(state.setdefault("ii_S", torch.zeros(0)))
        if self.prior_w is not None and "prior_S" in state:
            self.prior_S = torch.empty_like(state["prior_S"])
        return super().load_state_dict(state, *args, **kwargs)

    def _fit_item_item(self, inputs: ModelInputs, valid_fn, info: FitInfo, verbose: bool) -> FitInfo:
        """After training: with ``item_item = -1`` the collaborative part's weight and EASE
        lambda are chosen together on valid, and the part is kept only where valid NDCG@20 beats
        the sequence scores alone; a configured weight is kept as it is (its lambda chosen on
        valid unless configured too). A catalogue larger than ``item_item_max_movies``, or whose
        dense item-item matrix does not fit in memory, skips the part (one line in verbose mode)."""
        c = self.cfg
        if not c.item_item:
            return info
        try:
            self._check_dense_solve()
        except InputError as e:
            if verbose:
                print(f"{self.name}: collaborative part skipped: {e}", flush=True)
            c.item_item, c.item_item_l2 = 0.0, 0.0
            return info
        weights = [float(c.item_item)] if c.item_item > 0 else [float(w) for w in c.item_item_grid if w > 0]
        lambdas = [float(c.item_item_l2)] if c.item_item_l2 > 0 else [float(x) for x in c.item_item_lambdas]
        history = inputs.data.history("valid")                  # = the train part
        gram = gram_matrix(history)
        # choosing: the sequence scores alone are the bar to beat; a configured weight stays on
        bar = info.valid.get("ndcg@20", float("-inf")) if c.item_item < 0 else float("-inf")
        best = (bar, 0.0, 0.0, info.valid, torch.zeros(0), 0.0)
        self.eval()
        if self._seq_cache is None:      # (an ensemble's fit keeps the scores of its mean from just before)
            self._seq_cache = {}
        try:
            for l2 in lambdas:
                self.ii_S = ease_matrix(gram, l2).to(next(self.parameters()).device)
                self._ii_cache = {}       # one EASE product per user batch and lambda, not per weight
                # "global": the scale of this lambda's EASE scores (and, in a continuation, of the
                # scores of the model trained on), measured again each time
                ratio = self._scale_ratio(history) if c.item_item_scale == "global" else 0.0
                c.item_item_ratio = ratio
                for w in weights:
                    c.item_item = w
                    valid = valid_fn(self)
                    if valid is None:    # not measured (refit, continue: the one setting chosen before)
                        if best[0] < float("inf"):
                            best = (float("inf"), w, l2, {}, self.ii_S, ratio)
                        continue
                    if verbose:
                        print(f"{self.name} item_item={w} l2={l2}: valid NDCG@20 {valid['ndcg@20']:.4f}", flush=True)
                    if valid["ndcg@20"] > best[0]:
                        best = (valid["ndcg@20"], w, l2, valid, self.ii_S, ratio)
        finally:
            self._seq_cache = self._ii_cache = None
        _, c.item_item, c.item_item_l2, valid, self.ii_S, c.item_item_ratio = best
        return dataclasses.replace(info, valid=valid)

    # -- training --------------------------------------------------------------------------------
    def _train_windows(self, history, with_ts: bool = False):
        """Training windows of max_len + 1 consecutive tokens per user (the most recent chunk
        first, then earlier ones): [N, L + 1] movie index + 1 (0 = padding, left) and rating
        signs + 2 (0 = padding); ``with_ts``: and the ratings' timestamps (0 = padding)."""
        L = self.cfg.max_len
        wins, sgns, tss = [], [], []
        for u in range(history.n_users):
            m, r, t = self._window_source(history, u)
            for start, end, _ in self._spans(len(m)):
                n = end - start
                w = np.zeros(L + 1, np.int64)
                sg = np.zeros(L + 1, np.int64)
                w[L + 1 - n:] = m[start:end] + 1
                sg[L + 1 - n:] = rating_codes(r[start:end], self.cfg.rating_input)
                wins.append(w)
                sgns.append(sg)
                if with_ts:
                    tw = np.zeros(L + 1, np.int64)
                    tw[L + 1 - n:] = t[start:end]
                    tss.append(tw)
        out = torch.from_numpy(np.stack(wins)), torch.from_numpy(np.stack(sgns))
        return (*out, torch.from_numpy(np.stack(tss))) if with_ts else out

    @torch.no_grad()
    def _svd_init(self, history) -> None:
        """``item_init = "svd"``: the id embeddings from the top eigenvectors of the cosine
        item-item matrix of ``history``'s ratings (every rating counts as one), each scaled by
        the square root of its eigenvalue, the whole table then to std 0.02. A dense solve, so
        bounded like the collaborative part (``item_item_max_movies``, memory)."""
        self._check_dense_solve("item_init = 'svd' (use 'random'): ")
        gram = gram_matrix(history)
        norm = gram.diagonal().clamp(min=1.0).sqrt()
        cos = gram / norm.unsqueeze(0) / norm.unsqueeze(1)
        k = min(int(self.cfg.dim), cos.shape[0])
        vals, vecs = torch.linalg.eigh(cos)                     # ascending
        emb = vecs[:, -k:] * vals[-k:].clamp(min=0.0).sqrt()
        emb = emb * (0.02 / emb.std().clamp(min=1e-12))
        w = self.item.weight
        w[1:, :k] = emb.to(w.dtype).to(w.device)
        w[1:, k:] = 0.0

    def _check_dense_solve(self, what: str = "") -> None:
        """An EASE-sized dense solve over the catalogue (the collaborative part, ``ii_prior``,
        the SVD start): InputError past ``item_item_max_movies`` or where the dense matrix does
        not fit in memory (``what`` prefixes the message)."""
        n, cap = self.n_movies, self.cfg.item_item_max_movies
        if n > cap:
            raise InputError(f"{what}{n:,} movies > item_item_max_movies = {cap:,}")
        check_memory("ease", n)

    def _window_layout(self, history) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per training window, in ``_train_windows``' order: its user, the index of its first
        rating in the user's window source, and how many of its last ratings are targets (the
        ratings before them are context only, ``window_stride``)."""
        rows = [(u, start, end - first) for u in range(history.n_users)
                for start, end, first in self._spans(len(self._window_source(history, u)[0]))]
        out = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        return out[:, 0], out[:, 1], out[:, 2]

    def _spans(self, n: int) -> list[tuple[int, int, int]]:
        """(start, end, first target) of the training windows of a user's ``n`` ratings."""
        L = int(self.cfg.max_len)
        return window_targets(n, L, int(self.cfg.window_stride) or L)

    def _window_source(self, history, u: int):
        """User ``u``'s (movies, ratings, timestamps) that training windows are cut from: every
        rating, or only the liked ones with ``inputs = "positives"``."""
        a, b = history.indptr[u], history.indptr[u + 1]
        m, r, t = history.movies[a:b], history.ratings[a:b], history.ts[a:b]
        if self.cfg.inputs == "positives":
            keep = r >= 4.0
            m, r, t = m[keep], r[keep], t[keep]
        return m, r, t

    def _targets(self, win, wsg, n_tgt=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets [B, L, K] of each input position (the movies at t+1 .. t+K within the window)
        and the weight of each one (1 liked, ``neutral_target`` / ``disliked_target`` for the
        other signs, 0 where the input position is padding; minus ``disliked_unlikely`` /
        ``neutral_unlikely`` for an unlikelihood target)."""
        tok = win[:, :-1]
        L, K = tok.shape[1], max(1, int(self.cfg.horizon))
        nxt = win[:, 1:] - 1                                       # movie index, -1 = padding
        sg = wsg[:, 1:] & 3                                        # the sign + 2
        w = (sg == 3).float()                                      # padding has sign 0
        if self.cfg.neutral_target:
            w = w + float(self.cfg.neutral_target) * (sg == 2).float()
        if self.cfg.disliked_target:
            w = w + float(self.cfg.disliked_target) * (sg == 1).float()
        if self.cfg.disliked_unlikely:     # negative weights: unlikelihood targets (train_loss)
            w = w - float(self.cfg.disliked_unlikely) * (sg == 1).float()
        if self.cfg.neutral_unlikely:
            w = w - float(self.cfg.neutral_unlikely) * (sg == 2).float()
        w = w * (nxt >= 0).float()
        if n_tgt is not None:
            # only each window's last n_tgt ratings are targets (window_stride; right-aligned)
            col = torch.arange(nxt.shape[1], device=nxt.device).unsqueeze(0)
            w = w * (col >= nxt.shape[1] - n_tgt.to(nxt.device).unsqueeze(1)).float()
        pad_t = torch.cat([nxt, torch.full((nxt.shape[0], K - 1), -1, dtype=nxt.dtype)], 1)
        pad_w = torch.cat([w, torch.zeros(nxt.shape[0], K - 1)], 1)
        tgt = pad_t.unfold(1, K, 1)[:, :L]
        ok = pad_w.unfold(1, K, 1)[:, :L] * (tok > 0).unsqueeze(-1).float()
        return tgt, ok

    def _prior_logits(self, tok: torch.Tensor, rows: torch.Tensor, prior) -> torch.Tensor:
        """``ii_prior`` in training: [P, n_movies] EASE scores of everything rated up to each
        target position (``rows`` of the [B, L] input tokens ``tok``, in ``h[rows]``'s order):
        the window's base (the user's ratings before the window) plus the running sum of the
        rows of the fold's matrix for the window's tokens. ``prior = (base [B, N], mats)``, mats
        [B] of the [N + 1, N] matrices (row 0: padding) each window reads."""
        base, mats = prior
        out = []
        for b in range(tok.shape[0]):
            r = rows[b]
            if bool(r.any()):
                out.append(mats[b][tok[b]].cumsum(0)[r] + base[b])
        return torch.cat(out) if out else base.new_zeros(0, base.shape[1])

    def train_loss(self, win, wsg, norm: float | None = None, wts=None, prior=None, users=None,
                   n_tgt=None) -> torch.Tensor:
        """Cross-entropy over the catalogue: the state at position t predicts each liked movie
        among the next ``horizon`` positions (horizon 1 = classic next-item SASRec). Averaged
        over the batch's targets, or summed and divided by ``norm`` (the epoch's mean number of
        targets per batch: every target weighs the same whatever batch it falls in). ``wts``:
        the windows' timestamps (models that read time); ``users``: the windows' user indices
        (models with a per-user part); ``n_tgt``: how many of each window's last ratings are
        targets (``window_stride``; None: all)."""
        table = self.movie_table(self.graph)
        tok, sgn = win[:, :-1], wsg[:, :-1]
        h = self.user_states(tok, sgn, table, ts=None if wts is None else wts[:, :-1], users=users)   # [B, L, d]
        tgt, ok = self._targets(win, wsg, n_tgt)
        rows = (ok != 0).any(-1)
        if not bool(rows.any()):
            return h.sum() * 0.0
        hh, t, o = h[rows], tgt[rows].clamp(min=0), ok[rows]       # [P, d], [P, K], [P, K]
        n_neg = int(self.cfg.negatives)
        chunk = int(self.cfg.softmax_chunk)
        if chunk < 0:
            chunk = 256 if hh.device.type == "cpu" else 0
        low = self.cfg.bf16_logits and self.training
        bias = None
        if self.prior_w is not None:
            if prior is None:
                raise ValueError("ii_prior: train_loss needs the windows' prior (fit passes it)")
            bias = self._prior_logits(tok, rows, prior)
        exclude = None
        if self.cfg.mask_seen:
            if n_neg > 0:
                raise ConfigError("mask_seen needs the full softmax (negatives = 0)")
            # [B, n_movies]: the movies of each window (padding 0 dropped); per position its window
            sets = torch.zeros(win.shape[0], table.shape[0] + 1, dtype=torch.bool, device=hh.device)
            sets = sets.scatter_(1, win.to(hh.device), True)[:, 1:]
            exclude = (sets, torch.arange(win.shape[0], device=hh.device).unsqueeze(1).expand_as(rows)[rows])
        if n_neg > 0:
            # sampled softmax: each target against the same N uniform negatives (uniform
            # sampling needs no log-q correction); a negative that is the target is masked out
            neg = torch.randint(0, table.shape[0], (n_neg,), generator=self._neg_gen, device=hh.device)
            pos = torch.einsum("pd,pkd->pk", hh, table[t])                      # [P, K]
            negl = hh @ table[neg].T                                           # [P, N]
            negl = negl.unsqueeze(1).masked_fill(neg.view(1, 1, -1) == t.unsqueeze(-1), float("-inf"))
            picked = pos - torch.logsumexp(torch.cat([pos.unsqueeze(-1), negl], -1), -1)
        elif chunk > 0:
            picked = catalogue_log_softmax_at(hh, table, t, chunk, bf16=low, exclude=exclude,
                                              bias=bias, scale=None if bias is None else self.prior_w)
        else:
            z = (hh.bfloat16() @ table.bfloat16().T) if low else hh @ table.T       # [P, n_movies]
            if bias is not None:
                z = z + self.prior_w * bias
            if exclude is not None:      # out of place: autograd keeps z's graph
                z = exclude_logits_(z, t, exclude[0][exclude[1]], inplace=False)
            picked = torch.log_softmax(z, dim=-1).gather(1, t).float()       # -> [P, K]
        pos = o.clamp(min=0)
        eps = float(self.cfg.label_smoothing)
        if eps > 0:
            # the mean log-probability over the catalogue is h . mean(table) - logsumexp, and
            # logsumexp = h . table[target] - log p(target): no [P, n_movies] tensor is needed
            zt = torch.einsum("pd,pkd->pk", hh, table[t])
            mean_logp = (hh @ table.mean(0)).unsqueeze(1) - zt + picked
            loss = -(((1.0 - eps) * picked + eps * mean_logp) * pos).sum()
        else:
            loss = -(picked * pos).sum()
        if bool((o < 0).any()):
            # unlikelihood: -log(1 - p) of a movie the user rated next but did not like
            log_not = torch.log(-torch.expm1(picked.clamp(max=-1e-6)))
            loss = loss - (log_not * (-o).clamp(min=0)).sum()
        if norm is None:
            n = float(pos.sum())
            norm = n if n > 0 else 1.0
        return loss / norm

    def fit(self, inputs: ModelInputs, train_cfg, valid_fn, verbose: bool = False) -> FitInfo:
        """Train the sequence model (each member of an ensemble in turn, seeds ``seed``,
        ``seed + 1``, ..., each stopping early on its own valid scores), then choose the
        collaborative part on the ensemble's mean scores. The history and best epoch returned are
        the first member's; seconds per epoch are summed over the members."""
        # the sequence model trains and stops early on its own scores; the collaborative part
        # (if on) is chosen afterwards
        weight, self.cfg.item_item = self.cfg.item_item, 0.0
        try:
            self._solo = True
            try:
                info = self._fit_sequence(inputs, train_cfg, valid_fn, verbose)
            finally:
                self._solo = False
            secs = info.seconds_per_epoch
            for i, member in enumerate(self.extra, 1):
                member.name = f"{self.name} member {i + 1}"
                torch.manual_seed(train_cfg.seed + i)
                got = member.fit(inputs, dataclasses.replace(train_cfg, seed=train_cfg.seed + i), valid_fn, verbose)
                secs += got.seconds_per_epoch
                if verbose and got.valid:
                    print(f"{member.name}: best epoch {got.best_epoch}, valid NDCG@20 {got.valid['ndcg@20']:.4f}",
                          flush=True)
            if len(self.extra):
                # the mean of the members' scores (None: not measured); kept, since the blend
                # search below starts by scoring the same users again
                self._seq_cache = {}
                valid = valid_fn(self)
                if verbose and valid is not None:
                    print(f"{self.name}: the {len(self.extra) + 1} members' mean, valid NDCG@20 "
                          f"{valid['ndcg@20']:.4f}", flush=True)
                info = dataclasses.replace(info, valid=valid if valid is not None else info.valid,
                                           seconds_per_epoch=secs)
        finally:
            self.cfg.item_item = weight
        try:
            return self._fit_item_item(inputs, valid_fn, info, verbose)
        finally:
            self._seq_cache = None

    def _prepare_prior(self, history, layout):
        """``ii_prior``: solve EASE (lambda ``ii_prior_l2``) on every user's rows of ``history``
        into ``prior_S`` (scoring), and on each half of the users (even / odd index, lambda / 2)
        for training, where a user's windows read the other half's matrix, so no position's prior
        has seen the user's own ratings. ``layout``: :meth:`_window_layout` of ``history``.
        Returns, per training window (``_train_windows``' order),
        the prior of the user's ratings before the window [n_windows, N], the fold of its
        matrix, and the two [N + 1, N] matrices (row 0 for padding)."""
        import scipy.sparse as sp

        c, n = self.cfg, self.n_movies
        self._check_dense_solve("ii_prior: ")
        device = self.prior_w.device
        x = history.csr().astype(np.float64)
        lam = float(c.ii_prior_l2)
        half = np.arange(history.n_users) % 2
        # each fold's Gram matrix; every user is in one fold, so the full one is their sum
        grams = [torch.from_numpy((xf.T @ xf).toarray()) for xf in (x[np.flatnonzero(half == f)] for f in (0, 1))]
        self.prior_S = ease_matrix(grams[0] + grams[1], lam).to(device)
        # the matrix of fold f's users, read by the other fold's windows
        mats = [torch.cat([torch.zeros(1, n), ease_matrix(g, lam / 2.0)]).to(device) for g in grams]
        # each window's user and first position, in _train_windows' order
        users, starts, _ = layout
        fold = torch.from_numpy(1 - half[users])
        base = torch.zeros(len(users), n)
        later = np.flatnonzero(starts > 0)
        if len(later):
            ptr = np.concatenate([[0], np.cumsum(starts[later])])
            cols = np.concatenate([history.movies[history.indptr[u]:history.indptr[u] + st]
                                   for u, st in zip(users[later], starts[later])])
            before = sp.csr_matrix((np.ones(len(cols), np.float32), cols, ptr), shape=(len(later), n))
            before.sum_duplicates()
            before.data[:] = 1.0
            later_fold = fold[later].numpy()
            for f in (0, 1):
                sel = later_fold == f
                if sel.any():
                    base[torch.from_numpy(later[sel])] = torch.from_numpy(
                        before[sel] @ mats[f][1:].cpu().numpy()).float()
        return base, fold, mats

    def _fit_sequence(self, inputs: ModelInputs, train_cfg, valid_fn, verbose: bool) -> FitInfo:
        """Train this member's sequence model with early stopping (no collaborative part)."""
        from posterkg.gnn.train import fit_epochs

        device = next(self.parameters()).device
        win, wsg, *wts = self._train_windows(inputs.data.history("valid"), with_ts=self.uses_time)
        wts = wts[0] if wts else None
        layout = self._window_layout(inputs.data.history("valid"))
        if len(layout[0]) != len(win):
            raise RuntimeError(f"{len(layout[0])} window origins for {len(win)} windows")
        prior = self._prepare_prior(inputs.data.history("valid"), layout) if self.prior_w is not None else None
        wus = torch.from_numpy(layout[0]) if self.per_user else None
        ntg = None
        if int(self.cfg.window_stride) and int(self.cfg.window_stride) < int(self.cfg.max_len):
            ntg = torch.from_numpy(layout[2])
        sse = float(getattr(self.cfg, "user_sse", 0.0))
        gen = torch.Generator().manual_seed(train_cfg.seed)
        sse_gen = torch.Generator().manual_seed(train_cfg.seed + 2)
        crop_gen = torch.Generator().manual_seed(train_cfg.seed + 3)
        crop = float(self.cfg.crop)
        self._neg_gen = torch.Generator(device=device).manual_seed(train_cfg.seed + 1)
        opt = torch.optim.Adam(self.trained_parameters(), lr=train_cfg.lr, weight_decay=self.cfg.weight_decay)
        bs = train_cfg.batch_size
        n_batches = (len(win) + bs - 1) // bs
        lengths = (win > 0).sum(1)
        norm = None
        n_targets = sum(float(self._targets(win[a:a + 1024], wsg[a:a + 1024],
                                            None if ntg is None else ntg[a:a + 1024])[1].clamp(min=0).sum())
                        for a in range(0, len(win), 1024))
        if self.cfg.bucket:
            # bucketed batches differ in size (short windows together): weigh every target alike
            norm = max(n_targets / max(n_batches, 1), 1.0)

        def step_loss(idx):
            # windows are left-padded: drop the columns that are padding in every window of the
            # batch (positions stay right-aligned, so the model sees the same inputs)
            keep = max(2, int(lengths[idx].max()))
            pr = None
            if prior is not None:
                base, fold, mats = prior
                pr = (base[idx].to(device), [mats[int(f)] for f in fold[idx]])
            us = None
            if wus is not None:
                us = wus[idx]
                if sse > 0:
                    # stochastic shared embeddings (SSE-PT): a window's user is swapped for a
                    # random one with probability `user_sse` (a regulariser of the user table)
                    swap = torch.rand(len(us), generator=sse_gen) < sse
                    us = torch.where(swap, torch.randint(0, self.n_users, (len(us),), generator=sse_gen), us)
                us = us.to(device)
            bw, bs_, bt = win[idx, -keep:], wsg[idx, -keep:], None if wts is None else wts[idx, -keep:]
            if crop > 0:
                kept = crop_mask(bw, crop, crop_gen)
                bw, bs_ = bw * kept, bs_ * kept
                bt = None if bt is None else bt * kept
            return self.train_loss(bw.to(device), bs_.to(device), norm,
                                   None if bt is None else bt.to(device), prior=pr, users=us,
                                   n_tgt=None if ntg is None else ntg[idx])

        return fit_epochs(self, train_cfg, valid_fn, opt, n_batches=n_batches, verbose=verbose,
                          epoch_batches=lambda: _batches(lengths, bs, gen, bucket=self.cfg.bucket),
                          step_loss=step_loss,
                          row_extra={"targets": int(n_targets) if n_targets.is_integer() else round(n_targets, 1)})


class PosterKGSeq(SASRec):
    """The time-aware posterkg model (see the module docstring)."""

    @dataclasses.dataclass
    class Config:
        dim: int = 64
        layers: int = 2
        heads: int = 2
        max_len: int = 200
        dropout: float = 0.2
        attn_dropout: float = -1.0
        inputs: str = "all"
        weight_decay: float = 0.0
        horizon: int = 1
        neutral_target: float = 0.0
        disliked_target: float = 0.0
        disliked_unlikely: float = 0.0     # unlikelihood on disliked / neutral next movies (see SASRec.Config)
        neutral_unlikely: float = 0.0
        label_smoothing: float = 0.0       # see SASRec.Config
        bucket: bool = False
        negatives: int = 0
        bf16_logits: bool = False
        softmax_chunk: int = -1
        mask_seen: bool = False        # see SASRec.Config
        ii_prior: float = 0.0          # EASE as a prior in the logits (see SASRec.Config)
        ii_prior_l2: float = 4000.0
        item_item: float = 0.0         # the collaborative part (see SASRec.Config)
        item_item_l2: float = 0.0
        item_item_grid: list = dataclasses.field(default_factory=lambda: list(ITEM_ITEM_GRID))
        item_item_lambdas: list = dataclasses.field(default_factory=lambda: list(ITEM_ITEM_LAMBDAS))
        item_item_max_movies: int = 20000
        item_item_scale: str = "user"
        item_item_ratio: float = 0.0
        time_bias: bool = False        # time (see SASRec.Config)
        time_input: bool = False
        time_buckets: int = 24
        rating_input: bool = False     # half-star rating embedding per token (see SASRec.Config)
        members: int = 1               # an ensemble of this many seeds (see SASRec.Config)
        item_init: str = "random"      # "svd": id embeddings from the co-rating matrix (see SASRec.Config)
        window_stride: int = 0         # sliding training windows (see SASRec.Config); 0 = chunks
        crop: float = 0.0              # training-time crops of the windows' oldest ratings (see SASRec.Config)
        concepts: bool = True          # movie side: visual concepts (graph `has` edges)
        genres: bool = True            # movie side: MovieLens genres (graph `genre` edges)
        features: list = dataclasses.field(default_factory=list)   # dense: "poster", "text"
        feature_dim: int = 0           # >0: each dense feature reduced to its top principal components
        poster_encoder: str = "efficientnet-lite0"
        text_encoder: str = "minilm"
        short_term: bool = True        # the self-attentive short-term part
        long_term: bool = True         # the running liked-minus-disliked long-term part
        neg_weight: float = 0.5        # disliked movies subtract with this weight (long term)
        id_dropout: float = 0.0        # training only: each step, this share of movies loses its id
        #                                embedding (content parts alone: concepts, genres, features)
        # user_embedding: a learned vector per user added to the long-term part (zero-initialised:
        # training starts from the model without it), as SSE-PT (Wu et al. 2020) gives SASRec a
        # user embedding; user_sse: the probability that a training window's user is swapped for
        # a random one (SSE-PT's stochastic shared embeddings, a regulariser). A user the model
        # was not trained with (index past its table) gets zeros
        user_embedding: bool = False
        user_sse: float = 0.0

    def __init__(self, inputs: ModelInputs, cfg=None):
        super().__init__(inputs, cfg)
        c = self.cfg
        if not (c.short_term or c.long_term):
            raise ValueError("posterkg-seq needs short_term or long_term")
        g = inputs.graph
        self.n_concepts = int(g.sizes.get("concept", 0)) if (g is not None and c.concepts and "has" in g) else 0
        self.n_genres = int(g.sizes.get("genre", 0)) if (g is not None and c.genres and "genre" in g) else 0
        self.concept = nn.Embedding(max(self.n_concepts, 1), c.dim)
        self.genre = nn.Embedding(max(self.n_genres, 1), c.dim)
        nn.init.normal_(self.concept.weight, std=0.02)
        nn.init.normal_(self.genre.weight, std=0.02)
        self.proj = nn.ModuleDict()
        for name in c.features:
            if name not in inputs.features:
                raise ValueError(f"feature {name!r} was not assembled for posterkg-seq")
            raw = torch.from_numpy(inputs.features[name]).float()
            mask = torch.from_numpy(inputs.feature_mask[name])
            # the transform of raw rows into model rows (standardise over the matrix given, then
            # optionally the top principal components of the rows that have the feature, scaled
            # to unit variance); kept (not saved: recomputed from the same inputs at load) so a
            # movie's row can be made later with the same statistics (feature_rows)
            self.register_buffer(f"feat_mean_{name}", raw.mean(0), persistent=False)
            self.register_buffer(f"feat_std_{name}", raw.std(0).clamp(min=1e-6), persistent=False)
            basis, center = torch.zeros(0), torch.zeros(0)
            if c.feature_dim and c.feature_dim < raw.shape[1]:
                z = ((raw - raw.mean(0)) / raw.std(0).clamp(min=1e-6))[mask].double()
                center = z.mean(0)
                _, sv, vt = torch.linalg.svd(z - center, full_matrices=False)
                k = int(c.feature_dim)
                basis = (vt[:k].T / (sv[:k] / max(len(z) - 1, 1) ** 0.5).clamp(min=1e-6)).float()
                center = center.float()
            self.register_buffer(f"feat_basis_{name}", basis, persistent=False)
            self.register_buffer(f"feat_center_{name}", center, persistent=False)
            feat = self.feature_rows(name, raw, mask)
            self.register_buffer(f"feat_{name}", feat)
            self.proj[name] = nn.Linear(feat.shape[1], c.dim, bias=False)
            nn.init.normal_(self.proj[name].weight, std=0.02 / max(feat.shape[1], 1) ** 0.5)
        self.part_gate = nn.ParameterDict({k: nn.Parameter(torch.tensor(1.0))
                                           for k in ["concepts", "genres", *c.features]})
        self.long_map = nn.Linear(c.dim, c.dim)
        self.gate = nn.Linear(2 * c.dim, c.dim)
        if c.user_embedding and not c.long_term:
            raise ValueError("user_embedding is a long-term part: it needs long_term")
        if not 0.0 <= float(c.user_sse) < 1.0:
            raise ValueError(f"user_sse must be in [0, 1), not {c.user_sse}")
        self.user = None
        if c.user_embedding:
            self.user = nn.Embedding(max(self.n_users, 1), c.dim)
            nn.init.zeros_(self.user.weight)

    @property
    def per_user(self) -> bool:
        return self.user is not None

    def _user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """[B, dim] the users' own vectors; zeros for a user index past the table."""
        w = self.user.weight
        known = (users >= 0) & (users < w.shape[0])
        return w[users.clamp(0, w.shape[0] - 1)] * known.unsqueeze(-1).to(w.dtype)

    def feature_rows(self, name: str, raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Model rows of dense feature ``name`` for raw rows ``raw`` (movies without the feature,
        ``~mask``, get zeros), with the statistics computed at init."""
        x = (raw.float() - getattr(self, f"feat_mean_{name}")) / getattr(self, f"feat_std_{name}")
        basis = getattr(self, f"feat_basis_{name}")
        if basis.numel():
            x = (x - getattr(self, f"feat_center_{name}")) @ basis
        x = x.clone()
        x[~mask] = 0.0
        return x

    def _agg(self, graph: Graph, rel: str, n_dst: int, emb: nn.Embedding) -> torch.Tensor:
        r = graph.get(rel)

        def build():
            return row_norm(r.src, r.dst, r.weight, (self.n_movies, n_dst))
        op, op_t = graph.cached(f"seq_{rel}_rownorm", build)
        return spmm(op.to(emb.weight.device), emb.weight, op_t.to(emb.weight.device))

    def movie_table(self, graph: Graph | None = None) -> torch.Tensor:
        graph = graph if graph is not None else self.graph
        x = self.item.weight[1:]
        if self.training and self.cfg.id_dropout > 0:
            keep = torch.rand(x.shape[0], 1, device=x.device) >= self.cfg.id_dropout
            x = x * keep
        if self.n_concepts:
            x = x + self.part_gate["concepts"] * self._agg(graph, "has", self.n_concepts, self.concept)
        if self.n_genres:
            x = x + self.part_gate["genres"] * self._agg(graph, "genre", self.n_genres, self.genre)
        for name, lin in self.proj.items():
            x = x + self.part_gate[name] * lin(getattr(self, f"feat_{name}"))
        return x

    def _parts(self, tok, sgn, table, last_only: bool = False, ts=None, users=None):
        c = self.cfg
        short = self.encode(tok, sgn, table, last_only, ts) if c.short_term else None
        long = None
        if c.long_term:
            full = torch.cat([torch.zeros(1, table.shape[1], device=table.device), table])
            x = full[tok]                                    # [B, L, d]
            liked = ((sgn & 3) == 3).float().unsqueeze(-1)
            disliked = ((sgn & 3) == 1).float().unsqueeze(-1)
            if c.inputs == "positives":
                liked = (tok > 0).float().unsqueeze(-1)
            if last_only:    # the running means at the last position: the means of the window
                mean_l = (x * liked).sum(1, keepdim=True) / liked.sum(1, keepdim=True).clamp(min=1.0)
                mean_d = (x * disliked).sum(1, keepdim=True) / disliked.sum(1, keepdim=True).clamp(min=1.0)
            else:
                mean_l = (x * liked).cumsum(1) / liked.cumsum(1).clamp(min=1.0)
                mean_d = (x * disliked).cumsum(1) / disliked.cumsum(1).clamp(min=1.0)
            long = self.long_map(mean_l - c.neg_weight * mean_d)
            if self.user is not None:
                if users is None:
                    raise ValueError("this model has a vector per user (user_embedding): pass users")
                long = long + self._user_vectors(users.to(long.device)).unsqueeze(1)
        return short, long

    def _fuse(self, short, long):
        if short is None:
            return long, None
        if long is None:
            return short, None
        g = torch.sigmoid(self.gate(torch.cat([short, long], -1)))
        return g * short + (1 - g) * long, g

    def user_states(self, tok, sgn, table, last_only: bool = False, ts=None, users=None) -> torch.Tensor:
        short, long = self._parts(tok, sgn, table, last_only, ts, users)
        return self._fuse(short, long)[0]

    def _part_vectors(self, users: torch.Tensor, history, graph: Graph | None):
        """This member's last-position user vectors split by part: (short [B, d], long [B, d],
        their sum h, the movie table, the mean gate [B]); a part that is off is zeros (gate 1
        with only the short-term part, 0 with only the long-term one)."""
        table = self.movie_table(graph if graph is not None else self.graph)
        tok, sgn, ts = self._batch(history, users.cpu().numpy(), table.device)
        short, long = self._parts(tok, sgn, table, last_only=True, ts=ts, users=users.to(table.device))
        if short is None or long is None:
            h = (short if long is None else long)[:, -1]
            zero = torch.zeros_like(h)
            if long is None:
                return h, zero, h, table, torch.ones(len(users))
            return zero, h, h, table, torch.zeros(len(users))
        h, g = self._fuse(short, long)
        g = g[:, -1]
        return g * short[:, -1], (1 - g) * long[:, -1], h[:, -1], table, g.mean(-1)

    def explain_parts(self, users: torch.Tensor, history, movies: torch.Tensor,
                      graph: Graph | None = None) -> dict[str, torch.Tensor]:
        """Each score of ``movies`` for ``users`` split into its short-term and long-term parts
        (``score = short + long``): [len(users), len(movies)] tensors, plus the mean gate. With
        the collaborative part on, the score is standardised per user: each sequence part is
        taken against the catalogue's mean movie and on the blend's scale, and ``long`` also
        holds the collaborative part (EASE over the user's whole, unordered history: a long-term
        signal; also given alone as ``item_item``), so the two still add up to the score. An
        ensemble's parts are the means of its members' parts (its score is their mean)."""
        members = self._members()
        vecs = [m._part_vectors(users, history, graph) for m in members]
        k = len(vecs)
        user_scale = self._item_item_on() and self.cfg.item_item_scale != "global"
        # ii_prior: EASE's prior over the whole history is a part of the sequence scores
        u_np = users.cpu().numpy()
        prior = sum(m.prior_scores(u_np, history) for m in members) / k if self.prior_w is not None else None
        if user_scale:
            # z(mean_k h_k . v_k) = mean_k (h_k . (v_k - mean v_k)) / std: split over the parts
            # and members exactly, no per-user offset
            seq = sum(h @ t.T for _, _, h, t, _ in vecs) / k
            if prior is not None:
                seq = seq + prior
            std = seq.std(1, keepdim=True).clamp(min=1e-6)
            if prior is not None:
                prior = (prior - prior.mean(1, keepdim=True)) / std
            cols = [(t[movies] - t.mean(0)).T for _, _, _, t, _ in vecs]
        else:
            cols = [t[movies].T for _, _, _, t, _ in vecs]
        out = {"short": sum(s @ c for (s, _, _, _, _), c in zip(vecs, cols)) / k,
               "long": sum(lo @ c for (_, lo, _, _, _), c in zip(vecs, cols)) / k,
               "gate": sum(g for *_, g in vecs) / k}
        if prior is not None:
            # on the long-term side (EASE over the user's whole, unordered history), also alone;
            # in the user-scaled form it is already divided by the standard deviation
            out["prior"] = prior[:, movies]
            out["long"] = out["long"] + (out["prior"] * std if user_scale else out["prior"])
        if user_scale:
            ii = float(self.cfg.item_item) * _standardise(self.item_item_scores(users, history))[:, movies]
            out["short"], out["long"] = out["short"] / std, out["long"] / std + ii
            out["item_item"] = ii
        elif self._item_item_on():
            # raw scores: the sequence parts as they are, EASE's on the long-term side
            ii = float(self.cfg.item_item) * float(self.cfg.item_item_ratio) * self.item_item_scores(users, history)[:, movies]
            out["long"] = out["long"] + ii
            out["item_item"] = ii
        return out
