"""A small synthetic MovieLens-1M-format data set with planted visual tastes, for ``posterkg demo``.

It is a self-check, not a benchmark: posters are drawn so that the weight-free ``pixels`` tagger can
see their traits, and users' ratings are generated from known visual tastes, so the pipeline can
be asked whether it recovers them.

What :func:`generate` writes into a folder (the real formats, ``::``-separated, Latin-1):

* ``movies.dat``  ``MovieID::Title (Year)::Genre|Genre``
* ``users.dat``   ``UserID::Gender::Age::Occupation::Zip-code``
* ``ratings.dat`` ``UserID::MovieID::Rating::Timestamp`` (users in order, each by time)
* ``posters/{MovieID}.jpg`` 185 x 278 RGB JPEGs, like ``../shared/data/ml-1m/posters``
* ``truth.json``  the planted traits of every movie and the tastes of every user

Every poster has one trait on each of four visual axes (independent, 50/50):

====== ============================ =============================================================
axis   traits                       how it is drawn
====== ============================ =============================================================
palette ``warm`` / ``cool``          hues in red-orange-yellow vs. cyan-blue-violet
key     ``dark`` / ``bright``        low-key (HSV value 0.12-0.30) vs. high-key pastel (0.90-1.0)
layout  ``busy`` / ``minimal``       ~100 small shapes + ~180 thin lines vs. one large soft shape
title   ``title`` / ``no_title``     two lines of big contrasting capitals in a band, or no text
====== ============================ =============================================================

Each user likes one or two traits and dislikes one trait of another axis. A rating is
``round(3.2 + 1.3 * (liked traits shown) - 1.8 * (disliked trait shown) + quality + noise)``
clipped to 1..5 (quality ~ N(0, 0.4), noise ~ N(0, 0.6)); users pick movies by popularity, a bit
more often ones with a liked trait and less often ones with the disliked trait; timestamps grow
along each user's history. Everything is drawn from one ``numpy`` generator seeded by ``seed``
(and per poster by ``(seed, movie_id)``), so a seed gives byte-identical files.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

AXES: dict[str, tuple[str, str]] = {
    "palette": ("warm", "cool"),
    "key": ("dark", "bright"),
    "layout": ("busy", "minimal"),
    "title": ("title", "no_title"),
}
TRAITS: list[str] = [t for pair in AXES.values() for t in pair]
TRAIT_AXIS: dict[str, str] = {t: a for a, pair in AXES.items() for t in pair}
GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
          "Thriller", "War", "Western"]
WORDS = ["Night", "River", "Glass", "Storm", "Summer", "Echo", "Silver", "Harbor", "Winter",
         "Garden", "Shadow", "Signal", "Paper", "Crown", "Desert", "Orbit", "Velvet", "Iron",
         "Café", "Señor", "Fiancée", "Über", "Naïve", "Déjà"]   # some Latin-1 on purpose
POSTER_SIZE = (185, 278)
T0 = 946_684_800   # 2000-01-01 UTC


@dataclasses.dataclass
class SyntheticSet:
    root: Path
    movies: dict[int, dict[str, str]]          # movie_id -> {axis: trait}
    users: dict[int, dict[str, list[str]]]     # user_id -> {"likes": [...], "dislikes": [...]}
    n_ratings: int
    params: dict = dataclasses.field(default_factory=dict)

    @property
    def posters(self) -> Path:
        return self.root / "posters"

    def has(self, movie_id: int, trait: str) -> bool:
        return self.movies[movie_id][TRAIT_AXIS[trait]] == trait


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1))
    return int(r * 255), int(g * 255), int(b * 255)


def draw_poster(traits: dict[str, str], rng: np.random.Generator, title: str = "MOVIE"):
    """Draw one poster (a PIL image) showing ``traits`` (one per axis)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    w, h = POSTER_SIZE
    warm = traits["palette"] == "warm"
    dark = traits["key"] == "dark"
    hue = lambda: (rng.uniform(-0.02, 0.12) if warm else rng.uniform(0.50, 0.70))  # noqa: E731
    # high-key needs high *lightness*: saturated blues are dark, so bright posters are pastel
    v_lo, v_hi = (0.12, 0.30) if dark else (0.90, 1.0)
    s_lo, s_hi = (0.55, 0.85) if dark else (0.22, 0.45)
    bg = _hsv(hue(), rng.uniform(s_lo, s_hi), rng.uniform(v_lo, v_hi))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)

    def shape_colour(offset: float):
        # a tone of the palette, ``offset`` away in value (towards mid-grey, keeping the key)
        v = rng.uniform(v_lo, v_hi) + (offset if dark else -offset)
        return _hsv(hue(), rng.uniform(s_lo, min(1.0, s_hi + 0.3)), v)

    if traits["layout"] == "busy":
        # many small, contrasted shapes and thin lines: a high edge density
        for _ in range(int(rng.integers(80, 111))):
            x, y = rng.uniform(-6, w), rng.uniform(-6, h)
            sz = rng.uniform(3, 10)
            col = shape_colour(rng.uniform(0.25, 0.4))
            if rng.random() < 0.5:
                d.rectangle([x, y, x + sz, y + sz * rng.uniform(0.5, 2)], fill=col)
            else:
                d.ellipse([x, y, x + sz, y + sz], fill=col)
        for _ in range(int(rng.integers(160, 211))):
            x, y = rng.uniform(-10, w), rng.uniform(-10, h)
            d.line([x, y, x + rng.uniform(-30, 30), y + rng.uniform(-30, 30)],
                   fill=shape_colour(rng.uniform(0.25, 0.4)), width=1)
    else:
        # one large soft shape on a flat background: almost no edges
        cx, cy = w / 2 + rng.uniform(-15, 15), h / 2 + rng.uniform(-20, 20)
        r = rng.uniform(40, 70)
        blob = Image.new("RGB", (w, h), bg)
        ImageDraw.Draw(blob).ellipse([cx - r, cy - r, cx + r, cy + r], fill=shape_colour(0.08))
        img = blob.filter(ImageFilter.GaussianBlur(rng.uniform(6, 12)))
        d = ImageDraw.Draw(img)

    if traits["title"] == "title":
        ink = (250, 250, 245) if dark else (15, 15, 20)
        band_y = rng.choice([int(h * 0.06), int(h * 0.66)])
        size = int(rng.integers(28, 36))
        font = ImageFont.load_default(size=size)
        words = title.upper().encode("ascii", "ignore").decode().split() or ["MOVIE"]
        lines = [" ".join(words[:2])[:9], " ".join(words[2:])[:9] or words[0][:9]]
        for i, line in enumerate(lines):
            d.text((8 + rng.uniform(0, 6), band_y + i * (size + 4)), line, fill=ink, font=font)
    return img


