"""``imagenet``: EfficientNet-Lite0's top ImageNet classes as knowledge points.

A real trained vision model on CPU (the weights of the ``efficientnet-lite0`` poster encoder,
:mod:`posterkg.embed.image.efficientnet`, same preprocessing and forward pass): for each poster
the classes whose softmax probability is at least ``threshold`` (default 0.1), at most ``top_k``
(default 5), become points ``(type, class name, probability)``; the probability is rounded to the
nearest of the schema's ``confidence_levels`` (0.1 -> 0.125). A poster with no class at the
threshold fails with reason ``below_threshold`` (it has no confident object; it is recorded in
``tag_status`` like every failure, and ``--retry-failed`` gives the same answer).

Values: the first (short) name of the ImageNet class, lower-cased (``"comic book"``,
``"breastplate"``); the six short names that two classes share get a distinct value
(:data:`VALUE_OVERRIDES`). Class names ship in ``posterkg/embed/image/imagenet_classes.json``
(neither efficientnet wheel carries them).

Types: most classes are objects, animals, places and vehicles -> ``Others``. The classes below
say something the schema has a better type for (:data:`CLASS_TYPES`):

======================  ============================================================  ==========
type                    classes                                                       why
======================  ============================================================  ==========
Texture                 comic book, jigsaw puzzle                                     drawn /
                                                                                      pieced finish
Typography              book jacket, web site, menu, envelope, street sign,          lettering
                        scoreboard, packet, binder, crossword puzzle                  dominates
Genre_Visual            assault rifle, revolver, rifle, missile, projectile, cannon,  genre cues
                        tank, warplane, aircraft carrier, space shuttle, military
                        uniform, breastplate, cuirass, chain mail, shield, gasmask,
                        mask, cowboy hat, sombrero, holster, bulletproof vest
Character_Presentation  groom, scuba diver, ballplayer                                people
Lighting                spotlight, candle, torch                                      light
======================  ============================================================  ==========

Model id ``efficientnet-lite0-imagenet-v1`` (with ``-t<threshold>-k<top_k>`` appended when
those differ from the defaults) is part of the resume key: bump :data:`MODEL_ID` when the map or
the values change. Options (``[tag.imagenet]``): ``threshold``, ``top_k``, ``device``
(auto | cpu | cuda), ``threads``.

Closed mode: only values in the vocabulary for their type are kept (case-insensitive, stored in
the vocabulary's spelling); a poster with none left fails with ``no_vocab_match``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from posterkg.errors import ConfigError
from posterkg.vlm.base import PosterJob, TagResult, TagSpec
from posterkg.vlm.images import CorruptImage, load_image

MODEL_ID = "efficientnet-lite0-imagenet-v1"
DEFAULT_THRESHOLD = 0.1
DEFAULT_TOP_K = 5
CLASSES_FILE = Path(__file__).resolve().parent.parent / "embed" / "image" / "imagenet_classes.json"

#: short names shared by two classes -> distinct values
VALUE_OVERRIDES = {134: "crane bird", 517: "construction crane", 264: "cardigan corgi",
                   474: "cardigan sweater", 638: "maillot", 639: "tank suit"}

#: ImageNet class index -> knowledge type (all others: Others)
CLASS_TYPES: dict[int, str] = {
    # drawn / pieced-together finish
    917: "Texture",        # comic book
    611: "Texture",        # jigsaw puzzle
    # lettering dominates
    921: "Typography",     # book jacket
    916: "Typography",     # web site
    922: "Typography",     # menu
    549: "Typography",     # envelope
    919: "Typography",     # street sign
    781: "Typography",     # scoreboard
    692: "Typography",     # packet
    446: "Typography",     # binder
    918: "Typography",     # crossword puzzle
    # genre cues
    413: "Genre_Visual",   # assault rifle
    763: "Genre_Visual",   # revolver
    764: "Genre_Visual",   # rifle
    657: "Genre_Visual",   # missile
    744: "Genre_Visual",   # projectile
    471: "Genre_Visual",   # cannon
    847: "Genre_Visual",   # tank
    895: "Genre_Visual",   # warplane
    403: "Genre_Visual",   # aircraft carrier
    812: "Genre_Visual",   # space shuttle
    652: "Genre_Visual",   # military uniform
    461: "Genre_Visual",   # breastplate
    524: "Genre_Visual",   # cuirass
    490: "Genre_Visual",   # chain mail
    787: "Genre_Visual",   # shield
    570: "Genre_Visual",   # gasmask
    643: "Genre_Visual",   # mask
    515: "Genre_Visual",   # cowboy hat
    808: "Genre_Visual",   # sombrero
    597: "Genre_Visual",   # holster
    465: "Genre_Visual",   # bulletproof vest
    # people
    982: "Character_Presentation",   # groom
    983: "Character_Presentation",   # scuba diver
    981: "Character_Presentation",   # ballplayer
    # light
    818: "Lighting",       # spotlight
    470: "Lighting",       # candle
    862: "Lighting",       # torch
}


@functools.lru_cache(maxsize=1)
def class_names() -> list[str]:
    """The 1000 ImageNet class names (synonyms comma-separated), index = class id."""
    names = json.loads(CLASSES_FILE.read_text(encoding="utf-8"))["names"]
    if len(names) != 1000:
        raise RuntimeError(f"{CLASSES_FILE} has {len(names)} class names, not 1000")
    return names


def class_value(index: int) -> str:
    """The knowledge value of class ``index``: its short name, lower-cased, printable ASCII."""
    if index in VALUE_OVERRIDES:
        return VALUE_OVERRIDES[index]
    short = class_names()[index].split(",")[0].strip().lower()
    return "".join(c for c in short if " " <= c <= "~" and c not in '"\\')


def class_type(index: int) -> str:
    return CLASS_TYPES.get(int(index), "Others")


def _levels(spec: TagSpec) -> list[float]:
    items = spec.json_schema["properties"]["points"]["items"]
    item = items["anyOf"][0] if "anyOf" in items else items
    return [float(c) for c in item["properties"]["confidence"]["enum"]]


def _types(spec: TagSpec) -> set[str]:
    items = spec.json_schema["properties"]["points"]["items"]
    if "anyOf" in items:
        return {i["properties"]["type"]["const"] for i in items["anyOf"]}
    return set(items["properties"]["type"]["enum"])


def points_from_probs(probs: np.ndarray, *, threshold: float, top_k: int,
                      allowed_types: set[str] | None = None) -> list[tuple[str, str, float]]:
    """(type, value, probability) of the classes with p >= threshold, best first, at most top_k;
    a mapped type the schema lacks falls back to Others (dropped when Others is missing too)."""
    order = np.argsort(-probs, kind="stable")[:max(1, int(top_k))]
    out = []
    for i in order:
        p = float(probs[i])
        if p < threshold:
            break
        t = class_type(int(i))
        if allowed_types is not None and t not in allowed_types:
            t = "Others" if "Others" in allowed_types else None
        if t is not None:
            out.append((t, class_value(int(i)), p))
    return out


class ImagenetBackend:
    """The :class:`~posterkg.vlm.base.Backend` of EfficientNet-Lite0's ImageNet classes."""

    name = "imagenet"

    def __init__(self, model: str | None = None, *, threshold: float = DEFAULT_THRESHOLD,
                 top_k: int = DEFAULT_TOP_K, device: str = "auto", threads: int = 0):
        if not 0 < float(threshold) <= 1:
            raise ConfigError(f"[tag.imagenet] threshold must be in (0, 1], got {threshold}")
        if int(top_k) < 1:
            raise ConfigError(f"[tag.imagenet] top_k must be >= 1, got {top_k}")
        self.threshold = float(threshold)
        self.top_k = int(top_k)
        suffix = "" if (self.threshold, self.top_k) == (DEFAULT_THRESHOLD, DEFAULT_TOP_K) \
            else f"-t{self.threshold:g}-k{self.top_k}"
        expected = MODEL_ID + suffix
        if model not in (None, "", MODEL_ID, expected):
            raise ConfigError(f"the imagenet backend has one model, {MODEL_ID!r}; got {model!r}")
        self.model = expected
        from posterkg.embed.image.efficientnet import EfficientNetLite0

        self.encoder = EfficientNetLite0("efficientnet-lite0", device=device, threads=threads)
        class_names()   # fail early without the class names

    def tag_batch(self, jobs: list[PosterJob], spec: TagSpec) -> list[TagResult]:
        levels = _levels(spec)
        types = _types(spec)
        allowed = None
        if spec.vocab is not None:
            allowed = {t: {v.lower(): v for v in vals} for t, vals in spec.vocab.items()}
        max_items = int(spec.json_schema["properties"]["points"]["maxItems"])
        results: dict[int, TagResult] = {}
        ok, images = [], []
        for job in jobs:
            try:
                images.append(load_image(job.path))
                ok.append(job)
            except CorruptImage as exc:
                results[job.movie_id] = TagResult(job.movie_id, error=str(exc), reason="corrupt_image")
        if images:
            probs = self.encoder.classify(images)
            for job, p in zip(ok, probs):
                results[job.movie_id] = self._result(job.movie_id, p, levels, types, allowed, max_items)
        return [results[j.movie_id] for j in jobs]

    def _result(self, movie_id, probs, levels, types, allowed, max_items) -> TagResult:
        raw = points_from_probs(probs, threshold=self.threshold, top_k=min(self.top_k, max_items),
                                allowed_types=types)
        if not raw:
            top = int(np.argmax(probs))
            return TagResult(movie_id, error=f"no ImageNet class reaches p >= {self.threshold:g} "
                             f"(best: {class_value(top)} {float(probs[top]):.3f})", reason="below_threshold")
        points: dict[tuple[str, str], dict[str, Any]] = {}
        for t, v, p in raw:
            if allowed is not None:
                v = allowed.get(t, {}).get(v.lower())
                if v is None:
                    continue
            conf = min(levels, key=lambda c: (abs(c - p), c))
            key = (t, v)
            if key not in points or conf > points[key]["confidence"]:
                points[key] = {"type": t, "value": v, "confidence": conf}
        if not points:
            return TagResult(movie_id, error="no ImageNet class is in the vocabulary", reason="no_vocab_match")
        return TagResult(movie_id, points=list(points.values()))

    def close(self) -> None:
        self.encoder.close()


def create(model: str | None = None, **options: Any) -> ImagenetBackend:
    known = {"threshold", "top_k", "device", "threads"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) for the imagenet backend: {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    return ImagenetBackend(model, **options)
