"""The ``imagenet`` tagging backend: EfficientNet-Lite0's ImageNet classes as knowledge points,
through the real tagging runner on real ML-1M posters."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from conftest import ML1M
from posterkg.errors import ConfigError
from posterkg.store import open_store
from posterkg.vlm import imagenet
from posterkg.vlm.knowledge import load_schema

POSTERS = ML1M / "posters"
MOVIES = (1, 2, 260, 1196)   # Toy Story, Jumanji, Star Wars IV and V


def _need_posters():
    if not (POSTERS / "1.jpg").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the real ML-1M posters are missing at {POSTERS}")
        pytest.skip(f"real ML-1M posters not found at {POSTERS} (set POSTERKG_SHARED)")


def test_class_names_values_and_types():
    names = imagenet.class_names()
    assert len(names) == 1000 and names[917] == "comic book" and names[0].startswith("tench")
    values = [imagenet.class_value(i) for i in range(1000)]
    assert len(set(values)) == 1000                       # every class its own value
    pattern = load_schema().value_pattern
    import re

    assert all(re.fullmatch(pattern, v) for v in values)  # valid schema values, all of them
    assert values[134] == "crane bird" and values[517] == "construction crane"
    assert imagenet.class_type(917) == "Texture" and imagenet.class_type(921) == "Typography"
    assert imagenet.class_type(461) == "Genre_Visual" and imagenet.class_type(1) == "Others"
    types = set(load_schema().type_names)
    assert set(imagenet.CLASS_TYPES.values()) <= types


def test_points_from_probs_threshold_top_k_and_type_fallback():
    p = np.zeros(1000, np.float32)
    p[[917, 921, 1, 2, 3]] = [0.5, 0.2, 0.12, 0.1, 0.05]
    got = imagenet.points_from_probs(p, threshold=0.1, top_k=5)
    assert [(t, v) for t, v, _ in got] == [("Texture", "comic book"), ("Typography", "book jacket"),
                                           ("Others", "goldfish"), ("Others", "great white shark")]
    assert [round(x, 2) for _, _, x in got] == [0.5, 0.2, 0.12, 0.1]
    assert len(imagenet.points_from_probs(p, threshold=0.1, top_k=2)) == 2
    assert imagenet.points_from_probs(p, threshold=0.6, top_k=5) == []
    # a schema without Texture: the class falls back to Others; without Others it is dropped
    fb = imagenet.points_from_probs(p, threshold=0.3, top_k=5, allowed_types={"Others"})
    assert fb == [("Others", "comic book", pytest.approx(0.5))]
    assert imagenet.points_from_probs(p, threshold=0.3, top_k=5, allowed_types={"Lighting"}) == []


def test_options_are_checked():
    for bad in ({"threshold": 0}, {"threshold": 1.5}, {"top_k": 0}):
        with pytest.raises(ConfigError):
            imagenet.ImagenetBackend(**bad)
    with pytest.raises(ConfigError, match="unknown option"):
        imagenet.create(temperature=1)
    with pytest.raises(ConfigError, match="one model"):
        imagenet.create(model="resnet50")


@pytest.fixture
def world(tmp_path):
    _need_posters()
    from posterkg.ingest.posters import scan_posters

    folder = tmp_path / "posters"
    folder.mkdir()
    for m in MOVIES:
        shutil.copy(POSTERS / f"{m}.jpg", folder / f"{m}.jpg")
    (folder / "5.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    db = tmp_path / "t.duckdb"
    with open_store(db) as store:
        scan_posters(store, folder, workers=1)
    return db


def test_imagenet_backend_through_the_runner(world):
    from posterkg.vlm.backends import get_backend
    from posterkg.vlm.runner import tag_posters

    backend = get_backend("imagenet", device="cpu")
    assert (backend.name, backend.model) == ("imagenet", "efficientnet-lite0-imagenet-v1")
    spec = load_schema().build_spec()
    with open_store(world) as store:
        s = tag_posters(store, backend, spec, batch_size=3)
        assert (s["done"], s["failed"]) == (4, 1) and s["failures"] == {"corrupt_image": 1}
        pts = store.execute("SELECT movie_id, type, value, confidence FROM raw_points ORDER BY movie_id, "
                            "confidence DESC, value").fetchall()
        again = tag_posters(store, backend, spec)
        assert (again["done"], again["skipped"]) == (0, 5)
    by_movie: dict[int, list] = {}
    for m, t, v, c in pts:
        by_movie.setdefault(m, []).append((t, v, c))
    assert set(by_movie) == set(MOVIES)
    # Toy Story: "comic book" at p = 0.944 -> the nearest confidence level, 1.0
    assert by_movie[1][0] == ("Texture", "comic book", 1.0)
    # Star Wars IV: armour classes (breastplate p = 0.30, cuirass p = 0.22) as genre cues
    assert ("Genre_Visual", "breastplate", 0.25) in by_movie[260]
    assert ("Genre_Visual", "cuirass", 0.25) in by_movie[260]
    levels = set(load_schema().confidence_levels)
    for points in by_movie.values():
        assert 1 <= len(points) <= 5
        assert all(c in levels and c >= 0.125 for _, _, c in points)   # p >= 0.1 only

    # the same classes and probabilities as the encoder's own classify()
    from PIL import Image

    probs = backend.encoder.classify([Image.open(POSTERS / "260.jpg")])[0]
    want = imagenet.points_from_probs(probs, threshold=0.1, top_k=5)
    assert sorted(v for _, v, _ in want) == sorted(v for _, v, _ in by_movie[260])
    backend.close()


def test_threshold_failures_and_closed_mode(world):
    from posterkg.vlm.backends import get_backend
    from posterkg.vlm.runner import tag_posters

    strict = get_backend("imagenet", threshold=0.97, top_k=3, device="cpu")
    assert strict.model == "efficientnet-lite0-imagenet-v1-t0.97-k3"
    spec = load_schema().build_spec()
    with open_store(world) as store:
        s = tag_posters(store, strict, spec)
        # only Jumanji's "comic book" (p = 0.977) reaches 0.97; the others have no confident class
        assert s["done"] == 1 and s["failures"] == {"below_threshold": 3, "corrupt_image": 1}
        err = store.scalar("SELECT error FROM tag_status WHERE movie_id = 260 AND model = ?", [strict.model])
        assert "no ImageNet class reaches p >= 0.97" in err
        closed = load_schema().build_spec({"Texture": ["Comic Book"], "Others": ["tench"]})
        c = tag_posters(store, get_backend("imagenet", device="cpu"), closed)
        rows = store.execute("SELECT movie_id, value FROM raw_points WHERE run_id = ? ORDER BY 1",
                             [c["run_id"]]).fetchall()
    # comic book: Toy Story 0.944, Jumanji 0.977, Empire Strikes Back 0.527; A New Hope 0.093 < 0.1
    assert rows == [(1, "Comic Book"), (2, "Comic Book"), (1196, "Comic Book")]
    assert c["failures"] == {"corrupt_image": 1, "no_vocab_match": 1}


def test_run_tag_with_the_imagenet_backend(world):
    from posterkg.vlm.stage import TagConfig, run_tag

    with open_store(world) as store:
        s = run_tag(store, TagConfig(backend="imagenet", limit=2), echo=False)
    assert s["backend"] == "imagenet" and s["done"] == 2
    assert s["points_per_type"]["Texture"] == 2      # both comic books
