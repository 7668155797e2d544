"""The weight-free pixels tagger: each rule on synthetic images, then every real poster."""

from __future__ import annotations

import collections

import cv2
import numpy as np
import pytest
from PIL import Image

from posterkg.vlm import pixels
from posterkg.vlm.base import PosterJob
from posterkg.vlm.knowledge import load_schema

H, W = 278, 185


def _values(rgb, type_=None):
    pts = pixels.points_for(rgb)
    return {v for t, v, _ in pts if type_ is None or t == type_}


def flat(rgb):
    img = np.zeros((H, W, 3), np.uint8)
    img[...] = rgb
    return img


def test_pure_red_is_warm_and_dominant_red():
    vals = _values(flat((255, 0, 0)))
    assert {"warm palette", "dominant red"} <= vals
    assert "cool palette" not in vals


def test_blue_is_cool():
    vals = _values(flat((30, 80, 230)))
    assert {"cool palette", "dominant blue"} <= vals


def test_black_is_low_key_and_white_high_key():
    black = _values(flat((0, 0, 0)))
    assert {"low-key lighting", "low contrast", "dominant black", "black and white",
            "neutral palette", "dark and moody"} <= black
    white = _values(flat((250, 250, 250)))
    assert {"high-key lighting", "dominant white"} <= white and "low-key lighting" not in white


def test_noise_is_grainy_and_busy_while_flat_is_smooth_and_minimal():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    assert {"grainy texture", "busy composition"} <= _values(noise)
    calm = _values(flat((120, 140, 90)))
    assert {"smooth texture", "minimal composition", "little text"} <= calm


def test_face_free_drawings_have_no_faces():
    img = flat((200, 190, 170))
    cv2.rectangle(img, (20, 30), (160, 120), (40, 40, 120), -1)
    cv2.circle(img, (92, 190), 40, (180, 30, 30), -1)
    cv2.line(img, (0, 270), (185, 150), (10, 10, 10), 3)
    s = pixels.measure(img)
    assert s.faces == []
    assert _values(img, "Character_Presentation") == {"no faces"}


