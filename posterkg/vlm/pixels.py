"""``pixels``: a deterministic, weight-free classical-vision poster tagger.

For machines with no GPU (and for tests): it answers the knowledge types that pixel statistics
can answer, with real measurements, in a few milliseconds per poster:

==========================  =====================================================================
type                        rule (each is documented in its function below)
==========================  =====================================================================
Color_Palette               warm / cool / neutral palette (:func:`rule_temperature`), named
                            dominant colours from k-means in CIE Lab (:func:`rule_dominant`),
                            colourfulness (:func:`rule_colourfulness`, Hasler & Suesstrunk 2003)
Lighting                    low-key / mid-key / high-key (:func:`rule_key`), contrast level
                            (:func:`rule_contrast`)
Composition                 minimal / balanced / busy from edge density, left-right symmetry,
                            centre weight (:func:`rule_composition`)
Texture                     smooth / fine / grainy from high-frequency energy (:func:`rule_texture`)
Character_Presentation      no faces / single close-up face / single face / two faces / group of
                            faces, with OpenCV's Haar cascades (:func:`rule_faces`)
Typography                  little / some / prominent text from text-like regions
                            (:func:`rule_typography`)
Visual_Mood                 only two conservative cases: dark and moody, bright and cheerful
                            (:func:`rule_mood`)
==========================  =====================================================================

Every poster gets at least one point of each type but Visual_Mood: each of those types has a rule
with a middle category. The work happens at a fixed size (``BASE`` = 180x270 for faces, text and
grain; half of it for colour statistics), so results don't depend on the input resolution and the
cost per poster is constant.

Confidence
----------
A point's confidence says how far its statistic is past the threshold that decides it:
:func:`beyond` maps "at the threshold" to 0.5 and "at the full-confidence point or further" to 1.0,
linearly; a middle category (:func:`inside`) gets 0.5 at either edge of its band and 1.0 at its
centre. Shares (dominant colours) and detector votes (faces) have their own documented mappings.
The number is then rounded to the nearest of the schema's ``confidence_levels``.

Model id ``pixels-v1`` is part of the resume key: bump :data:`MODEL_ID` whenever a rule or a
threshold changes, so re-tagging stores the new answers beside the old ones instead of mixing them.

Closed mode: the backend keeps only values that are in the vocabulary for their type (exact match,
ignoring case, stored in the vocabulary's spelling); a poster with no value left fails with
reason ``no_vocab_match``.

Threads: a batch's posters are measured ``workers`` at a time (``[tag.pixels] workers``; default:
the machine's cores, at most 8). Decoding and OpenCV release the GIL: on 2 cores, 2 threads
measured 200 ML-1M posters 1.7x faster, and `make run`'s tag stage (with its database writes)
went from 88 s to 64 s; every thread has its own face cascade and OpenCV's random
generator is per thread (k-means is seeded in the thread that runs it), so the points are the
same as one thread's, in the same order.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import os
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from posterkg.errors import ConfigError
from posterkg.vlm.base import PosterJob, TagResult, TagSpec
from posterkg.vlm.images import CorruptImage, load_image

MODEL_ID = "pixels-v1"
BASE = (180, 270)          # (width, height) the measurements are made at
SMALL = (90, 135)          # colour statistics and k-means
FACES = (144, 216)         # face detection

# Named colours for dominant-colour names (sRGB); matched in CIE Lab by Euclidean distance (dE76).
NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15), "dark gray": (70, 70, 70), "gray": (128, 128, 128),
    "light gray": (190, 190, 190), "white": (245, 245, 245),
    "red": (200, 30, 30), "dark red": (110, 15, 20), "orange": (235, 120, 30),
    "yellow": (240, 210, 40), "gold": (190, 150, 60), "brown": (110, 70, 40), "beige": (215, 195, 160),
    "green": (50, 150, 60), "dark green": (25, 70, 35), "olive": (120, 120, 50),
    "teal": (30, 130, 130), "cyan": (60, 200, 220), "sky blue": (120, 170, 230), "blue": (35, 70, 190),
    "navy": (20, 30, 80), "purple": (110, 50, 140), "magenta": (200, 50, 160), "pink": (235, 150, 180),
}


def _to_lab(rgb_uint8: np.ndarray) -> np.ndarray:
    """sRGB uint8 (..., 3) -> CIE Lab float32 (L 0..100, a/b about -128..127)."""
    arr = rgb_uint8.reshape(-1, 1, 3).astype(np.float32) / 255.0
    return cv2.cvtColor(arr, cv2.COLOR_RGB2Lab).reshape(rgb_uint8.shape[:-1] + (3,))


_NAMED_LAB = _to_lab(np.array(list(NAMED_COLOURS.values()), dtype=np.uint8))
_NAMED = list(NAMED_COLOURS)


def beyond(x: float, threshold: float, full: float) -> float:
    """Confidence of "x is past ``threshold``": 0.5 at the threshold, 1.0 at ``full`` or further
    (``full`` may be below ``threshold`` for "less than" rules)."""
    t = (x - threshold) / (full - threshold)
    return 0.5 + 0.5 * min(1.0, max(0.0, t))


def inside(x: float, lo: float, hi: float) -> float:
    """Confidence of "x is in the band [lo, hi]": 0.5 at an edge, 1.0 at the centre."""
    half = (hi - lo) / 2
    return 0.5 + 0.5 * min(1.0, max(0.0, min(x - lo, hi - x) / half))


@dataclasses.dataclass
class Stats:
    """Measurements of one poster (all scale-free, see :func:`measure`)."""

    warm: float            # saturation-weighted share of warm hues among all pixels
    cool: float            # ... of cool hues
    chroma_share: float    # share of chromatic pixels (S > 0.25 and V > 0.2)
    colourfulness: float   # Hasler-Suesstrunk M (0..~150 on 0..255 RGB)
    dominant: list[tuple[str, float]]   # (named colour, share) by share, merged by name
    luminance: float       # mean Lab L / 100
    contrast: float        # std of Lab L / 100 (RMS contrast)
    edge_density: float    # share of Canny edge pixels
    symmetry: float        # Pearson correlation of the blurred gray image with its mirror
    centre_weight: float   # edge density in the central third / overall edge density
    grain: float           # Immerkaer noise sigma (gray levels 0..255)
    faces: list[tuple[int, int, int, int]]   # (x, y, w, h) at FACES size
    text_share: float      # share of the image covered by text-like regions
    text_boxes: int


# -- measuring ----------------------------------------------------------------------------------
_LOCAL = threading.local()       # one face cascade per thread (a cascade is not thread-safe)
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


def _cascade():
    c = getattr(_LOCAL, "cascade", None)
    if c is None:
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        c = cv2.CascadeClassifier(str(path))
        if c.empty():
            raise RuntimeError(f"cannot load the Haar cascade {path} (opencv-python-headless < 5 ships it)")
        _LOCAL.cascade = c
    return c


def measure(rgb: np.ndarray) -> Stats:
    """All statistics of one RGB uint8 image (any size; resized to :data:`BASE` first)."""
    base = cv2.resize(rgb, BASE, interpolation=cv2.INTER_AREA)
    small = cv2.resize(base, SMALL, interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(base, cv2.COLOR_RGB2GRAY)

    # hue statistics (OpenCV HSV: H 0..179 = 0..358 degrees, S and V 0..255)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(np.float32)
    h = hsv[:, 0] * 2.0
    s, v = hsv[:, 1] / 255.0, hsv[:, 2] / 255.0
    chromatic = (s > 0.25) & (v > 0.2)
    weight = np.where(chromatic, s, 0.0)
    warm_mask = (h < 70) | (h >= 330)            # red, orange, yellow, and magenta-red
    cool_mask = (h >= 160) & (h < 290)           # cyan, blue, violet-blue
    n = float(len(h))
    warm = float(weight[warm_mask].sum() / n)
    cool = float(weight[cool_mask].sum() / n)

    # Hasler & Suesstrunk colourfulness
    f = small.reshape(-1, 3).astype(np.float32)
    rg = f[:, 0] - f[:, 1]
    yb = 0.5 * (f[:, 0] + f[:, 1]) - f[:, 2]
    colourfulness = float(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))

    # dominant colours: k-means (k=4) in Lab, fixed seed and k-means++ init -> deterministic
    lab = _to_lab(small).reshape(-1, 3)
    cv2.setRNGSeed(0)
    k = 4
    _, labels, centres = cv2.kmeans(
        _to_lab(small[::2, ::2]).reshape(-1, 3), k, None, (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5), 1,
        cv2.KMEANS_PP_CENTERS)
    shares = np.bincount(labels.ravel(), minlength=k) / len(labels)
    names = np.argmin(((centres[:, None, :] - _NAMED_LAB[None, :, :]) ** 2).sum(-1), axis=1)
    merged: dict[str, float] = {}
    for i in range(k):
        merged[_NAMED[names[i]]] = merged.get(_NAMED[names[i]], 0.0) + float(shares[i])
    dominant = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))

    lum = lab[:, 0] / 100.0
    luminance, contrast = float(lum.mean()), float(lum.std())

    # composition
    edges = cv2.Canny(gray, 80, 160)
    e = edges > 0
    edge_density = float(e.mean())
    H, W = e.shape
    centre = e[H // 3: 2 * H // 3, W // 3: 2 * W // 3]
    centre_weight = float(centre.mean() / edge_density) if edge_density > 0 else 1.0
    blur = cv2.GaussianBlur(cv2.resize(gray, SMALL, interpolation=cv2.INTER_AREA), (5, 5), 0)
    a = blur.astype(np.float32).ravel()
    b = blur[:, ::-1].astype(np.float32).ravel()
    if a.std() < 1e-6:
        symmetry = 1.0
    else:
        symmetry = float(np.corrcoef(a, b)[0, 1])

    # grain: Immerkaer's fast noise-variance estimate (sum |I * N|, N a 3x3 Laplacian difference)
    # over the pixels away from edges (letters and contours are not grain) when enough remain
    conv = np.abs(cv2.filter2D(gray.astype(np.float32), -1, _IMMERKAER, borderType=cv2.BORDER_REFLECT))
    flat = cv2.dilate(edges, _KERNEL_GRAD) == 0
    sample = conv[flat] if flat.mean() >= 0.2 else conv.ravel()
    grain = float(math.sqrt(math.pi / 2) * sample.mean() / 6.0)

    # faces: frontal Haar cascade on the equalised gray image at FACES size (the cascade is most of
    # the cost: 144x216 halves it against 180x270 and still finds faces >= 1/8 of the width)
    eq = cv2.equalizeHist(cv2.resize(gray, FACES, interpolation=cv2.INTER_AREA))
    found = _cascade().detectMultiScale(eq, scaleFactor=1.2, minNeighbors=5, minSize=(18, 18))
    faces = [tuple(int(x) for x in r) for r in (found if len(found) else [])]

    text_share, text_boxes = _text_regions(gray)
    return Stats(warm, cool, float(chromatic.mean()), colourfulness, dominant, luminance, contrast,
                 edge_density, symmetry, centre_weight, grain, faces, text_share, text_boxes)


_KERNEL_GRAD = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
_KERNEL_LINE = cv2.getStructuringElement(cv2.MORPH_RECT, (9, 1))


def _text_regions(gray: np.ndarray) -> tuple[float, int]:
    """Share of the image covered by text-like regions, and how many.

    Letters are strokes with strong gradients in both polarities packed along a line: take the
    morphological gradient, binarise it (Otsu), close horizontally (9x1) to join letters into
    words, then keep connected components shaped like text lines: wider than tall (w >= 1.5 h),
    3 to 60 px tall at 180x270, not touching both sides, and 35-95% filled (solid blobs and thin
    frames are not text).
    """
    grad = cv2.morphologyEx(gray, cv2.MORPH_GRADIENT, _KERNEL_GRAD)
    _, bw = cv2.threshold(grad, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    closed = cv2.morphologyEx(bw, cv2.MORPH_CLOSE, _KERNEL_LINE)
    n, _, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
    H, W = gray.shape
    area = 0
    boxes = 0
    for x, y, w, h, px in stats[1:]:
        if h < 3 or h > 60 or w < 1.5 * h or w >= W - 2:
            continue
        fill = px / float(w * h)
        if not 0.35 <= fill <= 0.95:
            continue
        area += w * h
        boxes += 1
    return float(area) / (H * W), boxes


# -- rules --------------------------------------------------------------------------------------
Point = tuple[str, str, float]   # (type, value, confidence 0..1 before quantisation)


def rule_temperature(s: Stats) -> list[Point]:
    """Warm / cool / neutral palette from hue statistics.

    Chromatic pixels (HSV saturation > 0.25, value > 0.2) vote with their saturation: warm hues
    are 330-70 degrees (reds, oranges, yellows), cool hues 160-290 (cyans, blues). With
    ``balance = (warm - cool) / (warm + cool)``: balance >= 0.3 -> "warm palette", <= -0.3 ->
    "cool palette" (confidence :func:`beyond` 0.3 -> full at 0.9). Posters with under 10% of
    chromatic pixels, or balanced ones, get "neutral palette" (confidence from how far the
    chromatic share is under 10%, or :func:`inside` the balance band).
    """
    total = s.warm + s.cool
    if s.chroma_share < 0.10 or total < 0.02:
        return [("Color_Palette", "neutral palette", beyond(s.chroma_share, 0.10, 0.0))]
    balance = (s.warm - s.cool) / total
    if balance >= 0.3:
        return [("Color_Palette", "warm palette", beyond(balance, 0.3, 0.9))]
    if balance <= -0.3:
        return [("Color_Palette", "cool palette", beyond(balance, -0.3, -0.9))]
    return [("Color_Palette", "neutral palette", inside(balance, -0.3, 0.3))]


def rule_dominant(s: Stats) -> list[Point]:
    """Named dominant colours: k-means with k=4 in CIE Lab on a 90x135 copy; each centre gets the
    nearest name of :data:`NAMED_COLOURS` (Lab distance), shares of equal names are added.
    "dominant <name>" for the largest, and for the second when it covers at least 25% of the
    image. Confidence = share / 0.5 (a colour covering half the poster or more: 1.0), floored at
    0.25."""
    out = []
    for i, (name, share) in enumerate(s.dominant[:2]):
        if i == 0 or share >= 0.25:
            out.append(("Color_Palette", f"dominant {name}", max(0.25, min(1.0, share / 0.5))))
    return out


def rule_colourfulness(s: Stats) -> list[Point]:
    """Colourfulness M of Hasler & Suesstrunk (2003), ``sqrt(sd_rg^2 + sd_yb^2) + 0.3 *
    sqrt(mean_rg^2 + mean_yb^2)`` with rg = R - G, yb = (R + G) / 2 - B. Their scale: 15 "slightly",
    33 "moderately", 59 "quite", 82 "highly colourful". M < 8 -> "black and white" (full at 0),
    M < 20 -> "muted colours" (full at 8), M > 90 -> "vivid colours" (full at 130); nothing in
    between (temperature and dominant colours already describe those)."""
    m = s.colourfulness
    if m < 8:
        return [("Color_Palette", "black and white", beyond(m, 8, 0))]
    if m < 20:
        return [("Color_Palette", "muted colours", beyond(m, 20, 8))]
    if m > 90:
        return [("Color_Palette", "vivid colours", beyond(m, 90, 130))]
    return []


def rule_key(s: Stats) -> list[Point]:
    """Key from mean Lab lightness L/100: < 0.30 "low-key lighting" (full at 0.10), > 0.62
    "high-key lighting" (full at 0.85), else "mid-key lighting" (:func:`inside` the band)."""
    x = s.luminance
    if x < 0.30:
        return [("Lighting", "low-key lighting", beyond(x, 0.30, 0.10))]
    if x > 0.62:
        return [("Lighting", "high-key lighting", beyond(x, 0.62, 0.85))]
    return [("Lighting", "mid-key lighting", inside(x, 0.30, 0.62))]


def rule_contrast(s: Stats) -> list[Point]:
    """RMS contrast = standard deviation of Lab L/100: > 0.32 "high contrast" (full at 0.42),
    < 0.19 "low contrast" (full at 0.08), else "moderate contrast"."""
    x = s.contrast
    if x > 0.32:
        return [("Lighting", "high contrast", beyond(x, 0.32, 0.42))]
    if x < 0.19:
        return [("Lighting", "low contrast", beyond(x, 0.19, 0.08))]
    return [("Lighting", "moderate contrast", inside(x, 0.19, 0.32))]


def rule_composition(s: Stats) -> list[Point]:
    """Composition from edges (Canny 80/160 on the 180x270 gray image).

    * edge density (share of edge pixels) < 0.075 -> "minimal composition" (full at 0.03),
      > 0.19 -> "busy composition" (full at 0.26), else "balanced composition";
    * left-right symmetry: correlation of the blurred 90x135 gray image with its mirror
      > 0.80 -> "symmetrical layout" (full at 0.97);
    * centre weight: edge density of the central third over the whole image's > 1.8 ->
      "centered subject" (full at 2.8); needs at least 1% edge pixels to mean anything.
    """
    e = s.edge_density
    if e < 0.075:
        out = [("Composition", "minimal composition", beyond(e, 0.075, 0.03))]
    elif e > 0.19:
        out = [("Composition", "busy composition", beyond(e, 0.19, 0.26))]
    else:
        out = [("Composition", "balanced composition", inside(e, 0.075, 0.19))]
    if s.symmetry > 0.80 and e >= 0.01:
        out.append(("Composition", "symmetrical layout", beyond(s.symmetry, 0.80, 0.97)))
    if s.centre_weight > 1.8 and e >= 0.01:
        out.append(("Composition", "centered subject", beyond(s.centre_weight, 1.8, 2.8)))
    return out


def rule_texture(s: Stats) -> list[Point]:
    """Grain from high-frequency energy: Immerkaer's noise sigma (1996) of the 180x270 gray image,
    the mean absolute response to the 3x3 mask [[1,-2,1],[-2,4,-2],[1,-2,1]] (which cancels
    smooth gradients) times sqrt(pi/2)/6, taken over the pixels not on or next to a Canny
    edge (lettering and contours are not grain) unless fewer than 20% are (pure noise).
    Sigma > 1.3 -> "grainy texture" (full at 2.5), < 0.55 -> "smooth texture" (full at 0.2), else
    "fine texture". (Thresholds from the ML-1M posters, small JPEGs: about their 90th and 25th
    percentiles.)"""
    g = s.grain
    if g > 1.3:
        return [("Texture", "grainy texture", beyond(g, 1.3, 2.5))]
    if g < 0.55:
        return [("Texture", "smooth texture", beyond(g, 0.55, 0.2))]
    return [("Texture", "fine texture", inside(g, 0.55, 1.3))]


def rule_faces(s: Stats) -> list[Point]:
    """Faces by OpenCV's frontal-face Haar cascade (haarcascade_frontalface_default.xml, shipped in
    opencv-python-headless) on the histogram-equalised 144x216 gray image, scale step 1.2, at
    least 5 neighbouring detections, faces >= 18 px (1/8 of the width).

    none -> "no faces" (0.625: not finding a face is weak evidence: profiles, drawings and small
    faces are missed); one face covering >= 4% of the image -> "single close-up face", smaller ->
    "single face"; two -> "two faces"; three or more -> "group of faces". Confidence for found faces
    grows with the largest face's area share: :func:`beyond` 0 -> full at 8% of the image.
    """
    area = FACES[0] * FACES[1]
    if not s.faces:
        return [("Character_Presentation", "no faces", 0.625)]
    largest = max(w * h for _, _, w, h in s.faces) / area
    conf = beyond(largest, 0.0, 0.08)
    if len(s.faces) == 1:
        return [("Character_Presentation",
                 "single close-up face" if largest >= 0.04 else "single face", conf)]
    if len(s.faces) == 2:
        return [("Character_Presentation", "two faces", conf)]
    return [("Character_Presentation", "group of faces", conf)]


def rule_typography(s: Stats) -> list[Point]:
    """Amount of lettering from the share of text-like regions (see :func:`_text_regions`):
    share > 0.12 -> "prominent title text" (full at 0.25), < 0.01 -> "little text" (full at 0),
    else "some text"."""
    t = s.text_share
    if t > 0.12:
        return [("Typography", "prominent title text", beyond(t, 0.12, 0.25))]
    if t < 0.01:
        return [("Typography", "little text", beyond(t, 0.01, 0.0))]
    return [("Typography", "some text", inside(t, 0.01, 0.12))]


def rule_mood(s: Stats) -> list[Point]:
    """Two conservative mood cues, capped at 0.5 confidence (mood is mostly beyond pixels):
    low-key (L < 0.30) and not colourful (M < 33) -> "dark and moody"; high-key (L > 0.62) and
    colourful (M > 45) -> "bright and cheerful"."""
    if s.luminance < 0.30 and s.colourfulness < 33:
        return [("Visual_Mood", "dark and moody", 0.5)]
    if s.luminance > 0.62 and s.colourfulness > 45:
        return [("Visual_Mood", "bright and cheerful", 0.5)]
    return []


RULES = (rule_temperature, rule_dominant, rule_colourfulness, rule_key, rule_contrast,
         rule_composition, rule_texture, rule_faces, rule_typography, rule_mood)

#: The types every poster gets at least one point of.
ANSWERED_TYPES = ("Color_Palette", "Lighting", "Composition", "Texture", "Character_Presentation",
                  "Typography")


def points_for(rgb: np.ndarray) -> list[Point]:
    """All rule points of one RGB uint8 image (confidences not yet quantised)."""
    s = measure(rgb)
    return [p for rule in RULES for p in rule(s)]


def _levels(spec: TagSpec) -> list[float]:
    items = spec.json_schema["properties"]["points"]["items"]
    item = items["anyOf"][0] if "anyOf" in items else items
    return [float(c) for c in item["properties"]["confidence"]["enum"]]


def _quantise(x: float, levels: list[float]) -> float:
    return min(levels, key=lambda c: (abs(c - x), c))


class PixelsBackend:
    """The :class:`~posterkg.vlm.base.Backend` of the pixel rules."""

    name = "pixels"

    def __init__(self, model: str | None = None, workers: int = 0):
        if model not in (None, "", MODEL_ID):
            raise ConfigError(f"the pixels backend has one model, {MODEL_ID!r}; got {model!r}")
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise ConfigError(f"[tag.pixels] workers must be an integer >= 0 (0: one per core), got {workers!r}")
        self.model = MODEL_ID
        self.workers = workers or min(8, os.cpu_count() or 1)
        _cascade()   # fail early if the cascade is missing
        self._pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="pixels") if self.workers > 1 else None

    def tag_batch(self, jobs: list[PosterJob], spec: TagSpec) -> list[TagResult]:
        levels = _levels(spec)
        allowed = None
        if spec.vocab is not None:
            allowed = {t: {v.lower(): v for v in vals} for t, vals in spec.vocab.items()}

        def one(job: PosterJob) -> TagResult:
            try:
                rgb = np.asarray(load_image(job.path))
            except CorruptImage as exc:
                return TagResult(job.movie_id, error=str(exc), reason="corrupt_image")
            points = []
            for t, v, c in points_for(rgb):
                if allowed is not None:
                    v = allowed.get(t, {}).get(v.lower())
                    if v is None:
                        continue
                points.append({"type": t, "value": v, "confidence": _quantise(c, levels)})
            if not points:
                return TagResult(job.movie_id, error="no pixel value is in the vocabulary", reason="no_vocab_match")
            return TagResult(job.movie_id, points=_cap(points, _max_items(spec)))

        if self._pool is None or len(jobs) < 2:
            return [one(job) for job in jobs]
        return list(self._pool.map(one, jobs))          # in the order of ``jobs``

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _cap(points: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """At most ``n`` points: the first point of every type first, then the others by confidence."""
    if len(points) <= n:
        return points
    seen: set[str] = set()
    first, extra = [], []
    for i, p in enumerate(points):
        (extra if p["type"] in seen else first).append(i)
        seen.add(p["type"])
    extra.sort(key=lambda i: -points[i]["confidence"])
    keep = sorted((first + extra)[:n])
    return [points[i] for i in keep]


def _max_items(spec: TagSpec) -> int:
    return int(spec.json_schema["properties"]["points"]["maxItems"])


def create(model: str | None = None, workers: int = 0, **options: Any) -> PixelsBackend:
    if options:
        raise ConfigError(f"unknown option(s) for the pixels backend: {', '.join(sorted(options))}")
    return PixelsBackend(model, workers=workers)
