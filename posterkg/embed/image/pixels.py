"""``pixels``: a weight-free dense poster descriptor (197 floats) for machines with nothing else.

Deterministic classical vision, a few milliseconds per poster, built on the measurements of the
``pixels`` tagger (:func:`posterkg.vlm.pixels.measure`, which also supplies the Haar-cascade face
boxes, the named dominant colours and the texture statistics) plus dense histograms. Blocks, in
order (every block is scale-free, so the input resolution does not matter):

=====================  ====  ==================================================================
block                  dims  what
=====================  ====  ==================================================================
Lab joint histogram      64  4x4x4 bins of CIE Lab (L 0..100 in 4; a and b cut at -16, 0, 16)
                             on the 90x135 copy; sums to 1
Lab marginals            24  8 bins each of L (0..100), a and b (-64..64, clipped); each sums to 1
named colours            23  share of each :data:`~posterkg.vlm.pixels.NAMED_COLOURS` name among
                             the 4 k-means centres (Lab k-means of the tagger)
edge orientation         56  Sobel gradient orientation (mod 180 degrees) in 8 bins, weighted by
                             gradient magnitude, in a 2x3 grid of cells (48; normalised by the
                             whole image's magnitude so cells keep their share) + global (8, sums
                             to 1), on the 180x270 gray image
texture (LBP)            10  rotation-invariant uniform local binary patterns (P=8, R=1, "riu2":
                             0..8 ones, 9 = non-uniform); sums to 1
statistics               12  warm, cool, chromatic share, colourfulness/100, mean L/100, RMS
                             contrast, Canny edge density, left-right symmetry, centre weight/3,
                             Immerkaer grain/3, text-region share, text lines/20 (clipped to 1)
faces                     8  one-hot count (0, 1, 2, 3+), largest and total face area shares,
                             largest face centre x and y (0.5, 0.5 when none)
=====================  ====  ==================================================================

The name stored is ``pixels-v1``: bump :data:`NAME` when a block changes.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from posterkg.embed.image.base import EncoderBase, to_rgb
from posterkg.vlm import pixels as px

NAME = "pixels-v1"
DIM = 197
_AB_EDGES = np.array([-16.0, 0.0, 16.0])
_ORIENT_BINS = 8
_GRID = (2, 3)   # columns, rows


def _hist(x: np.ndarray, bins: int, lo: float, hi: float) -> np.ndarray:
    h, _ = np.histogram(np.clip(x, lo, hi), bins=bins, range=(lo, hi))
    return (h / max(1, h.sum())).astype(np.float32)


def lab_blocks(small_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = px._to_lab(small_rgb).reshape(-1, 3)
    li = np.clip((lab[:, 0] / 25.0).astype(int), 0, 3)
    ai = np.searchsorted(_AB_EDGES, lab[:, 1])
    bi = np.searchsorted(_AB_EDGES, lab[:, 2])
    joint = np.bincount(li * 16 + ai * 4 + bi, minlength=64).astype(np.float32)
    joint /= max(1.0, joint.sum())
    marg = np.concatenate([_hist(lab[:, 0], 8, 0, 100), _hist(lab[:, 1], 8, -64, 64),
                           _hist(lab[:, 2], 8, -64, 64)])
    return joint, marg


def orientation_block(gray: np.ndarray) -> np.ndarray:
    g = gray.astype(np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.hypot(gx, gy)
    ang = (np.degrees(np.arctan2(gy, gx)) % 180.0)
    b = np.minimum((ang / (180.0 / _ORIENT_BINS)).astype(int), _ORIENT_BINS - 1)
    total = float(mag.sum()) or 1.0
    H, W = g.shape
    cols, rows = _GRID
    cells = []
    for r in range(rows):
        for c in range(cols):
            sl = (slice(r * H // rows, (r + 1) * H // rows), slice(c * W // cols, (c + 1) * W // cols))
            cells.append(np.bincount(b[sl].ravel(), weights=mag[sl].ravel(), minlength=_ORIENT_BINS) / total)
    glob = np.bincount(b.ravel(), weights=mag.ravel(), minlength=_ORIENT_BINS) / total
    return np.concatenate(cells + [glob]).astype(np.float32)


_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]   # circular order


def lbp_block(gray: np.ndarray) -> np.ndarray:
    g = gray.astype(np.int16)
    c = g[1:-1, 1:-1]
    H, W = g.shape
    bits = np.stack([(g[1 + dy:H - 1 + dy, 1 + dx:W - 1 + dx] >= c) for dy, dx in _OFFSETS]).astype(np.int8)
    ones = bits.sum(0)
    transitions = np.abs(bits - np.roll(bits, 1, axis=0)).sum(0)
    code = np.where(transitions <= 2, ones, 9)
    h = np.bincount(code.ravel(), minlength=10).astype(np.float32)
    return h / max(1.0, h.sum())


def stats_block(s: px.Stats) -> np.ndarray:
    v = [s.warm, s.cool, s.chroma_share, s.colourfulness / 100.0, s.luminance, s.contrast,
         s.edge_density, s.symmetry, s.centre_weight / 3.0, s.grain / 3.0, s.text_share,
         min(s.text_boxes, 20) / 20.0]
    return np.clip(np.array(v, dtype=np.float32), -1.0, 1.0)


def faces_block(s: px.Stats) -> np.ndarray:
    W, H = px.FACES
    n = len(s.faces)
    onehot = np.zeros(4, dtype=np.float32)
    onehot[min(n, 3)] = 1.0
    if not n:
        return np.concatenate([onehot, np.array([0.0, 0.0, 0.5, 0.5], dtype=np.float32)])
    areas = [w * h for _, _, w, h in s.faces]
    x, y, w, h = s.faces[int(np.argmax(areas))]
    rest = [max(areas) / (W * H), min(1.0, sum(areas) / (W * H)), (x + w / 2) / W, (y + h / 2) / H]
    return np.concatenate([onehot, np.array(rest, dtype=np.float32)])


def colours_block(s: px.Stats) -> np.ndarray:
    v = np.zeros(len(px.NAMED_COLOURS), dtype=np.float32)
    index = {n: i for i, n in enumerate(px.NAMED_COLOURS)}
    for name, share in s.dominant:
        v[index[name]] += share
    return v


def describe(rgb: np.ndarray) -> np.ndarray:
    """The 197-d descriptor of one RGB uint8 image (module doc)."""
    s = px.measure(rgb)
    base = cv2.resize(rgb, px.BASE, interpolation=cv2.INTER_AREA)
    small = cv2.resize(base, px.SMALL, interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(base, cv2.COLOR_RGB2GRAY)
    joint, marg = lab_blocks(small)
    out = np.concatenate([joint, marg, colours_block(s), orientation_block(gray), lbp_block(gray),
                          stats_block(s), faces_block(s)]).astype(np.float32)
    assert out.shape == (DIM,), out.shape
    return out


class PixelsEncoder(EncoderBase):
    name = NAME
    dim = DIM
    device = "cpu"

    def __init__(self, **_ignored):
        px._cascade()   # fail early when the Haar cascade is missing

    def prepare(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        return [np.asarray(to_rgb(im)) for im in images]

    def encode_prepared(self, batch: list[np.ndarray]) -> np.ndarray:
        return np.stack([describe(a) for a in batch]).astype(np.float32)