def test_lettering_is_text_and_a_split_image_is_high_contrast():
    img = flat((15, 15, 25))
    for y in range(40, 260, 30):
        cv2.putText(img, "TITLE WORDS", (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
    vals = _values(img)
    assert "prominent title text" in vals
    assert "grainy texture" not in vals          # letters are edges, not grain
    split = flat((0, 0, 0))
    split[:, W // 2:] = 255
    assert "high contrast" in _values(split, "Lighting")


def test_symmetry_centre_and_colourfulness():
    img = flat((230, 225, 215))
    cv2.circle(img, (W // 2, H // 2), 30, (20, 20, 20), 3)
    cv2.circle(img, (W // 2, H // 2), 12, (20, 20, 20), -1)
    vals = _values(img, "Composition")
    assert {"symmetrical layout", "centered subject"} <= vals
    stripes = np.zeros((H, W, 3), np.uint8)
    hues = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 230, 0), (255, 0, 255), (0, 230, 230)]
    for i in range(H):
        stripes[i] = hues[(i // 12) % len(hues)]
    assert "vivid colours" in _values(stripes, "Color_Palette")
    assert "vivid colours" not in _values(flat((128, 128, 128)))


def test_results_do_not_depend_on_resolution_and_are_deterministic():
    rng = np.random.default_rng(1)
    img = flat((60, 90, 160))
    for _ in range(12):
        x, y = rng.integers(0, W - 40), rng.integers(0, H - 40)
        cv2.rectangle(img, (int(x), int(y)), (int(x) + 35, int(y) + 25),
                      tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
    big = cv2.resize(img, (W * 2, H * 2), interpolation=cv2.INTER_NEAREST)
    assert _values(img) == _values(big)
    assert pixels.points_for(img) == pixels.points_for(img.copy())


def test_confidence_mapping():
    assert pixels.beyond(0.30, 0.30, 0.10) == 0.5
    assert pixels.beyond(0.20, 0.30, 0.10) == pytest.approx(0.75)
    assert pixels.beyond(0.0, 0.30, 0.10) == 1.0
    assert pixels.beyond(0.5, 0.30, 0.10) == 0.5
    assert pixels.inside(0.2, 0.1, 0.3) == 1.0 and pixels.inside(0.1, 0.1, 0.3) == 0.5
    # a darker poster is more confidently low-key
    ((_, dim_v, dim_c),) = pixels.rule_key(pixels.measure(flat((60, 60, 60))))
    ((_, dark_v, dark_c),) = pixels.rule_key(pixels.measure(flat((5, 5, 5))))
    assert dim_v == dark_v == "low-key lighting"
    assert 0.5 < dim_c < dark_c == 1.0


def test_backend_quantises_validates_and_handles_closed_mode(tmp_path):
    schema = load_schema()
    red = tmp_path / "1.png"
    Image.fromarray(flat((255, 0, 0))).save(red)
    broken = tmp_path / "2.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    backend = pixels.create()
    assert backend.model == pixels.MODEL_ID
    spec = schema.build_spec()
    r_ok, r_bad = backend.tag_batch([PosterJob(1, red), PosterJob(2, broken)], spec)
    pts = schema.validate({"points": r_ok.points})
    assert {p["confidence"] for p in pts} <= set(schema.confidence_levels)
    assert r_bad.reason == "corrupt_image" and r_bad.points is None
    closed = schema.build_spec({"Color_Palette": ["Warm Palette", "cool palette"], "Others": ["x"]})
    (r,) = backend.tag_batch([PosterJob(1, red)], closed)
    assert r.points == [{"type": "Color_Palette", "value": "Warm Palette", "confidence": 1.0}]
    schema.validate({"points": r.points}, closed.vocab)
    (r,) = backend.tag_batch([PosterJob(1, red)], schema.build_spec({"Others": ["x"]}))
    assert r.points is None and r.reason == "no_vocab_match"
    with pytest.raises(Exception, match="unknown option"):
        pixels.create(size=3)


def test_cap_keeps_one_point_per_type_first():
    pts = [{"type": t, "value": v, "confidence": c} for t, v, c in [
        ("A", "a1", 0.5), ("A", "a2", 1.0), ("A", "a3", 0.25), ("B", "b1", 0.25), ("C", "c1", 0.5)]]
    assert [p["value"] for p in pixels._cap(pts, 4)] == ["a1", "a2", "b1", "c1"]


@pytest.mark.slow
def test_every_real_poster_gets_a_point_per_answerable_type(ml1m_db_copy):
    from posterkg.store import open_store
    from posterkg.vlm.runner import tag_posters

    schema = load_schema()
    with open_store(ml1m_db_copy) as store:
        ok = store.scalar("SELECT count(*) FROM posters WHERE status = 'ok'")
        assert ok >= 3800
        summary = tag_posters(store, pixels.create(), schema.build_spec(), batch_size=64)
        assert summary["done"] == ok and summary["failed"] == store.count("posters", "WHERE status <> 'ok'")
        per_movie = store.execute(
            "SELECT movie_id, list(DISTINCT type) FROM raw_points GROUP BY movie_id").fetchall()
        assert len(per_movie) == ok
        for movie_id, types in per_movie:
            missing = set(pixels.ANSWERED_TYPES) - set(types)
            assert not missing, (movie_id, missing)
        # the rules discriminate: every answered type takes several values over the posters
        values = collections.defaultdict(collections.Counter)
        for t, v, n in store.execute("SELECT type, value, count(*) FROM raw_points GROUP BY ALL").fetchall():
            values[t][v] = n
        for t in pixels.ANSWERED_TYPES:
            assert len(values[t]) >= 3, (t, values[t])
            assert max(values[t].values()) < 0.97 * ok, (t, values[t])
        faces = ok - values["Character_Presentation"]["no faces"]
        assert 0.05 * ok < faces < 0.6 * ok
        # every stored point validates against the schema
        for movie_id, pts in store.execute(
                "SELECT movie_id, list({'type': type, 'value': value, 'confidence': confidence}) "
                "FROM raw_points GROUP BY movie_id").fetchall()[:500]:
            schema.validate({"points": pts})


def test_image_loading_and_pixel_budget(tmp_path):
    from posterkg.vlm.images import CorruptImage, fit_size, load_image, load_poster

    for (w, h), kw in [((185, 278), {"max_pixels": 28 * 28 * 16, "multiple": 28}),
                       ((185, 278), {"min_pixels": 256 * 28 * 28, "multiple": 28}),
                       ((2000, 3000), {"max_pixels": 1003520, "multiple": 28}),
                       ((2000, 3000), {"max_pixels": 10000}),
                       ((185, 278), {"min_pixels": 4096, "max_pixels": 100000})]:
        tw, th = fit_size(w, h, **kw)
        if kw.get("max_pixels"):
            assert tw * th <= kw["max_pixels"]
        if kw.get("min_pixels"):
            assert tw * th >= kw["min_pixels"]
        if kw.get("multiple"):
            assert tw % 28 == 0 and th % 28 == 0
        assert abs(tw / th - w / h) < 0.12            # aspect kept (up to block rounding)
    assert fit_size(185, 278) == (185, 278)
    p = tmp_path / "a.png"
    Image.new("LA", (300, 450)).save(p)
    img = load_poster(p, max_pixels=28 * 28 * 30, multiple=28)
    assert img.mode == "RGB" and img.width * img.height <= 28 * 28 * 30
    bad = tmp_path / "b.jpg"
    bad.write_bytes(open(p, "rb").read()[:100])
    with pytest.raises(CorruptImage):
        load_image(bad)
    with pytest.raises(CorruptImage):
        load_image(tmp_path / "missing.jpg")


def test_threads_give_one_threads_points_in_order(tmp_path, ml1m_dir):
    """Posters measured by several threads at once (each with its own face cascade, k-means
    seeded per thread) give exactly the points one thread gives, in the order of the jobs, a
    corrupt poster in the middle included."""
    posters = sorted((ml1m_dir / "posters").glob("*.jpg"))[:40]
    assert len(posters) == 40
    broken = tmp_path / "0.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    jobs = [PosterJob(int(p.stem), p) for p in posters[:20]] + [PosterJob(0, broken)] + \
        [PosterJob(int(p.stem), p) for p in posters[20:]]
    spec = load_schema().build_spec()
    one = pixels.create(workers=1)
    many = pixels.create(workers=4)
    assert one._pool is None and many.workers == 4
    want = one.tag_batch(jobs, spec)
    for _ in range(2):
        got = many.tag_batch(jobs, spec)
        assert [r.movie_id for r in got] == [j.movie_id for j in jobs]
        assert got == want
    assert got[20].reason == "corrupt_image" and all(r.points for i, r in enumerate(got) if i != 20)
    faces = {r.movie_id for r in want if r.points and any(
        p["type"] == "Character_Presentation" and p["value"] != "no faces" for p in r.points)}
    assert faces                                                  # the cascades ran and found some
    many.close()
    assert many._pool is None
    with pytest.raises(Exception, match="workers"):
        pixels.create(workers=-1)
