"""Explanation paths of a recommendation, weighted by the model.

Two path shapes end at the recommended movie M:

* ``pref``:   user -[likes|dislikes, long|short]-> concept c -[has]-> M   (table ``user_prefs``)
* ``liked``:  user -[pos]-> liked movie m' -[has]-> c -[has]-> M        (train positives of
  ``user_movie_edges`` and ``movie_concept_edges``); ``disliked`` likewise through the user's
  negative ratings.

Weights. With a model (``method = "gradient"``, default) each edge gets its gradient x input
attribution ``a`` (:mod:`posterkg.explain.attribution`) and a path weighs the sum of its edges:

* pref path:   ``a(M,c) + a(u,c) * |s_h| / sum_h |s_h|``  (the user-concept edge shared between
  the long- and short-term preference it stands for)
* liked path:  ``a(M,c) + a(m',c) + a(u,m') * w(m',c) / sum_c' w(m',c')`` (the interaction edge
  shared out over the liked movie's concepts)

and a concept's relevance ``R(c)`` is the sum over the distinct edges of all its paths. A sentence
cites the concepts with the largest positive ``R`` (and, against, the most negative ``R`` on a
dislike path). ``method = "occlusion"`` measures ``a(M,c)`` exactly by deleting the edges and
re-scoring (user-side terms 0). ``method = "graph"`` (also the fallback when the model exposes no
usable gradient) uses graph weights only: ``score_h(u,c) * w(M,c)`` for pref paths and
``w(m',c) * w(M,c) * r / n_liked`` for liked paths (``r`` = 1 if m' is recent, else 0.5).
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from typing import Any

import numpy as np

from posterkg.errors import InputError
from posterkg.explain import ExplainConfig
from posterkg.store import Store


# "Matrix, The" / "Affair to Remember, An" / "Grand Illusion, La (...)" -> article first
_TRAILING_ARTICLE = re.compile(r"^(.+), (The|A|An|La|Le|Les|L'|Il|Das|Der|Die|El|Los|Las)((?: \(.*\))?)$")


# -- the tables an explanation reads -------------------------------------------------------------
class Knowledge:
    """Titles, concepts and movie-concept edges in memory; per-user rows on demand.

    ``interests``: which stored interests (``user_interests``) explanations and profiles cite
    (``[explain] interests``): ``"auto"`` (the graph's own when it was built with ``[graph]
    user_interests``, else the latest ``stats`` extraction of the graph's vocabulary, else none),
    ``"off"``, or a backend name / run id (:func:`posterkg.interests.edges.resolve`). When the
    graph's user -> concept edges are those interests, the preference paths use them too
    (score = +/- confidence), since they are the graph's edges."""

    def __init__(self, store: Store, interests: str = "auto"):
        for t in ("movies", "movie_concept_edges"):
            if not store.table_exists(t):
                raise InputError(f"table {t} is missing; run `posterkg graph build` first")
        self.store = store
        mv = store.df("SELECT movie_id, title, year, genres FROM movies")
        self.titles: dict[int, str] = dict(zip(mv.movie_id.astype(int), mv.title.astype(str)))
        self.years: dict[int, Any] = dict(zip(mv.movie_id.astype(int), mv.year))
        self.genres: dict[int, list[str]] = {int(m): list(g) if g is not None else []
                                             for m, g in zip(mv.movie_id, mv.genres)}
        mc = store.df("SELECT movie_id, concept_id, type, weight FROM movie_concept_edges")
        self.concept_type: dict[int, str] = dict(zip(mc.concept_id.astype(int), mc.type.astype(str)))
        self.concept_name: dict[int, str] = {}
        if store.table_exists("concepts"):
            cc = store.df("SELECT concept_id, type, name FROM concepts")
            self.concept_name = dict(zip(cc.concept_id.astype(int), cc.name.astype(str)))
            for c, t in zip(cc.concept_id.astype(int), cc.type.astype(str)):
                self.concept_type.setdefault(c, t)
        self.movie_concepts: dict[int, dict[int, float]] = defaultdict(dict)
        for m, c, w in zip(mc.movie_id.to_numpy(), mc.concept_id.to_numpy(), mc.weight.to_numpy()):
            self.movie_concepts[int(m)][int(c)] = float(w)
        self._has_prefs = store.table_exists("user_prefs")
        self._has_edges = store.table_exists("user_movie_edges")
        from posterkg.interests.edges import resolve

        self.interest_source = resolve(store, interests)

    def title(self, movie_id: int) -> str:
        """Display title: MovieLens' "Matrix, The" becomes "The Matrix"."""
        t = self.titles.get(int(movie_id))
        if t is None:
            return f"movie {movie_id}"
        m = _TRAILING_ARTICLE.match(t)
        return f"{m.group(2)} {m.group(1)}{m.group(3)}" if m else t

    def name(self, concept_id: int) -> str:
        return self.concept_name.get(int(concept_id), f"concept {concept_id}")

    def ctype(self, concept_id: int) -> str:
        return self.concept_type.get(int(concept_id), "Others")

    def concepts_of(self, movie_id: int) -> dict[int, float]:
        return self.movie_concepts.get(int(movie_id), {})

    def interactions(self, user_id: int, sign: int):
        """The user's train interactions with this sign, newest first (movie_id, rating, ts)."""
        if not self._has_edges:
            raise InputError("table user_movie_edges is missing; run `posterkg graph build` first")
        return self.store.df(
            "SELECT movie_id, rating, ts FROM user_movie_edges WHERE user_id = ? AND sign = ? "
            "ORDER BY ts DESC, movie_id", [int(user_id), int(sign)])

    def recent_movies(self, user_id: int, n: int) -> list[int]:
        """The user's last ``n`` train interactions of any sign (the short-term horizon of
        ``user_prefs``, whose window is ``[graph] short_n``), newest first."""
        return self.store.df(
            "SELECT movie_id FROM user_movie_edges WHERE user_id = ? ORDER BY ts DESC, movie_id DESC LIMIT ?",
            [int(user_id), int(n)]).movie_id.astype(int).tolist()

    @property
    def prefs_source(self) -> str:
        """Where :meth:`prefs` comes from: 'user_prefs' or 'user_interests'."""
        src = self.interest_source
        return "user_interests" if src is not None and src.from_graph else "user_prefs"

    def interests(self, user_id: int) -> list:
        """The user's stored interests of :attr:`interest_source` (strongest first), evidence
        ids as stored, with titles; [] when no interests are used."""
        from posterkg.explain.interests import Interest
        from posterkg.interests.edges import load_interests

        src = self.interest_source
        if src is None:
            return []
        df = load_interests(self.store, src, user_id)
        return [Interest(int(c), self.name(c), self.ctype(c), str(h), str(p), float(conf),
                         [(int(m), self.title(m)) for m in (ev if ev is not None else [])],
                         src.backend, src.model, str(run))
                for c, h, p, conf, ev, run in zip(df.concept_id, df.horizon, df.polarity, df.confidence,
                                                   df.evidence, df.run_id)]

    def prefs(self, user_id: int):
        """The user's concept preferences (concept_id, horizon, score, support): ``user_prefs``,
        or, when the graph's user -> concept edges are stored interests, those interests
        (score = +confidence for likes, -confidence for dislikes; support = evidence movies)."""
        if self.prefs_source == "user_interests":
            import pandas as pd

            rows: dict[tuple[int, str], list[float]] = {}
            for it in self.interests(user_id):
                acc = rows.setdefault((it.concept_id, it.horizon), [0.0, 0])
                acc[0] += it.sign * it.confidence
                acc[1] += len(it.evidence)
            return pd.DataFrame([(c, h, s, n) for (c, h), (s, n) in rows.items() if s != 0],
                                columns=["concept_id", "horizon", "score", "support"])
        if not self._has_prefs:
            import pandas as pd

            return pd.DataFrame({"concept_id": [], "horizon": [], "score": [], "support": []})
        return self.store.df("SELECT concept_id, horizon, score, support FROM user_prefs WHERE user_id = ?",
                             [int(user_id)])

    def known_user(self, user_id: int) -> bool:
        return bool(self.store.scalar("SELECT count(*) FROM users WHERE user_id = ?", [int(user_id)])) \
            if self.store.table_exists("users") else True

    def check_movie(self, movie_id: int) -> None:
        if int(movie_id) not in self.titles:
            raise InputError(f"unknown movie {movie_id}")

    def check_user(self, user_id: int) -> None:
        if not self.known_user(user_id):
            raise InputError(f"unknown user {user_id}")


# -- results -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Path:
    kind: str                 # 'pref' | 'liked' | 'disliked'
    concept_id: int
    concept: str              # concept name
    ctype: str                # knowledge type
    horizon: str | None       # 'long' | 'short' for pref paths
    via_movie: int | None     # the liked / disliked movie of liked / disliked paths
    via_title: str | None
    recent: bool              # short-term preference, or a liked movie among the recent ones
    graph_weight: float       # signed graph-only weight
    weight: float             # the weight used for ranking (model or graph), signed

    def describe(self) -> str:
        if self.kind == "pref":
            verb = "likes" if self.graph_weight >= 0 else "dislikes"
            return f"user -{verb} ({self.horizon})-> {self.concept} [{self.ctype}] -> movie"
        verb = "liked" if self.kind == "liked" else "disliked"
        return f"user -{verb}-> {self.via_title} -> {self.concept} [{self.ctype}] -> movie"


@dataclasses.dataclass
class ConceptEvidence:
    concept_id: int
    concept: str
    ctype: str
    relevance: float          # R(c), signed
    movie_edge: float         # a(M, c): the model's (or graph's) weight of the movie's own edge
    pref_long: float          # user_prefs scores (0 when absent)
    pref_short: float
    liked: list[tuple[int, str, bool]]     # (movie_id, title, recent), strongest first
    disliked: list[tuple[int, str, bool]]
    # the model's own horizon for this concept (sequence models): "short" when its short-term part
    # carries more of the movie edge's attribution than its long-term part, else "long"; None when
    # the model has no such split
    model_horizon: str | None = None
    # the user's stored interests in this concept (posterkg.explain.interests.Interest) whose
    # polarity matches the side the concept is cited on (likes when cited for, dislikes when
    # against); filled only for cited concepts
    interests: list = dataclasses.field(default_factory=list)

    @property
    def on_positive_path(self) -> bool:
        return bool(self.liked) or self.pref_long > 0 or self.pref_short > 0

    @property
    def on_negative_path(self) -> bool:
        return bool(self.disliked) or self.pref_long < 0 or self.pref_short < 0


@dataclasses.dataclass
class Explanation:
    user_id: int
    movie_id: int
    title: str
    score: float | None
    method: str                        # 'gradient' | 'occlusion' | 'graph'
    note: str                          # why a fallback was used, if one was
    paths: list[Path]                  # strongest first (by |weight|)
    concepts: list[ConceptEvidence]    # all concepts of the movie, by relevance
    cited: list[ConceptEvidence]       # concepts the positive sentence cites
    against: list[ConceptEvidence]     # concepts the negative sentence cites
    sentences: list[str] = dataclasses.field(default_factory=list)
    # sequence models: the score's short-term and long-term parts ({"short", "long", "gate"})
    horizon: dict | None = None
    # the stored interests used (Knowledge.interest_source.label()), None when none are
    interest_source: str | None = None
    # profile context, NOT a reason: the user's interests in concepts of this movie that the
    # attribution did not cite (they did not push this score the way the interest points)
    context_interests: list = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- the explainer -------------------------------------------------------------------------------
class Explainer:
    """Explain (user, movie) pairs with a scorer (model) or the graph alone."""

    def __init__(self, knowledge: Knowledge, scorer=None, cfg: ExplainConfig | None = None):
        self.k = knowledge
        self.scorer = scorer
        self.cfg = cfg or ExplainConfig()
        self._user_cache: dict[int, tuple] = {}
        self._attributor = None     # one forward per user, one backward per explained movie

    def _user(self, user_id: int):
        if user_id not in self._user_cache:
            if len(self._user_cache) > 64:
                self._user_cache.clear()
            pos = self.k.interactions(user_id, +1)
            neg = self.k.interactions(user_id, -1)
            prefs = self.k.prefs(user_id)
            recent = set(self.k.recent_movies(user_id, self.cfg.recent))
            pref = defaultdict(dict)
            for c, h, s in zip(prefs.concept_id, prefs.horizon, prefs.score):
                pref[int(c)][str(h)] = float(s)
            self._user_cache[user_id] = (pos.movie_id.astype(int).tolist(), neg.movie_id.astype(int).tolist(),
                                         recent, dict(pref), self.k.interests(user_id))
        return self._user_cache[user_id]

    def explain(self, user_id: int, movie_id: int) -> Explanation:
        from posterkg.explain.sentences import explain_sentences

        user_id, movie_id = int(user_id), int(movie_id)
        self.k.check_movie(movie_id)
        liked, disliked, recent, pref, interests = self._user(user_id)
        mconc = self.k.concepts_of(movie_id)

        # 1. enumerate paths with their graph weights
        paths: list[Path] = []
        for c, hs in pref.items():
            if c not in mconc:
                continue
            for h, s in hs.items():
                paths.append(self._path("pref", c, h, None, h == "short", s * mconc[c]))
        for kind, movies, sign in (("liked", liked, 1.0), ("disliked", disliked, -1.0)):
            n = max(len(movies), 1)
            for m in movies:
                if m == movie_id:
                    continue
                mc2 = self.k.concepts_of(m)
                for c in mc2.keys() & mconc.keys():
                    r = 1.0 if m in recent else 0.5
                    paths.append(self._path(kind, c, None, m, m in recent,
                                            sign * mc2[c] * mconc[c] * r / n))

        # 2. weight them by the model
        method, note, att, score = self._attribute(user_id, movie_id, mconc, liked + disliked)
        if att is None:
            for p in paths:
                p.weight = p.graph_weight
        else:
            aM = {c: att.movie_concept.get((movie_id, c), 0.0) for c in mconc}
            pref_abs = {c: sum(abs(s) for s in hs.values()) or 1.0 for c, hs in pref.items()}
            share = {}
            for m in set(p.via_movie for p in paths if p.via_movie is not None):
                mc2 = self.k.concepts_of(m)
                tot = sum(mc2.values()) or 1.0
                share[m] = {c: w / tot for c, w in mc2.items()}
            for p in paths:
                c = p.concept_id
                if p.kind == "pref":
                    s_h = pref[c][p.horizon]
                    p.weight = aM[c] + att.user_concept.get(c, 0.0) * abs(s_h) / pref_abs[c]
                else:
                    m = p.via_movie
                    p.weight = (aM[c] + att.movie_concept.get((m, c), 0.0)
                                + att.user_movie.get(m, 0.0) * share[m].get(c, 0.0))

        # 3. concept relevance
        by_c: dict[int, list[Path]] = defaultdict(list)
        for p in paths:
            by_c[p.concept_id].append(p)
        evidence = []
        for c, w in mconc.items():
            ps = by_c.get(c, [])
            if att is None:
                rel = sum(p.graph_weight for p in ps)
                edge = rel  # graph-only: every path runs through the movie's edge
            else:
                edge = att.movie_concept.get((movie_id, c), 0.0)
                rel = edge + att.user_concept.get(c, 0.0) + sum(
                    att.movie_concept.get((p.via_movie, c), 0.0)
                    + att.user_movie.get(p.via_movie, 0.0) * share[p.via_movie].get(c, 0.0)
                    for p in ps if p.via_movie is not None)
            evidence.append(ConceptEvidence(
                concept_id=c, concept=self.k.name(c), ctype=self.k.ctype(c), relevance=float(rel),
                movie_edge=float(edge), pref_long=pref.get(c, {}).get("long", 0.0),
                pref_short=pref.get(c, {}).get("short", 0.0),
                liked=self._examples(ps, "liked"), disliked=self._examples(ps, "disliked")))
        split = self._horizon(user_id, movie_id)
        if split is not None:
            cidx, _ = self.scorer.ids.lookup("concept", [int(e.concept_id) for e in evidence])
            for e, ci in zip(evidence, cidx.tolist()):
                a = split.concepts.get(ci)              # -1 (not in the vocabulary): no entry
                if a is not None:
                    e.model_horizon = "short" if abs(a[0]) >= abs(a[1]) else "long"
        evidence.sort(key=lambda e: -e.relevance)
        # cite a concept for the movie only when the movie's own edge to it pushes the score the
        # same way as its paths ("this one shares it" must help); rank by path relevance or by
        # the movie edge alone ([explain] rank)
        key = (lambda e: e.relevance) if self.cfg.rank == "path" else (lambda e: e.movie_edge)
        cited = sorted((e for e in evidence if e.relevance > 0 and e.movie_edge > 0 and e.on_positive_path),
                       key=lambda e: -key(e))[: self.cfg.cite]
        against = sorted((e for e in evidence if e.relevance < 0 and e.movie_edge < 0 and e.on_negative_path),
                         key=key)[: self.cfg.cite]
        paths.sort(key=lambda p: -abs(p.weight))
        # stored interests: cited only with a concept the attribution cites, on its side (a
        # liking with a concept cited for, a dislike with one cited against); the user's other
        # interests in this movie's concepts are profile context, kept apart
        by_concept: dict[int, list] = defaultdict(list)
        for it in interests:
            by_concept[it.concept_id].append(it)
        used = set()
        for group, polarity in ((cited, "likes"), (against, "dislikes")):
            for e in group:
                # the most confident first; on a tie the horizon the sentence speaks of (recent
                # when the concept's cited movies or the model's split are short-term)
                shown = e.liked if polarity == "likes" else e.disliked
                short = (e.model_horizon == "short" if e.model_horizon is not None
                         else any(r for _, _, r in shown[: self.cfg.examples]))
                e.interests = sorted((it for it in by_concept.get(e.concept_id, []) if it.polarity == polarity),
                                     key=lambda it: (-it.confidence, (it.horizon == "short") != short))
                used.update(id(it) for it in e.interests)
        context = [it for c in mconc for it in by_concept.get(c, []) if id(it) not in used]
        context.sort(key=lambda it: (-it.confidence, it.concept_id, it.horizon, it.polarity))
        src = self.k.interest_source
        ex = Explanation(user_id, movie_id, self.k.title(movie_id), score, method, note, paths,
                         evidence, cited, against,
                         horizon=None if split is None else {"short": split.short, "long": split.long,
                                                             "gate": split.gate},
                         interest_source=None if src is None else src.label(),
                         context_interests=context)
        ex.sentences = explain_sentences(ex, self.cfg)
        return ex

    def _horizon(self, user_id: int, movie_id: int):
        """The model's own short/long split of this score (sequence models), else None."""
        from posterkg.explain import attribution as A

        tm = self.scorer
        if tm is None or getattr(tm.model, "explain_parts", None) is None:
            return None
        (u,), (u_ok,) = tm.ids.lookup("user", [user_id])
        (m,), (m_ok,) = tm.ids.lookup("movie", [movie_id])
        if not (u_ok and m_ok):
            return None
        return A.horizon_split(tm, int(u), int(m))

    def _path(self, kind, c, horizon, via, recent, gw) -> Path:
        return Path(kind=kind, concept_id=c, concept=self.k.name(c), ctype=self.k.ctype(c), horizon=horizon,
                    via_movie=via, via_title=None if via is None else self.k.title(via), recent=bool(recent),
                    graph_weight=float(gw), weight=float(gw))

    def _examples(self, ps: list[Path], kind: str) -> list[tuple[int, str, bool]]:
        sel = sorted((p for p in ps if p.kind == kind), key=lambda p: (-p.recent, -abs(p.weight)))
        out, seen = [], set()
        for p in sel:
            if p.via_movie not in seen:
                seen.add(p.via_movie)
                out.append((p.via_movie, p.via_title, p.recent))
        return out

    def _attribute(self, user_id, movie_id, mconc, movies):
        """(method, note, EdgeAttribution keyed by database ids | None, score)."""
        from posterkg.explain import attribution as A

        method = self.cfg.method
        tm = self.scorer
        if tm is None:
            return "graph", "no trained model: paths weighted by the graph alone", None, None
        ids = tm.ids
        (u,), (u_ok,) = ids.lookup("user", [user_id])
        (m,), (m_ok,) = ids.lookup("movie", [movie_id])
        if not (u_ok and m_ok):
            return "graph", f"user or movie not known to model {tm.model_id}: graph weights", None, None
        ok, why = A.uses_graph(tm)
        if not ok or method == "graph" or not A.has_concept_edges(tm):
            score = float(tm.score([user_id], [movie_id])[0, 0])
            if not ok:
                return "graph", why + ": graph weights", None, score
            if method == "graph":
                return "graph", "", None, score
            return "graph", "the model's graph has no concept edges: graph weights", None, score
        if method == "gradient":
            if self._attributor is None or self._attributor.tm is not tm:
                self._attributor = A.Attributor(tm, interactions=self.cfg.interactions)
            others, okk = ids.lookup("movie", movies)
            att = self._attributor.attributions(u, m, others[okk].tolist())
            if att is not None:
                return "gradient", "", self._to_ids(att), att.score
            note = "the model gives no gradient w.r.t. its edge weights: occlusion used"
        else:
            note = ""
        cidx, cok = ids.lookup("concept", list(mconc))
        att = A.occlusion_attributions(tm, u, m, cidx[cok].tolist())
        if not any(abs(v) > 1e-12 for v in att.movie_concept.values()):
            return "graph", "the model's score does not depend on concept edges: graph weights", None, att.score
        return "occlusion", note, self._to_ids(att), att.score

    def _to_ids(self, att):
        """An index-space EdgeAttribution keyed by database ids (for the tables' paths)."""
        from posterkg.explain.attribution import EdgeAttribution

        ids = self.scorer.ids
        mid, cid = ids.movie_ids, ids.concept_ids
        return EdgeAttribution({(int(mid[m]), int(cid[c])): v for (m, c), v in att.movie_concept.items()},
                               {int(cid[c]): v for c, v in att.user_concept.items()},
                               {int(mid[m]): v for m, v in att.user_movie.items()}, att.method, att.score)


def top_concepts(ex: Explanation, n: int) -> list[int]:
    """The concept ids an explanation cites (positive first), at most n."""
    return [e.concept_id for e in ex.cited][:n]


def movie_concept_matrix(knowledge: Knowledge, movie_ids: np.ndarray):
    """Sparse (movies x concepts) weight matrix in the order of ``movie_ids``; concept id order."""
    from scipy import sparse

    cids = sorted(knowledge.concept_type)
    cpos = {c: i for i, c in enumerate(cids)}
    rows, cols, vals = [], [], []
    for r, m in enumerate(movie_ids):
        for c, w in knowledge.concepts_of(int(m)).items():
            rows.append(r)
            cols.append(cpos[c])
            vals.append(w)
    return sparse.csr_matrix((vals, (rows, cols)), shape=(len(movie_ids), len(cids))), np.array(cids)