def _rating_utility(traits: dict[str, str], taste: dict[str, list[str]], quality: float) -> float:
    shown = set(traits.values())
    return (3.2 + 1.3 * sum(t in shown for t in taste["likes"])
            - 1.8 * sum(t in shown for t in taste["dislikes"]) + quality)


def generate(root: str | Path, *, n_movies: int = 300, n_users: int = 300, seed: int = 0,
             min_ratings: int = 25, max_ratings: int = 60, posters: bool = True) -> SyntheticSet:
    """Write the data set into ``root`` (created; existing files are overwritten)."""
    root = Path(root)
    (root / "posters").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    movies: dict[int, dict[str, str]] = {}
    movie_lines = []
    quality = {}
    for m in range(1, n_movies + 1):
        traits = {axis: pair[int(rng.integers(0, 2))] for axis, pair in AXES.items()}
        movies[m] = traits
        quality[m] = float(rng.normal(0, 0.4))
        words = rng.choice(WORDS, size=int(rng.integers(1, 4)), replace=False)
        title = f"{' '.join(words)} {m}"
        year = int(rng.integers(1950, 2001))
        genres = sorted(rng.choice(GENRES, size=int(rng.integers(1, 4)), replace=False))
        movie_lines.append(f"{m}::{title} ({year})::{'|'.join(genres)}")
        if posters:
            prng = np.random.default_rng([seed, m])
            draw_poster(traits, prng, title).save(root / "posters" / f"{m}.jpg", quality=90)

    users: dict[int, dict[str, list[str]]] = {}
    user_lines, rating_lines = [], []
    popularity = 1.0 / np.sqrt(np.arange(1, n_movies + 1))
    popularity = popularity[rng.permutation(n_movies)]
    movie_ids = np.arange(1, n_movies + 1)
    for u in range(1, n_users + 1):
        axes = list(AXES)
        order = rng.permutation(len(axes))
        n_like = int(rng.integers(1, 3))
        like_axes = [axes[i] for i in order[:n_like]]
        dislike_axis = axes[order[n_like]]
        taste = {"likes": [AXES[a][int(rng.integers(0, 2))] for a in like_axes],
                 "dislikes": [AXES[dislike_axis][int(rng.integers(0, 2))]]}
        users[u] = taste
        gender = "F" if rng.random() < 0.5 else "M"
        age = int(rng.choice([1, 18, 25, 35, 45, 50, 56]))
        user_lines.append(f"{u}::{gender}::{age}::{int(rng.integers(0, 21))}::"
                          f"{int(rng.integers(10000, 99999)):05d}")
        pick = popularity.copy()
        for i, m in enumerate(movie_ids):
            shown = set(movies[int(m)].values())
            if shown & set(taste["likes"]):
                pick[i] *= 1.6
            if shown & set(taste["dislikes"]):
                pick[i] *= 0.7
        n = int(rng.integers(min_ratings, max_ratings + 1))
        chosen = rng.choice(movie_ids, size=min(n, n_movies), replace=False, p=pick / pick.sum())
        ts = T0 + int(rng.integers(0, 200 * 86400))
        for m in chosen:
            ts += int(rng.exponential(2 * 86400)) + 1
            util = _rating_utility(movies[int(m)], taste, quality[int(m)]) + rng.normal(0, 0.6)
            r = int(min(5, max(1, round(util))))
            rating_lines.append(f"{u}::{int(m)}::{r}::{ts}")

    for name, lines in (("movies.dat", movie_lines), ("users.dat", user_lines),
                        ("ratings.dat", rating_lines)):
        (root / name).write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    truth = {"seed": seed, "traits": TRAITS, "axes": AXES,
             "params": {"n_movies": n_movies, "n_users": n_users, "seed": seed,
                        "min_ratings": min_ratings, "max_ratings": max_ratings,
                        "posters": posters},
             "movies": {str(m): t for m, t in movies.items()},
             "users": {str(u): t for u, t in users.items()}}
    (root / "truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True), encoding="utf-8")
    return SyntheticSet(root=root, movies=movies, users=users, n_ratings=len(rating_lines),
                        params=truth["params"])


def load_truth(root: str | Path) -> SyntheticSet:
    """Read back ``truth.json`` written by :func:`generate`."""
    root = Path(root)
    t = json.loads((root / "truth.json").read_text(encoding="utf-8"))
    n = sum(1 for _ in open(root / "ratings.dat", "rb"))
    return SyntheticSet(root=root, movies={int(k): v for k, v in t["movies"].items()},
                        users={int(k): v for k, v in t["users"].items()}, n_ratings=n,
                        params=t.get("params", {}))


# -- the self-check ------------------------------------------------------------------------------

MODEL_MIN_SHARE = 0.5   # the model's top-k must go at least this share of the way from chance to best


@dataclasses.dataclass
class Recovery:
    """How well the stored preferences (and a trained model's recommendations) recover the
    planted tastes. ``passed`` needs the graph check and, when a model was given, the model
    check; ``error`` is why the model could not be checked (then ``passed`` is False)."""

    mapping: list[dict]          # per trait: concept chosen for it and how well it separates
    rows: list[dict]             # per horizon and metric: recovered vs chance
    users: int
    passed: bool
    graph_passed: bool = False
    model_passed: bool | None = None   # None: no model was checked
    error: str | None = None


def trait_concepts(store, truth: SyntheticSet, min_gap: float = 0.2) -> list[dict]:
    """Which concept the tagger + vocabulary used for each planted trait.

    For every trait and concept: ``gap = mean weight on movies with the trait - mean weight on
    movies without it`` (movies with at least one concept). The trait's concept is the one with
    the largest gap; a gap below ``min_gap`` means the trait was not detected (``None``).
    This uses only the posters' planted traits, never a user's taste.
    """
    import pandas as pd

    mc = store.df("SELECT movie_id, concept_id, weight FROM movie_concept_edges")
    if mc.empty:
        return [{"trait": t, "concept_id": None, "concept": None, "gap": 0.0} for t in TRAITS]
    x = mc.pivot_table(index="movie_id", columns="concept_id", values="weight",
                       aggfunc="max", fill_value=0.0).clip(0, 1)
    names = dict(store.execute(
        "SELECT DISTINCT e.concept_id, coalesce(c.name, '') || ' (' || e.type || ')' "
        "FROM movie_concept_edges e LEFT JOIN concepts c USING (concept_id)").fetchall()) \
        if store.table_exists("concepts") else {}
    out = []
    for t in TRAITS:
        has = pd.Series([truth.has(int(m), t) if int(m) in truth.movies else False
                         for m in x.index], index=x.index)
        if has.all() or not has.any():
            out.append({"trait": t, "concept_id": None, "concept": None, "gap": 0.0})
            continue
        gap = x[has].mean() - x[~has].mean()
        c = int(gap.idxmax())
        ok = float(gap.max()) >= min_gap
        out.append({"trait": t, "concept_id": c if ok else None,
                    "concept": names.get(c, str(c)) if ok else None, "gap": float(gap.max())})
    return out


def check_recovery(store, truth: SyntheticSet, *, horizon_pass: str = "long",
                   model: Callable[[], Any] | None = None, k: int = 10) -> Recovery:
    """Score every user's planted tastes against ``user_prefs`` (and, with ``model``, against a
    trained model's recommendations: :func:`check_model`).

    Traits come in complementary pairs (warm/cool, ...), so from ratings alone "likes warm" and
    "dislikes cool" look alike: both make warm posters rate higher than cool ones. The check is
    therefore made per *axis*. For each user and horizon, each trait gets the preference score of
    its concept (0 when the trait has no concept or the user no preference for it) and each axis
    the contrast ``delta = score(first trait) - score(second trait)``. A planted like of trait
    ``t`` says the axis leans to ``t``; a planted dislike of ``d`` says it leans away from ``d``.
    Metrics, averaged over users:

    * ``direction on planted axes``: share of planted axes whose ``delta`` has the planted sign
      (chance 0.5; a 0 counts half).
    * ``planted axes stand out``: share of (planted, unplanted) axis pairs of a user where the
      planted one has the larger ``|delta|`` (an AUC; chance 0.5, ties half).
    * ``strongest axis is planted``: share of users whose largest ``|delta|`` is on a planted
      axis (chance = planted axes / 4).
    * ``liked traits scored > 0`` / ``disliked trait scored < 0``: sign of the trait's own score.

    The graph check passes when, on ``horizon_pass``, the first two metrics are at least halfway
    from chance to perfect (>= 0.75) and the third beats chance. ``model`` is a function that
    loads the trained model (anything with ``recommend(user_id, k)``); with it the whole check
    passes only if the model check passes too, and an error loading or asking the model fails it.
    """
    mapping = trait_concepts(store, truth)
    concept_of = {m["trait"]: m["concept_id"] for m in mapping}
    prefs: dict[tuple[int, str], dict[int, float]] = {}
    for u, c, h, s in store.execute(
            "SELECT user_id, concept_id, horizon, score FROM user_prefs").fetchall():
        prefs.setdefault((int(u), h), {})[int(c)] = float(s)
    in_graph = {int(u) for (u,) in store.execute(
        "SELECT DISTINCT user_id FROM user_movie_edges").fetchall()}
    users = sorted(u for u in truth.users if u in in_graph)

    def half(a: float, b: float) -> float:
        return 1.0 if a > b else (0.5 if a == b else 0.0)

    rows, passed = [], False
    for h in ("long", "short"):
        direction, auc, strongest, strongest_chance, pos, neg = [], [], [], [], [], []
        for u in users:
            taste = truth.users[u]
            p = prefs.get((u, h), {})
            score = {t: (p.get(concept_of[t], 0.0) if concept_of[t] is not None else 0.0)
                     for t in TRAITS}
            delta = {a: score[t1] - score[t2] for a, (t1, t2) in AXES.items()}
            lean = {}   # axis -> +1 if the planted taste favours its first trait, else -1
            for t in taste["likes"]:
                lean[TRAIT_AXIS[t]] = 1 if AXES[TRAIT_AXIS[t]][0] == t else -1
            for t in taste["dislikes"]:
                lean[TRAIT_AXIS[t]] = -1 if AXES[TRAIT_AXIS[t]][0] == t else 1
            direction += [half(lean[a] * delta[a], 0.0) for a in lean]
            other = [a for a in AXES if a not in lean]
            auc += [half(abs(delta[a]), abs(delta[b])) for a in lean for b in other]
            top = max(abs(v) for v in delta.values())
            best = [a for a in AXES if abs(delta[a]) == top]
            strongest.append(sum(a in lean for a in best) / len(best))
            strongest_chance.append(len(lean) / len(AXES))
            pos += [score[t] > 0 for t in taste["likes"]]
            neg += [score[t] < 0 for t in taste["dislikes"]]
        mean = lambda v: float(np.mean(v)) if len(v) else 0.0  # noqa: E731
        r = {"direction": mean(direction), "auc": mean(auc), "strongest": mean(strongest)}
        rows += [
            {"horizon": h, "metric": "direction on planted axes", "recovered": r["direction"],
             "chance": 0.5},
            {"horizon": h, "metric": "planted axes stand out", "recovered": r["auc"],
             "chance": 0.5},
            {"horizon": h, "metric": "strongest axis is planted", "recovered": r["strongest"],
             "chance": mean(strongest_chance)},
            {"horizon": h, "metric": "liked traits scored > 0", "recovered": mean(pos),
             "chance": None},
            {"horizon": h, "metric": "disliked trait scored < 0", "recovered": mean(neg),
             "chance": None},
        ]
        if h == horizon_pass:
            passed = (bool(users) and r["direction"] >= 0.75 and r["auc"] >= 0.75
                      and r["strongest"] > mean(strongest_chance))
    rec = Recovery(mapping=mapping, rows=rows, users=len(users), passed=passed, graph_passed=passed)
    if model is not None:
        model_rows, rec.model_passed, rec.error = check_model(store, truth, model, k=k)
        rec.rows += model_rows
        rec.passed = rec.graph_passed and rec.model_passed
    return rec


def planted_utility(truth: SyntheticSet, user_id: int, movie_id: int) -> int:
    """Liked traits the movie's poster shows minus disliked traits it shows."""
    shown = set(truth.movies[movie_id].values())
    taste = truth.users[user_id]
    return sum(t in shown for t in taste["likes"]) - sum(t in shown for t in taste["dislikes"])


def check_model(store, truth: SyntheticSet, load: Callable[[], Any], k: int = 10
                ) -> tuple[list[dict], bool, str | None]:
    """Planted utility of every user's top-``k`` recommendations: ``(rows, passed, error)``.

    For each user with train/valid ratings: the mean :func:`planted_utility` of the model's top
    ``k`` (``load().recommend(user_id, k)``), of all the user's unseen movies (chance) and of
    the ``k`` best unseen movies (the best any model could do). Passes when the model's mean is
    at least :data:`MODEL_MIN_SHARE` of the way from chance to best. Loading or asking the model
    failing, an unknown movie, a movie the user already rated, a repeated movie or fewer than
    ``k`` movies where ``k`` are unseen is an ``error`` (and a failure).
    """
    seen: dict[int, set[int]] = {}
    for u, m in store.execute("SELECT user_id, movie_id FROM split WHERE part <> 'test'").fetchall():
        seen.setdefault(int(u), set()).add(int(m))
    users = [u for u in sorted(seen) if u in truth.users]
    if not users:
        return [], False, "no user of the generated set has train/valid ratings"
    try:
        model = load()
    except Exception as exc:  # noqa: BLE001 - reported as the check's error
        return [], False, f"loading the trained model failed: {type(exc).__name__}: {exc}"
    rec_u, rand_u, best_u = [], [], []
    for u in users:
        try:
            recs = [int(m) for m, _ in model.recommend(u, k)]
        except Exception as exc:  # noqa: BLE001 - reported as the check's error
            return [], False, f"recommend(user {u}, k={k}) failed: {type(exc).__name__}: {exc}"
        unseen = [m for m in truth.movies if m not in seen[u]]
        bad = ([m for m in recs if m not in truth.movies], [m for m in recs if m in seen[u]])
        if bad[0] or bad[1] or len(set(recs)) != len(recs) or len(recs) != min(k, len(unseen)):
            return [], False, (f"recommend(user {u}, k={k}) returned {recs}: "
                               + (f"unknown movies {bad[0]}" if bad[0] else
                                  f"movies the user already rated {bad[1]}" if bad[1] else
                                  f"{len(set(recs))} distinct movies, {min(k, len(unseen))} expected"))
        if not unseen:
            continue
        utilities = sorted((planted_utility(truth, u, m) for m in unseen), reverse=True)
        rec_u.append(float(np.mean([planted_utility(truth, u, m) for m in recs])))
        rand_u.append(float(np.mean(utilities)))
        best_u.append(float(np.mean(utilities[:k])))
    got, chance, best = float(np.mean(rec_u)), float(np.mean(rand_u)), float(np.mean(best_u))
    share = (got - chance) / (best - chance) if best > chance else 0.0
    rows = [
        {"horizon": "model", "metric": f"planted utility of top-{k} (likes - dislikes shown)",
         "recovered": got, "chance": chance},
        {"horizon": "model", "metric": f"share of the way from chance to the best top-{k} ({best:.2f})",
         "recovered": share, "chance": 0.0},
    ]
    return rows, share >= MODEL_MIN_SHARE, None
