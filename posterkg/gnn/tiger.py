"""TIGER (Rajput et al. 2023, "Recommender Systems with Generative Retrieval"): a user's history
read as semantic-ID tokens, the next movie *generated* code by code.

**Semantic IDs.** Every movie has an ID of ``D = L + 1`` codes: ``L`` RQ-VAE codes and one
disambiguation code (``posterkg semantic-ids build``; table ``semantic_ids``, one ``version`` per
feature set: ``"poster"`` = poster embedding + genres, ``"text"`` = text embedding + genres).
The model's config names the version (``semantic_ids``); the train stage reads it into
``ModelInputs.semantic_ids`` ([n_movies, D], a row of -1 for a movie without an ID). The IDs are
a buffer of the model (``codes``), so they are saved in its state: a stored model decodes with
the IDs it was trained with, whatever happens to the table later (the table is not read again
by ``load_model``). The code sizes per position (``code_sizes``, from the IDs at build time) are
saved in the model's config.

**Tokens.** Position ``d`` of an ID has its own ``code_sizes[d]`` tokens (token = 3 + offset of
``d`` + code; 0 = padding, 1 = decoder start, 2 = end of history), as in the paper.

**Network** (torch layers written here, T5-like pre-norm blocks with GELU feed-forwards and
``scaled_dot_product_attention``, random init; an encoder-decoder, not a decoder-only model; the
decoder's cross-attention keys/values are projected once per user and shared by its beams): the encoder reads the user's last
``max_len`` liked movies (train positives, rating >= 4, time order: the protocol's order) as
``max_len * D`` code tokens followed by an end-of-history token, with learned absolute
positions; the decoder starts from the start token and emits the next movie's ``D`` codes, one
output head per position. Training: teacher forcing, cross-entropy of each code given the
history and the earlier codes (averaged over the ``D`` positions), over every position of every
user's positive sequence that has at least one earlier positive (``epoch_samples`` > 0 samples
that many such targets per epoch instead, seeded), Adam, early stopping on the harness's valid
NDCG@20 (:class:`~posterkg.gnn.train.EarlyStopping`).

**The causal encoder** (``encoder = "causal"``). With the bidirectional encoder above every
target re-encodes its own history: one encoder pass per target. With ``"causal"`` a token of
the i-th history movie attends only to the tokens of movies 0..i (block-causal, the movie's own
``D`` tokens see each other) and there is no end-of-history token, so the encoder states of a
window's first i movies do not depend on what follows them. Training then reads each user's
liked sequence in windows of ``max_len + 1`` movies (the most recent chunk first, earlier ones
overlapping it by one movie, as SASRec does), runs the encoder once per window, and the decoder
rows of position i (teacher-forced codes of movie i + 1) cross-attend to the tokens of movies
0..i only: every target of the window from one encoder pass, each exactly once per epoch
(``epoch_samples`` does not apply). Scoring reads the last ``max_len`` movies right-aligned
through the same causal encoder and lets the decoder see all of them. As in SASRec, a training
prefix sits where it is in its window (learned absolute positions), not right-aligned.

**One position per history movie** (``history_input = "movies"``, causal encoder only; the
registry's setting). The encoder reads each history movie as one position, the sum of the
embeddings of its ``D`` code tokens (the decoder's token table), instead of ``D`` positions: the
encoder sees movies as units, as SASRec does, while a movie is still only its semantic ID (no
per-movie parameter). ``max_len`` positions instead of ``max_len * D``; plainly causal over them.

**Every rating as history** (``inputs = "all"``, causal encoder only): the history is every
rated movie with an ID, each position adding a rating-sign embedding (as posterkg-seq reads
its inputs); the targets are still the liked movies. ``tie_output``: each ID position's output
head is the transposed embedding table of its codes plus a bias (SASRec-style), instead of a
free linear head. Both off in the registry (tried on valid, docs/tiger.md).

**Decoding** (:mod:`posterkg.gnn.trie`): beam search of width ``beam`` constrained by the prefix
trie of the valid IDs, with the user's known movies (the ``history`` given to :meth:`score`:
train for valid, train + valid for test, every rated movie) cut from the trie's counts, so only
real, unseen movies come out and the beam is not spent on seen ones: with ``beam = 50`` the top
50 after the protocol's exclusions are ranked (at least 20 remain whenever the catalogue has 20
unseen movies with an ID). :meth:`score` puts each generated movie's log-probability (the sum
of its code log-probabilities) at its index and :data:`FLOOR` (finite, below any log-probability)
everywhere else; movies the beam did not reach are tied at the floor.

**Cold start.** A movie nobody rated still has an ID (from its features), so it can be generated.

**Sizes.** Defaults fit ML-1M on 2 CPU cores: dim 64, 2 encoder + 2 decoder layers, 4 heads,
feed-forward 4 x dim, history of 20 movies (80 code tokens with L = 3, or 20 positions with
``history_input = "movies"``), dropout 0.1 (residual branches only), beam 50, ``epoch_samples =
50_000`` targets per epoch (of ~227k on the ML-1M cut; one torch thread: ~0.44 s of CPU per step
of 256 targets, ~85 s of CPU per epoch; a full pass would be ~4.5 epochs; with ``encoder =
"causal"``, the registry's setting, a full pass of ~227k targets takes ~45-70 s). ML-25M/32M on a
GPU (the paper's size; ``[models.tiger]``): ``dim = 128, layers = 4, heads = 8, ff = 1024, max_len
= 20, encoder = "causal", score_batch = 1024`` with ``[gnn] device = "cuda", batch_size = 256``
(windows), ``lr = 0.001``; IDs of 3 x 256 codes (docs/tiger.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from posterkg.gnn.base import FitInfo, ModelInputs, Recommender
from posterkg.gnn.trie import CodeTrie, beam_search
from posterkg.gnn.sequential import rating_codes, window_spans
from posterkg.ratings import POSITIVE_MIN

PAD, BOS, SEP = 0, 1, 2
SPECIALS = 3
FLOOR = -1e9       # the score of movies the beam did not generate (finite: callers mask with -inf)


class Attention(nn.Module):
    """Multi-head attention with the keys/values computed separately (:meth:`kv`), so a
    decoder's cross-attention projects the encoder memory once per user, not once per beam."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.p = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, S, d = x.shape
        k, v = self.kv_proj(x).view(B, S, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return k, v                                                     # [B, h, S, hd] each

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                groups: int = 1) -> torch.Tensor:
        """``x`` [B * groups, Lq, d] attends to ``k``/``v`` of B rows: the ``groups`` query rows
        of one memory row (the beams of one user) are one longer query (exact: queries do not
        interact)."""
        N, Lq, d = x.shape
        B = N // groups
        q = self.q(x).view(B, groups, Lq, self.heads, d // self.heads).permute(0, 3, 1, 2, 4)
        q = q.reshape(B, self.heads, groups * Lq, d // self.heads)
        # no dropout on the attention weights (only on the residual branches): the CPU kernel
        # without it is several times faster
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        a = a.view(B, self.heads, groups, Lq, d // self.heads).permute(0, 2, 3, 1, 4).reshape(N, Lq, d)
        return self.out(a)


class DecoderBlock(nn.Module):
    """Pre-norm decoder block: causal self-attention, cross-attention to the encoder memory,
    GELU feed-forward."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, dropout)
        self.cross = Attention(dim, heads, dropout)
        self.ff = nn.Sequential(nn.Linear(dim, ff), nn.GELU(), nn.Linear(ff, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, y, causal, mem_kv, mem_mask, groups: int):
        h = self.ln1(y)
        k, v = self.self_attn.kv(h)
        y = y + self.drop(self.self_attn(h, k, v, causal))
        y = y + self.drop(self.cross(self.ln2(y), *mem_kv, mem_mask, groups))
        return y + self.drop(self.ff(self.ln3(y)))


class EncoderBlock(nn.Module):
    """Pre-norm encoder block: bidirectional self-attention over the history tokens, feed-forward."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.ff = nn.Sequential(nn.Linear(dim, ff), nn.GELU(), nn.Linear(ff, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, *self.attn.kv(h), mask))
        return x + self.drop(self.ff(self.ln2(x)))


class TIGER(Recommender):
    trainer = "fit"

    @dataclasses.dataclass
    class Config:
        semantic_ids: str = "poster"   # version in the semantic_ids table
        dim: int = 64
        layers: int = 2                # encoder layers; the decoder has as many
        heads: int = 4
        ff: int = 0                    # feed-forward width; 0 = 4 * dim
        max_len: int = 20              # history movies read (each D code tokens)
        encoder: str = "full"          # "full": bidirectional over one target's history, one
        #                                target per row; "causal": block-causal over the movies of a
        #                                window, so one encoder pass trains every position of it
        history_input: str = "codes"   # "codes": every history movie is its D code tokens (L * D
        #                                encoder positions); "movies": one position per movie, the sum
        #                                of its D code embeddings (L positions; encoder "causal" only)
        id_input: bool = False         # history_input "movies" only: each history position adds a
        #                                learned embedding of the movie itself to its code embeddings
        #                                (a hybrid input, as SASRec's item table); the output is still
        #                                the generated semantic ID
        inputs: str = "positives"     # history read: "positives" (liked movies) | "all" (every rated
        #                                movie with a rating-sign embedding, as posterkg-seq; encoder
        #                                "causal" only); the targets are liked movies either way
        dropout: float = 0.1
        beam: int = 50
        tie_output: bool = False       # the output head of ID position d is the transposed token
        #                                embedding of its codes (plus a bias), as SASRec scores items
        #                                by their input embeddings; False: a free linear head per position
        epoch_samples: int = 50_000    # training targets sampled per epoch; 0 = every position
        #                                (encoder "causal": every epoch is every position)
        weight_decay: float = 0.0
        label_smoothing: float = 0.0   # each code's cross-entropy smoothed towards the uniform
        #                                (torch's cross_entropy(label_smoothing=)); 0 = off
        # code_softmax: what each ID position's softmax runs over, in training and in decoding.
        # "full" (the paper's): every code of the position; "trie": the codes that extend the
        # (teacher-forced / beam) prefix to a real movie, so a movie's probability is a
        # distribution over movies and decoding renormalises over the same codes; "unseen": the
        # trie's codes that still lead to a movie the user has not rated in training (not one of
        # the window's other movies, as posterkg-seq's mask_seen leaves them out of its softmax),
        # decoded as "trie" (the seen movies are cut from the beam either way)
        code_softmax: str = "full"
        score_batch: int = 256         # users per beam-search batch
        code_sizes: list = dataclasses.field(default_factory=list)   # per ID position; from the IDs

    def __init__(self, inputs: ModelInputs, cfg=None):
        super().__init__(inputs, cfg)
        c = self.cfg
        if c.dim % c.heads:
            raise ValueError(f"tiger: dim {c.dim} is not divisible by heads {c.heads}")
        if c.encoder not in ("full", "causal"):
            raise ValueError(f"tiger: encoder must be 'full' or 'causal', not {c.encoder!r}")
        if c.history_input not in ("codes", "movies"):
            raise ValueError(f"tiger: history_input must be 'codes' or 'movies', not {c.history_input!r}")
        if c.history_input == "movies" and c.encoder != "causal":
            raise ValueError("tiger: history_input = 'movies' needs encoder = 'causal'")
        if c.id_input and c.history_input != "movies":
            raise ValueError("tiger: id_input needs history_input = 'movies'")
        if c.inputs not in ("positives", "all"):
            raise ValueError(f"tiger: inputs must be 'positives' or 'all', not {c.inputs!r}")
        if not 0.0 <= float(c.label_smoothing) < 1.0:
            raise ValueError(f"tiger: label_smoothing must be in [0, 1), not {c.label_smoothing}")
        if c.inputs == "all" and c.encoder != "causal":
            raise ValueError("tiger: inputs = 'all' needs encoder = 'causal'")
        if c.code_softmax not in ("full", "trie", "unseen"):
            raise ValueError(f"tiger: code_softmax must be 'full', 'trie' or 'unseen', not {c.code_softmax!r}")
        if c.code_softmax == "unseen" and c.encoder != "causal":
            raise ValueError("tiger: code_softmax = 'unseen' needs encoder = 'causal' (the window's movies); "
                             "with encoder = 'full' set code_softmax = 'trie' or 'full'")
        if c.code_softmax != "full" and float(c.label_smoothing) > 0:
            raise ValueError(f"tiger: label_smoothing goes with code_softmax = 'full' only, not {c.code_softmax!r} "
                             "(set code_softmax = 'full' or label_smoothing = 0)")
        ids = inputs.semantic_ids
        sizes = [int(s) for s in c.code_sizes]
        self._misfit = False
        if ids is not None:
            ids = np.asarray(ids, np.int64)
            if ids.ndim != 2 or ids.shape[0] != self.n_movies:
                raise ValueError(f"semantic IDs must be [{self.n_movies}, D], not {list(ids.shape)}")
            has = (ids >= 0).all(1)
            if not sizes:
                if not has.any():
                    raise ValueError(f"no movie has a semantic ID of version {c.semantic_ids!r}")
                sizes = (ids[has].max(0) + 1).tolist()
            elif len(sizes) != ids.shape[1] or (has.any() and bool((ids[has].max(0) >= np.array(sizes)).any())):
                # a stored model's sizes with other IDs in the inputs: the state's IDs replace them
                self._misfit, ids = True, None
        elif not sizes:
            raise ValueError("tiger needs semantic IDs (ModelInputs.semantic_ids): run "
                             f"`posterkg semantic-ids build --version {c.semantic_ids}` first")
        self.cfg = dataclasses.replace(c, code_sizes=[int(s) for s in sizes])
        D = len(sizes)
        self.D = D
        self.unit = D if c.history_input == "codes" else 1     # encoder positions per history movie
        codes = np.full((self.n_movies, D), -1, np.int64) if ids is None else ids.copy()
        self.register_buffer("codes", torch.from_numpy(codes))
        self._starts = tuple(SPECIALS + sum(sizes[:d]) for d in range(D))      # first token of position d
        self.register_buffer("offset", torch.tensor(self._starts), persistent=False)
        dim, ff = c.dim, (c.ff or 4 * c.dim)
        self._id_start = SPECIALS + sum(sizes)                  # id_input: movie i is token _id_start + i
        self.tok = nn.Embedding(self._id_start + (self.n_movies if c.id_input else 0), dim, padding_idx=PAD)
        self.enc_pos = nn.Embedding(c.max_len * D + 1, dim)
        if c.inputs == "all":
            self.sign = nn.Embedding(4, dim, padding_idx=0)    # 1 disliked, 2 neutral, 3 liked
        self.dec_pos = nn.Embedding(D, dim)
        self.encoder = nn.ModuleList(EncoderBlock(dim, c.heads, ff, c.dropout) for _ in range(c.layers))
        self.enc_norm = nn.LayerNorm(dim)
        self.decoder = nn.ModuleList(DecoderBlock(dim, c.heads, ff, c.dropout) for _ in range(c.layers))
        self.dec_norm = nn.LayerNorm(dim)
        if c.tie_output:
            self.out_bias = nn.ParameterList(nn.Parameter(torch.zeros(k)) for k in sizes)
        else:
            self.out = nn.ModuleList(nn.Linear(dim, k) for k in sizes)
        self.drop = nn.Dropout(c.dropout)
        for emb in (self.tok, self.enc_pos, self.dec_pos):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.tok.weight[PAD].zero_()
        self.register_buffer("causal", torch.zeros(D, D).masked_fill(~torch.tril(torch.ones(D, D, dtype=torch.bool)),
                                                                     float("-inf")), persistent=False)
        self._trie: CodeTrie | None = None

    # -- IDs -----------------------------------------------------------------------------------
    def load_state_dict(self, *args, **kwargs):
        self._trie = None
        return super().load_state_dict(*args, **kwargs)

    def trie(self) -> CodeTrie:
        if self._trie is None:
            self._trie = CodeTrie(self.codes.cpu().numpy(), self.cfg.code_sizes)
        return self._trie

    @torch.no_grad()
    def movie_vectors(self) -> torch.Tensor:
        """[n_movies, dim]: the mean embedding of a movie's ID tokens (zero without an ID)."""
        has = (self.codes >= 0).all(1)
        tok = torch.where(has.unsqueeze(1), self.codes + self.offset, torch.zeros_like(self.codes))
        return (self.tok(tok).mean(1) * has.unsqueeze(1)).detach()

    # -- network -------------------------------------------------------------------------------
    def _right_aligned(self, values: np.ndarray, ends: np.ndarray, starts: np.ndarray) -> torch.Tensor:
        """[B, max_len]: the last ``max_len`` of ``values[starts:ends]`` (all >= 1) per row,
        left-padded with 0."""
        L = self.cfg.max_len
        idx = ends[:, None] - L + np.arange(L)[None, :]
        got = values[np.clip(idx, 0, max(len(values) - 1, 0))] if len(values) else np.zeros(idx.shape, np.int64)
        return torch.from_numpy(np.where(idx >= starts[:, None], got, 0)).to(self.codes.device)

    def history_tokens(self, flat: np.ndarray, ends: np.ndarray, starts: np.ndarray) -> torch.Tensor:
        """Encoder tokens [B, max_len * D (+ 1)] for rows whose history is ``flat[starts:ends]``
        (movie indices with an ID, time order): the last ``max_len`` movies' codes, left-padded,
        then (encoder "full" only) the end-of-history token."""
        tok = self.window_tokens(self._right_aligned(flat + 1, ends, starts))
        if self.cfg.encoder == "causal":
            return tok
        return torch.cat([tok, torch.full((len(ends), 1), SEP, dtype=torch.long, device=tok.device)], 1)

    def window_tokens(self, win: torch.Tensor) -> torch.Tensor:
        """Encoder tokens of windows ``win`` [B, L] (movie index + 1, 0 = padding): [B, L * D]
        (``history_input = "codes"``) or [B, L, D], one row of D code tokens per encoder position
        (``"movies"``)."""
        codes = self.codes[(win - 1).clamp(min=0)] + self.offset                 # [B, L, D]
        if self.cfg.id_input:                                                    # [B, L, D + 1]
            codes = torch.cat([codes, (self._id_start + win - 1).unsqueeze(-1)], -1)
        codes = torch.where((win > 0).unsqueeze(-1), codes, torch.zeros_like(codes))
        return codes if self.unit == 1 else codes.flatten(1)

    @staticmethod
    def _padding(tokens: torch.Tensor) -> torch.Tensor:
        """[B, S]: the encoder positions that are padding."""
        return tokens == PAD if tokens.dim() == 2 else tokens[..., 0] == PAD

    def _prefix_mask(self, tokens: torch.Tensor, row_movie: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
        """Additive attention mask [B, 1, R, S]: row r sees the non-padding ``tokens`` of movies
        0..``row_movie[r]``, and every key where ``free`` ([B or 1, R, S], broadcast) is set."""
        movie = torch.arange(tokens.shape[1], device=tokens.device) // self.unit
        allowed = (movie[None, :] <= row_movie[:, None]).unsqueeze(0) & ~self._padding(tokens)[:, None, :]
        allowed = allowed | free
        return torch.zeros(allowed.shape, device=tokens.device).masked_fill(~allowed, float("-inf"))[:, None]

    def _encoder_states(self, tokens: torch.Tensor, sgn: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output [B, S, dim] of ``tokens`` [B, S]. Encoder "full": every token sees every
        non-padding token; "causal": a token of the i-th movie sees the non-padding tokens of
        movies 0..i only (and itself, so a padding row is never empty), so the states of a
        window's first i movies are those of that prefix alone at the same positions (as in
        SASRec, a prefix sits where it is in the window in training and right-aligned when
        scoring). ``sgn`` [B, movies] (``inputs = "all"``): each movie's rating sign + 2, added
        as an embedding to its positions."""
        B, S = tokens.shape[:2]
        emb = self.tok(tokens) if tokens.dim() == 2 else self.tok(tokens).sum(2)   # PAD embeds to 0
        if self.cfg.inputs == "all":
            if sgn is None:
                raise ValueError("tiger: inputs = 'all' reads every history movie's rating sign")
            emb = emb + self.sign(sgn.repeat_interleave(self.unit, dim=1))
        x = self.drop(emb + self.enc_pos.weight[-S:].unsqueeze(0))
        if self.cfg.encoder == "causal":
            eye = torch.eye(S, dtype=torch.bool, device=tokens.device).unsqueeze(0)
            mask = self._prefix_mask(tokens, torch.arange(S, device=tokens.device) // self.unit, eye)   # [B, 1, S, S]
        else:
            pad = self._padding(tokens)
            mask = torch.zeros(pad.shape, device=tokens.device).masked_fill(pad, float("-inf"))
            mask = mask[:, None, None, :]                 # additive; the end token is never masked
        for blk in self.encoder:
            x = blk(x, mask)
        return self.enc_norm(x)

    def encode(self, tokens: torch.Tensor, sgn: torch.Tensor | None = None) -> tuple[list, torch.Tensor]:
        """The encoder memory of history ``tokens`` [B, S] (``sgn``: see :meth:`_encoder_states`),
        as each decoder layer's cross-attention keys/values, and its additive mask [B, 1, 1, S]
        (-inf at padding; a row with no history at all, possible only without the end token, sees
        every position)."""
        x = self._encoder_states(tokens, sgn)
        pad = self._padding(tokens)
        pad = pad & ~pad.all(1, keepdim=True)
        mask = torch.zeros(pad.shape, device=tokens.device).masked_fill(pad, float("-inf"))
        return [blk.cross.kv(x) for blk in self.decoder], mask[:, None, None, :]

    def decode(self, memory: list, mask: torch.Tensor, prefix: torch.Tensor, groups: int = 1) -> torch.Tensor:
        """Decoder states [N, d + 1, dim] after the start token and the ``d`` codes of ``prefix``
        [N, d]; ``groups`` consecutive rows share one memory row (the beams of one user)."""
        N, d = prefix.shape
        inp = torch.cat([torch.full((N, 1), BOS, dtype=torch.long, device=prefix.device),
                         prefix + self.offset[:d]], 1)
        y = self.drop(self.tok(inp) + self.dec_pos.weight[:d + 1].unsqueeze(0))
        causal = self.causal[:d + 1, :d + 1]
        for blk, kv in zip(self.decoder, memory):
            y = blk(y, causal, kv, mask, groups)
        return self.dec_norm(y)

    def logits(self, h: torch.Tensor, d: int) -> torch.Tensor:
        """Logits [..., code_sizes[d]] of ID position ``d`` from decoder states ``h`` [..., dim]."""
        if not self.cfg.tie_output:
            return self.out[d](h)
        start = self._starts[d]
        return h @ self.tok.weight[start:start + self.cfg.code_sizes[d]].T + self.out_bias[d]

    def train_loss(self, tokens: torch.Tensor, target: torch.Tensor,
                   movies: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced cross-entropy of the target IDs [B, D] given encoder ``tokens``
        (``movies``: the targets' movie indices, needed by ``code_softmax = "trie"``)."""
        memory, mask = self.encode(tokens)
        h = self.decode(memory, mask, target[:, :-1])
        return self._code_loss(h, target, movies)

    def train_loss_windows(self, win: torch.Tensor, wsg: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder "causal": teacher-forced cross-entropy of every position of windows ``win``
        [B, L + 1] (movie index + 1, 0 = padding, left): the encoder reads movies 0..L-1 once,
        and the decoder rows of position i (the ID of movie i + 1) cross-attend to the tokens
        of movies 0..i only. Averaged over the batch's targets (positions i with a movie at i
        and at i + 1; with ``inputs = "all"`` and the windows' signs ``wsg`` (+ 2), only where
        movie i + 1 is liked)."""
        B, W1 = win.shape
        L, D = W1 - 1, self.D
        tokens = self.window_tokens(win[:, :-1])                        # [B, L * D] or [B, L, D]
        x = self._encoder_states(tokens, None if wsg is None else wsg[:, :-1])
        memory = [blk.cross.kv(x) for blk in self.decoder]
        valid = (win[:, :-1] > 0) & (win[:, 1:] > 0)                               # [B, L]
        if self.cfg.inputs == "all":
            valid = valid & (wsg[:, 1:] == 3)
        # rows that are not targets see every key (no NaN; their loss is dropped)
        mask = self._prefix_mask(tokens, torch.arange(L, device=win.device), ~valid.unsqueeze(-1))
        mask = mask.repeat_interleave(D, dim=2)                           # [B, 1, L * D, L * unit]
        nxt = (win[:, 1:] - 1).clamp(min=0)                                        # [B, L] next movies
        target = self.codes[nxt]                                                   # [B, L, D]
        h = self.decode(memory, mask, target[..., :-1].reshape(B * L, D - 1), groups=L)   # [B * L, D, dim]
        keep = valid.reshape(-1)
        if not bool(keep.any()):
            return h.sum() * 0.0
        movies = nxt.reshape(-1)[keep]
        others = None
        if self.cfg.code_softmax == "unseen":
            # each target's window movies other than itself (-1 = none), [targets, L + 1]
            others = (win - 1).unsqueeze(1).expand(B, L, L + 1).clone()
            i = torch.arange(L, device=win.device)
            others[:, i, i + 1] = -1
            others = others.reshape(B * L, L + 1)[keep]
        return self._code_loss(h[keep], target.reshape(B * L, D)[keep], movies, others)

    def code_allowed(self, d: int, movies: torch.Tensor, others: torch.Tensor | None = None) -> torch.Tensor:
        """[N, code_sizes[d]] bool: the codes of ID position ``d`` that the softmax of target
        ``movies`` [N] runs over under ``code_softmax`` "trie" / "unseen": the children of the
        target's own depth-``d`` prefix in the trie, less (``others`` [N, W] movie indices, -1 =
        none) the children whose every movie is among the row's ``others``. The target's own code
        is always allowed."""
        t = self.trie().tensors(movies.device)
        parent = t["node_of"][d][movies]                                         # [N]
        kids = t["child"][d][parent]                                             # [N, K]
        ok = kids >= 0
        if others is not None:
            o = others.clamp(min=0)
            under = (others >= 0) & (t["node_of"][d][o] == parent.unsqueeze(1))   # same prefix
            n_out = torch.zeros(kids.shape, dtype=torch.long, device=kids.device)
            n_out.scatter_add_(1, self.codes[o, d].clamp(min=0), under.long())
            ok = ok & (t["counts"][d + 1][kids.clamp(min=0)] - n_out > 0)
        return ok

    def _code_loss(self, h: torch.Tensor, target: torch.Tensor, movies: torch.Tensor | None = None,
                   others: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over the D ID positions of the (label-smoothed) cross-entropy of decoder states
        ``h`` [N, D, dim] against ``target`` codes [N, D]; with ``code_softmax`` "trie" /
        "unseen" each softmax runs over :meth:`code_allowed` of the target ``movies`` [N] (and
        their window's ``others``)."""
        ls = float(self.cfg.label_smoothing)
        masked = self.cfg.code_softmax != "full"
        if masked and movies is None:
            raise ValueError("tiger: code_softmax needs the target movies")
        total = 0.0
        for d in range(self.D):
            z = self.logits(h[:, d], d)
            if masked:
                z = z.masked_fill(~self.code_allowed(d, movies, others), float("-inf"))
            total = total + F.cross_entropy(z, target[:, d], label_smoothing=ls)
        return total / self.D

    # -- scoring -------------------------------------------------------------------------------
    def _user_rows(self, users: np.ndarray, history):
        """(flat history movies with an ID: positives, or every rated one with ``inputs = "all"``;
        their rating signs + 2; starts, ends, seen rows, seen movies) of ``users``."""
        has = (self.codes >= 0).all(1).cpu().numpy()
        L = self.cfg.max_len
        flat, sg, starts, ends, rows, cols = [], [], [], [], [], []
        n = 0
        for i, u in enumerate(users):
            if history is None:
                starts.append(n)
                ends.append(n)
                continue
            a, b = history.indptr[u], history.indptr[u + 1]
            m, r = history.movies[a:b], history.ratings[a:b]
            read = has[m] if self.cfg.inputs == "all" else (r >= POSITIVE_MIN) & has[m]
            keep = m[read][-L:]
            flat.append(keep)
            sg.append(rating_codes(r[read][-L:]))
            starts.append(n)
            n += len(keep)
            ends.append(n)
            rows.append(np.full(len(m), i, np.int64))
            cols.append(m)
        cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros(0, np.int64)   # noqa: E731
        return (cat(flat), cat(sg), np.array(starts, np.int64), np.array(ends, np.int64), cat(rows),
                cat(cols))

    @torch.no_grad()
    def generate(self, users: torch.Tensor, history=None,
                 candidates: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(movies [B, beam], log-probabilities [B, beam]) generated for ``users``, best first;
        -1 / -inf where fewer than ``beam`` unseen movies have an ID. ``candidates`` (movie
        indices) restricts what may come out (the cold-start protocol ranks only its cold
        movies; nothing of the history is excluded among them then)."""
        device = self.codes.device
        trie = self.trie()
        u = users.cpu().numpy()
        flat, sg, starts, ends, rows, cols = self._user_rows(u, history)
        sgn = self._right_aligned(sg, ends, starts) if self.cfg.inputs == "all" else None
        memory, mask = self.encode(self.history_tokens(flat, ends, starts), sgn)

        def step(prefix: torch.Tensor) -> torch.Tensor:
            b, W, d = prefix.shape
            h = self.decode(memory, mask, prefix.reshape(b * W, d), groups=W)[:, -1]
            return torch.log_softmax(self.logits(h, d), -1).view(b, W, -1)

        allowed = None
        if candidates is not None:
            allowed = np.zeros(self.n_movies, bool)
            allowed[np.asarray(candidates, np.int64)] = True
            rows, cols = rows[:0], cols[:0]
        # "unseen" decodes as "trie": the model's distribution over every movie, seen ones cut
        # without renormalising (as posterkg-seq ranks its logits among unseen movies);
        # renormalising over the unseen codes (beam_search's "left") lifted movies of mostly-seen
        # prefixes and scored far worse on valid (docs/tiger.md)
        renorm = None if self.cfg.code_softmax == "full" else "trie"
        return beam_search(step, trie, len(u), self.cfg.beam, (rows, cols), device=device, allowed=allowed,
                           renorm=renorm)

    @torch.no_grad()
    def score(self, users: torch.Tensor, history=None, candidates: np.ndarray | None = None) -> torch.Tensor:
        """[len(users), n_movies]: the generated movies' log-probabilities, :data:`FLOOR`
        elsewhere (``candidates``: see :meth:`generate`)."""
        device = self.codes.device
        out = torch.full((len(users), self.n_movies), FLOOR, device=device)
        bs = max(1, int(self.cfg.score_batch))
        for start in range(0, len(users), bs):
            movies, logp = self.generate(users[start:start + bs], history, candidates)
            ok = movies >= 0
            r = torch.arange(movies.shape[0], device=device).unsqueeze(1).expand_as(movies)
            out[start + r[ok], movies[ok]] = logp[ok]
        return out

    # -- training ------------------------------------------------------------------------------
    def train_sequences(self, history) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(flat history movies with an ID in time order: the liked ones, or every rated one with
        ``inputs = "all"``; their rating signs + 2; each element's user start; target positions:
        liked elements with at least one earlier element of the same user)."""
        has = (self.codes >= 0).all(1).cpu().numpy()
        liked = history.ratings >= POSITIVE_MIN
        keep = has[history.movies] if self.cfg.inputs == "all" else liked & has[history.movies]
        flat = history.movies[keep].astype(np.int64)
        sg = rating_codes(history.ratings[keep])
        users = history.users[keep]
        first = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=history.n_users))])[:-1]
        starts = first[users].astype(np.int64)
        targets = np.flatnonzero((np.arange(len(flat)) > starts) & (sg == 3))
        return flat, sg, starts, targets

    def train_windows(self, flat: np.ndarray, starts: np.ndarray) -> torch.Tensor:
        """Encoder "causal": windows [N, max_len + 1] (movie index + 1, 0 = padding, left) of
        every user's history sequence ``flat`` (``starts``: each element's user start), the most
        recent chunk first, then earlier ones overlapping it by one movie, so every element with
        an earlier one is in the window's last L positions exactly once (a target when liked).
        Any per-element array >= 0 windows the same way (its value + 1): the signs' windows are
        ``train_windows(sg - 1, starts)``."""
        L = self.cfg.max_len
        bounds = np.unique(starts)
        ends = np.append(bounds[1:], len(flat))
        wins = []
        for a, b in zip(bounds, ends):
            for start, end in window_spans(int(b - a), L):
                w = np.zeros(L + 1, np.int64)
                w[L + 1 - (end - start):] = flat[a + start:a + end] + 1
                wins.append(w)
        return torch.from_numpy(np.stack(wins)) if wins else torch.zeros((0, L + 1), dtype=torch.long)

    def fit(self, inputs: ModelInputs, train_cfg, valid_fn, verbose: bool = False) -> FitInfo:
        from posterkg.gnn.train import fit_epochs

        if self._misfit:
            raise ValueError("the semantic IDs do not fit this tiger config's code_sizes (drop code_sizes "
                             "to size the model from the IDs)")
        device = self.codes.device
        flat, sg, starts, targets = self.train_sequences(inputs.data.history("valid"))
        if not len(targets):
            raise ValueError("tiger: no user has two liked train movies with semantic IDs")
        rng = np.random.default_rng(train_cfg.seed)
        opt = torch.optim.Adam(self.parameters(), lr=train_cfg.lr, weight_decay=self.cfg.weight_decay)
        bs = train_cfg.batch_size
        if self.cfg.encoder == "causal":
            wins = self.train_windows(flat, starts).to(device)
            wsg = self.train_windows(sg - 1, starts).to(device) if self.cfg.inputs == "all" else None
            n_win = len(wins)
            n_batches = (n_win + bs - 1) // bs

            def epoch_batches():
                perm = torch.from_numpy(rng.permutation(n_win)).to(device)
                for start in range(0, n_win, bs):
                    g = perm[start:start + bs]
                    yield wins[g], (None if wsg is None else wsg[g])

            return fit_epochs(self, train_cfg, valid_fn, opt, n_batches=n_batches, verbose=verbose,
                              epoch_batches=epoch_batches, step_loss=lambda b: self.train_loss_windows(*b),
                              row_extra={"targets": len(targets), "windows": n_win})
        n_ep = len(targets) if not self.cfg.epoch_samples else min(len(targets), int(self.cfg.epoch_samples))
        n_batches = (n_ep + bs - 1) // bs
        codes = self.codes.cpu()

        def epoch_batches():
            sel = rng.permutation(targets)[:n_ep]
            return (sel[start:start + bs] for start in range(0, n_ep, bs))

        def step_loss(g):
            tokens = self.history_tokens(flat, g, starts[g])
            movies = torch.from_numpy(flat[g])
            return self.train_loss(tokens, codes[movies].to(device), movies.to(device))

        return fit_epochs(self, train_cfg, valid_fn, opt, n_batches=n_batches, verbose=verbose,
                          epoch_batches=epoch_batches, step_loss=step_loss, row_extra={"targets": n_ep})
