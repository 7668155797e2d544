"""Poster image encoders (EfficientNet-Lite0 from the wheels, tiny random CLIP/SigLIP, pixels),
the poster_embeddings / text_embeddings tables, resume after kill -9, load_features."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ML1M
from posterkg.errors import ConfigError, InputError
from posterkg.store import open_store

POSTERS = ML1M / "posters"

# Computed once (2026-12-01, CPU torch 2.13, Pillow 13) with the upstream preprocessing: the first
# 8 pooled feature values, the L2 norm of the 1280-d vector and the top-5 ImageNet classes.
REFERENCE = {
    1: {"head": [0.00673, 0.0, 0.0, 0.0, 0.0, 0.05784, 0.0, 0.01365], "norm": 17.3617,
        "top5": [917, 865, 611, 476, 800], "p_top": 0.9437},     # Toy Story
    2: {"head": [0.01428, 0.34806, 0.0, 0.03962, 0.06584, 0.70037, 0.15449, 1.28072], "norm": 18.2208,
        "top5": [917, 611, 921, 865, 509], "p_top": 0.9772},     # Jumanji
}


def _need_posters():
    if not (POSTERS / "1.jpg").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the real ML-1M posters are missing at {POSTERS}")
        pytest.skip(f"real ML-1M posters not found at {POSTERS} (set POSTERKG_SHARED)")


def _poster(mid: int) -> Image.Image:
    return Image.open(POSTERS / f"{mid}.jpg")


@pytest.fixture(scope="module")
def effnet():
    from posterkg.embed.image import load_image_encoder

    return load_image_encoder("efficientnet-lite0", device="cpu")


# -- EfficientNet-Lite0 -----------------------------------------------------------------------------

def test_preprocessing_is_the_upstream_eval_definition():
    from posterkg.embed.image.efficientnet import preprocess

    # 127 grey -> 0, 255 -> 1, 0 -> -127/128: mean 127, std 128
    for v, want in ((127, 0.0), (255, 1.0), (0, -127 / 128)):
        x = preprocess(Image.new("RGB", (185, 278), (v, v, v)))
        assert x.shape == (224, 224, 3) and x.dtype == np.float32
        np.testing.assert_allclose(x, want, atol=1e-6)
    # centre crop of side int(224/256 * 185) = 161 at offsets ((185-161)+1)//2 = 12, ((278-161)+1)//2 = 59
    img = np.zeros((278, 185, 3), np.uint8)
    img[59:59 + 161, 12:12 + 161] = 255
    x = preprocess(Image.fromarray(img))
    np.testing.assert_allclose(x, 1.0, atol=1e-6)          # exactly the white square, nothing else
    img2 = img.copy()
    img2[59, 12:173] = 0                                    # one black row at the crop's top edge
    assert preprocess(Image.fromarray(img2))[0].mean() < 0.9
    img3 = img.copy()
    img3[58, :] = 0                                         # one row just outside: no effect
    np.testing.assert_allclose(preprocess(Image.fromarray(img3)), 1.0, atol=1e-6)
    full = preprocess(Image.fromarray(img), crop="full")    # the -full variant sees the black border
    assert full.min() < -0.9


def test_efficientnet_matches_the_stored_reference(effnet):
    _need_posters()
    assert (effnet.name, effnet.dim, effnet.device) == ("efficientnet-lite0", 1280, "cpu")
    feats, logits = effnet.forward_all(effnet.prepare([_poster(1), _poster(2)]))
    probs = effnet.classify([_poster(1), _poster(2)])
    for i, mid in enumerate((1, 2)):
        ref = REFERENCE[mid]
        np.testing.assert_allclose(feats[i, :8], ref["head"], atol=2e-3)
        assert abs(np.linalg.norm(feats[i]) - ref["norm"]) < 0.02
        top = np.argsort(-probs[i])[:5]
        assert top[:3].tolist() == ref["top5"][:3] and set(top.tolist()) == set(ref["top5"])
        assert abs(probs[i, top[0]] - ref["p_top"]) < 0.005
        np.testing.assert_allclose(probs[i].sum(), 1.0, atol=1e-5)
    assert int(np.argmax(logits[0])) == 917   # Toy Story is a "comic book" for ImageNet
    # encode() is the pooled features; batching does not change a poster's vector
    np.testing.assert_allclose(effnet.encode([_poster(1), _poster(2)]), feats, atol=1e-5)
    np.testing.assert_allclose(effnet.encode([_poster(2)])[0], feats[1], atol=1e-4)
    assert effnet.encode([]).shape == (0, 1280)


def test_full_variant_is_a_different_encoder():
    _need_posters()
    from posterkg.embed.image import encoder_name, load_image_encoder

    assert encoder_name("efficientnet") == "efficientnet-lite0"
    full = load_image_encoder("efficientnet-lite0-full", device="cpu")
    assert full.name == "efficientnet-lite0-full"
    assert int(np.argmax(full.classify([_poster(1)])[0])) == 917


def test_names_and_errors(tmp_path):
    from posterkg.embed.image import encoder_name, load_image_encoder, pick_device

    assert encoder_name("pixels") == "pixels-v1"
    assert encoder_name(f"clip:{tmp_path}") == f"clip:{tmp_path.resolve()}"
    assert encoder_name("siglip:google/siglip-base-patch16-224") == "siglip:google/siglip-base-patch16-224"
    for bad in ("resnet", "clip:", "clip:./nowhere", ""):
        with pytest.raises(ConfigError):
            encoder_name(bad)
    with pytest.raises(ConfigError):
        load_image_encoder("pixels", fancy=1)
    assert pick_device("cpu") == "cpu"
    with pytest.raises(ConfigError):
        pick_device("tpu")


# -- CLIP / SigLIP through transformers (tiny random models built here, never downloaded) -----------

@pytest.fixture(scope="module")
def tiny_towers(tmp_path_factory):
    import torch
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    root = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    text = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=32)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    clip.save_pretrained(root / "clip")
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    siglip = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    siglip.save_pretrained(root / "siglip")
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "siglip")
    return {"clip": (root / "clip", clip, 16), "siglip": (root / "siglip", siglip, 32)}


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (60, 40, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 256, (90, 61, 3), dtype=np.uint8)).convert("L")]


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hf_vision_towers_equal_the_full_models_image_features(tiny_towers, kind):
    import torch
    from posterkg.embed.image import load_image_encoder

    path, full, dim = tiny_towers[kind]
    enc = load_image_encoder(f"{kind}:{path}", device="cpu")
    assert (enc.name, enc.dim) == (f"{kind}:{path.resolve()}", dim)
    ims = _images()
    got = enc.encode(ims)
    pixel_values = enc.processor(images=[im.convert("RGB") for im in ims], return_tensors="pt")["pixel_values"]
    assert tuple(pixel_values.shape) == (2, 3, 32, 32)
    with torch.no_grad():
        ref = full.get_image_features(pixel_values=pixel_values)
    ref = ref if torch.is_tensor(ref) else ref.pooler_output
    assert got.shape == (2, dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)
    assert not np.allclose(got[0], got[1])


def test_hf_tower_missing_model_is_a_clean_error(tmp_path):
    from posterkg.embed.image import EncoderUnavailable, load_image_encoder

    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderUnavailable, match="cannot load the clip vision model"):
        load_image_encoder(f"clip:{tmp_path / 'empty'}", device="cpu")
    with pytest.raises(EncoderUnavailable, match="HF_HUB_OFFLINE"):
        load_image_encoder("siglip:nobody/no-such-model-xyz", device="cpu")


# -- pixels --------------------------------------------------------------------------------------------

def test_pixels_descriptor_blocks():
    _need_posters()
    from posterkg.embed.image import load_image_encoder
    from posterkg.vlm import pixels as px

    enc = load_image_encoder("pixels")
    assert (enc.name, enc.dim) == ("pixels-v1", 197)
    X = enc.encode([_poster(1), _poster(260), Image.new("RGB", (120, 180), (200, 30, 30))])
    assert X.shape == (3, 197) and np.isfinite(X).all()
    np.testing.assert_allclose(enc.encode([_poster(1)])[0], X[0])          # deterministic
    for row in X:
        np.testing.assert_allclose(row[:64].sum(), 1.0, atol=1e-5)           # Lab joint histogram
        for k in range(3):
            np.testing.assert_allclose(row[64 + 8 * k:72 + 8 * k].sum(), 1.0, atol=1e-5)
        np.testing.assert_allclose(row[88:111].sum(), 1.0, atol=1e-5)        # named colour shares
        np.testing.assert_allclose(row[167:177].sum(), 1.0, atol=1e-5)       # LBP
        assert row[189:193].sum() == 1.0                                     # face count one-hot
    red = X[2]
    assert np.argmax(red[88:111]) == list(px.NAMED_COLOURS).index("red")
    assert red[111:167].sum() == 0.0                                          # no edges at all
    # the face block agrees with the tagger's own Haar detections
    for row, mid in zip(X[:2], (1, 260)):
        n = len(px.measure(np.asarray(_poster(mid).convert("RGB"))).faces)
        assert row[189 + min(n, 3)] == 1.0


# -- tables: posters, texts, resume ------------------------------------------------------------------

@pytest.fixture
def world(tmp_path):
    """12 real posters (copied) + a corrupt file, scanned into a fresh database."""
    _need_posters()
    import shutil

    from posterkg.ingest.posters import scan_posters

    folder = tmp_path / "posters"
    folder.mkdir()
    ids = sorted(int(p.stem) for p in POSTERS.glob("*.jpg"))[:12]
    for m in ids:
        shutil.copy(POSTERS / f"{m}.jpg", folder / f"{m}.jpg")
    (folder / "99999.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    db = tmp_path / "f.duckdb"
    with open_store(db) as store:
        scan_posters(store, folder, workers=1)
    return {"db": db, "ids": ids, "folder": folder, "tmp": tmp_path}


def test_embed_posters_is_idempotent_and_records_corrupt_posters(world):
    from posterkg.embed.image import load_image_encoder
    from posterkg.embed.posters import embed_posters, load_features

    enc = load_image_encoder("pixels")
    with open_store(world["db"]) as store:
        s1 = embed_posters(store, enc, batch_size=5, limit=6)
        assert (s1["done"], s1["failed"], s1["skipped"]) == (6, 0, 0)
        s2 = embed_posters(store, enc, batch_size=5)
        assert (s2["done"], s2["failed"], s2["skipped"]) == (6, 1, 6)
        assert s2["failures"] == {"corrupt_image": 1}
        s3 = embed_posters(store, enc, batch_size=5)
        assert (s3["done"], s3["failed"], s3["skipped"]) == (0, 0, 13)
        s4 = embed_posters(store, enc, retry_failed=True)
        assert (s4["done"], s4["failed"]) == (0, 1)
        assert store.scalar("SELECT attempts FROM poster_embed_status WHERE movie_id = 99999") == 2
        s5 = embed_posters(store, enc, movies=[world["ids"][0], 123456])
        assert s5["failures"] == {"no_poster": 1} and s5["skipped"] == 1
        assert store.count("poster_embeddings") == 12
        runs = store.execute("SELECT sum(done), sum(failed) FROM feature_runs WHERE kind = 'poster'").fetchone()
        assert runs == (12, 3)
        ids, X = load_features(store, "poster", "pixels")
    assert ids.tolist() == world["ids"] and X.shape == (12, 197) and X.dtype == np.float32
    assert X.flags.writeable and X.flags.c_contiguous and ids.dtype == np.int64
    direct = enc.encode([Image.open(world["folder"] / f"{m}.jpg") for m in world["ids"][:3]])
    np.testing.assert_allclose(X[:3], direct, atol=1e-6)
    with open_store(world["db"], read_only=True) as store:
        sub_ids, sub = load_features(store, "poster", "pixels-v1", movie_ids=[world["ids"][2], 99999],
                                     normalize=True)
        assert sub_ids.tolist() == [world["ids"][2]]
        np.testing.assert_allclose(np.linalg.norm(sub, axis=1), 1.0, atol=1e-6)
        with pytest.raises(InputError, match="have: pixels-v1"):
            load_features(store, "poster", "efficientnet-lite0")
        with pytest.raises(ConfigError):
            load_features(store, "audio", "pixels")


def test_tiny_clip_goes_through_the_same_path(world, tiny_towers):
    from posterkg.embed.image import load_image_encoder
    from posterkg.embed.posters import embed_posters, load_features

    path = tiny_towers["clip"][0]
    enc = load_image_encoder(f"clip:{path}", device="cpu")
    with open_store(world["db"]) as store:
        s = embed_posters(store, enc, batch_size=4, limit=5)
        assert s["done"] == 5 and s["dim"] == 16
        ids, X = load_features(store, "poster", f"clip:{path}")
    assert X.shape == (5, 16)
    np.testing.assert_allclose(X[1], enc.encode([Image.open(world["folder"] / f"{ids[1]}.jpg")])[0], atol=1e-5)


SLOW_ENCODER = textwrap.dedent('''
    import os, time
    from posterkg.embed.image.pixels import PixelsEncoder

    class Slow(PixelsEncoder):
        def encode_prepared(self, batch):
            out = super().encode_prepared(batch)
            time.sleep(float(os.environ.get("SLOW_DELAY", "0")))
            mark = os.environ.get("SLOW_MARK")
            if mark:
                with open(mark, "a") as f:
                    f.write(f"{len(batch)}\\n")
            return out

    def create(device="auto", **options):
        return Slow()
''')


def _embed_cli(db, args, env_extra):
    env = {**os.environ, "POSTERKG_PROGRESS": "0", **env_extra}
    return subprocess.Popen([sys.executable, "-m", "posterkg", "embed", "posters", "--db", str(db), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_mid_run_loses_at_most_a_batch_and_resumes(world):
    # a slowed-down pixels encoder, loaded by module path (the registry's third-party hook)
    pkg = world["tmp"] / "mods" / "slowpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "enc.py").write_text(SLOW_ENCODER)
    pythonpath = os.pathsep.join([str(pkg.parent), os.environ.get("PYTHONPATH", "")])
    mark = world["tmp"] / "batches.txt"
    args = ["--encoder", "slowpkg.enc", "--batch-size", "2"]
    p = _embed_cli(world["db"], args, {"PYTHONPATH": pythonpath, "SLOW_DELAY": "0.5", "SLOW_MARK": str(mark)})
    deadline = time.time() + 120
    while time.time() < deadline:
        if mark.exists() and len(mark.read_text().splitlines()) >= 2:
            break
        assert p.poll() is None, p.communicate()
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL
    with open_store(world["db"]) as store:
        done = store.scalar("SELECT count(*) FROM poster_embed_status WHERE status = 'done'")
        # whole batches of 2 only, and every done poster has its vector
        assert store.count("poster_embeddings") == done and 0 < done < 12 and done % 2 == 0
        assert store.scalar("SELECT count(*) FROM poster_embed_status WHERE status = 'failed'") == 1
        run = store.execute("SELECT done, failed, finished_at FROM feature_runs").fetchone()
        assert run == (done, 1, None)               # counters committed with each batch
        before = dict(store.execute("SELECT movie_id, vector FROM poster_embeddings").fetchall())
    p = _embed_cli(world["db"], args, {"PYTHONPATH": pythonpath})
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    with open_store(world["db"], read_only=True) as store:
        assert store.count("poster_embeddings") == 12
        assert store.scalar("SELECT count(DISTINCT movie_id) FROM poster_embeddings") == 12
        last = store.execute("SELECT skipped, done, failed FROM feature_runs ORDER BY started_at DESC LIMIT 1").fetchone()
        assert last == (done + 1, 12 - done, 0)     # the resumed run only did what the killed one had not
        after = dict(store.execute("SELECT movie_id, vector FROM poster_embeddings").fetchall())
    for m, v in before.items():                      # what survived the kill is untouched by the resume
        assert after[m] == v
    fresh = __import__("posterkg.embed.image.pixels", fromlist=["x"]).PixelsEncoder()
    m = sorted(after)[-1]
    np.testing.assert_allclose(after[m], fresh.encode([Image.open(world["folder"] / f"{m}.jpg")])[0], atol=1e-6)


def test_embed_texts_with_the_shipped_minilm(world):
    from posterkg.embed.encoder import Encoder
    from posterkg.embed.posters import embed_texts, load_features, movie_text

    assert movie_text("Toy Story", 1995, ["Animation", "Children's", "Comedy"]) == \
        "Toy Story (1995): Animation, Children's, Comedy"
    assert movie_text("Babylon 5", None, ["(no genres listed)"]) == "Babylon 5"
    with open_store(world["db"]) as store:
        store.execute("CREATE TABLE movies (movie_id INTEGER PRIMARY KEY, title VARCHAR, year INTEGER, genres VARCHAR[])")
        store.execute("INSERT INTO movies VALUES (1, 'Toy Story', 1995, ['Animation', 'Comedy']), "
                      "(2, 'Heat', 1995, ['Action', 'Crime']), (3, 'Untitled', NULL, [])")
        enc = Encoder("minilm")
        s = embed_texts(store, enc, batch_size=2)
        assert (s["done"], s["dim"]) == (3, 384)
        assert embed_texts(store, enc)["skipped"] == 3
        ids, X = load_features(store, "text", "minilm")
    assert ids.tolist() == [1, 2, 3]
    ref = enc.encode(["Toy Story (1995): Animation, Comedy", "Heat (1995): Action, Crime", "Untitled"])
    np.testing.assert_allclose(X, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)


def test_run_embed_from_a_config(world, tmp_path):
    from posterkg.config import Config
    from posterkg.embed.posters import run_embed

    cfg = Config(data={"features": {"poster_encoder": "pixels", "text": False, "batch_size": 4, "limit": 3}})
    with open_store(world["db"]) as store:
        out = run_embed(store, cfg, echo=False)
        assert out["poster"]["done"] == 3 and out["text"] is None
        assert run_embed(store, cfg, echo=False)["poster"]["skipped"] == 3    # a rerun does nothing
        with pytest.raises(ConfigError, match="unknown key"):
            run_embed(store, Config(data={"features": {"poster_encodr": "pixels"}}))


def test_cli_embed_posters_and_list(world):
    p = _embed_cli(world["db"], ["--encoder", "pixels", "--limit", "3"], {})
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "pixels-v1" in out and "done" in out
    p = subprocess.run([sys.executable, "-m", "posterkg", "embed", "list", "--db", str(world["db"])],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "POSTERKG_PROGRESS": "0"})
    assert p.returncode == 0 and "pixels-v1" in p.stdout and "197" in p.stdout
    p = _embed_cli(world["db"], ["--encoder", "resnet"], {})
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "unknown image encoder" in err and "Traceback" not in err
