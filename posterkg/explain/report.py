"""Self-contained HTML reports: one file, no network, no JavaScript.

* user page: the visual profile as an inline SVG bar chart (long vs short term share per concept,
  grouped by knowledge type), what changed, the user's stored interests (``user_interests``) with
  their evidence movies, the recommendations with their reasons (and, apart, the interests in a
  recommendation's concepts that are profile context, not reasons), the posters the user liked
  recently;
* movie page: the poster, its knowledge points (``raw_points``) and concepts, the similar movies
  with the concepts they share.

Posters are embedded as JPEG thumbnails in ``data:image/jpeg;base64`` URIs (Pillow resizes them).
The page is rendered with Jinja2 (autoescaping on) from ``report_template.html``.
"""

from __future__ import annotations

import base64
import html
import io
from importlib import resources
from pathlib import Path
from typing import Any

from posterkg.explain import ExplainConfig
from posterkg.explain.paths import Explainer, Knowledge
from posterkg.explain.interests import interest_phrase
from posterkg.explain.profile import Profile, user_profile
from posterkg.explain.similar import Similar
from posterkg.explain.sentences import concept_phrase
from posterkg.store import Store


# -- posters -------------------------------------------------------------------------------------
class Posters:
    """Poster thumbnails as data URIs, from the ``posters`` table (status 'ok')."""

    def __init__(self, store: Store, width: int = 120):
        self.width = width
        self.paths: dict[int, Path] = {}
        if store.table_exists("posters"):
            base = Path(store.path).resolve().parent
            for m, p in store.execute("SELECT movie_id, path FROM posters WHERE status = 'ok' AND path IS NOT NULL").fetchall():
                pp = Path(p)
                self.paths[int(m)] = pp if pp.is_absolute() else base / pp
        self._cache: dict[tuple[int, int], str | None] = {}

    def thumb(self, movie_id: int, width: int | None = None) -> str | None:
        w = width or self.width
        key = (int(movie_id), w)
        if key not in self._cache:
            self._cache[key] = self._make(int(movie_id), w)
        return self._cache[key]

    def _make(self, movie_id: int, width: int) -> str | None:
        from PIL import Image

        p = self.paths.get(movie_id)
        if p is None or not p.is_file():
            return None
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                h = max(1, round(im.height * width / im.width))
                im = im.resize((width, h), Image.LANCZOS) if im.width > width else im
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=82, optimize=True)
        except OSError:
            return None
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# -- chart ---------------------------------------------------------------------------------------
def profile_svg(profile: Profile, top: int = 4, width: int = 1080) -> str:
    """Horizontal bar chart: per knowledge type, its top concepts with a long-term bar (blue) and
    a short-term bar (orange), lengths = shares."""
    groups = profile.by_type(top)
    label_w, row_h, gap = 300, 22, 14
    bar_w = width - label_w - 70
    y = 8
    parts = []
    for ctype, g in groups.items():
        parts.append(f'<text x="0" y="{y + 12}" font-weight="600" font-size="13">{html.escape(ctype.replace("_", " "))}</text>')
        y += 18
        for r in g.itertuples():
            name = html.escape(str(r.concept))
            parts.append(f'<text x="12" y="{y + 14}" font-size="12.5"><title>{name}</title>{html.escape(_clip(str(r.concept), 40))}</text>')
            for k, (share, color) in enumerate(((r.long_share, "#34558b"), (r.short_share, "#e39b3b"))):
                yy = y + 2 + k * 9
                w = max(0.0, float(share)) * bar_w
                parts.append(f'<rect class="bar {"long" if k == 0 else "short"}" x="{label_w}" y="{yy}" '
                             f'width="{w:.1f}" height="8" fill="{color}"><title>{name}: '
                             f'{"long" if k == 0 else "short"} term {share:.0%}</title></rect>')
                if share > 0:
                    parts.append(f'<text x="{label_w + w + 4:.1f}" y="{yy + 8}" font-size="10" fill="#5d6778">{share:.0%}</text>')
            y += row_h
        y += gap
    if not groups:
        parts.append('<text x="0" y="20" font-size="13">No concept preferences yet.</text>')
        y = 30
    return (f'<svg id="profile-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" '
            f'viewBox="0 0 {width} {y}" role="img" aria-label="Visual profile chart" '
            f'font-family="system-ui, sans-serif">' + "".join(parts) + "</svg>")


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "\u2026"


# -- recommendations without a model ------------------------------------------------------------
def graph_recommend(store: Store, user_id: int, k: int) -> list[tuple[int, float]]:
    """Graph-only ranking used when there is no trained model: sum over concepts of the user's
    (long + short) preference times the movie's concept weight, over movies not rated in train."""
    if not store.table_exists("user_prefs"):
        return []
    rows = store.execute(
        """
        WITH p AS (SELECT concept_id, sum(score) AS s FROM user_prefs WHERE user_id = ? GROUP BY concept_id)
        SELECT e.movie_id, sum(p.s * e.weight) AS score
        FROM movie_concept_edges e JOIN p USING (concept_id)
        WHERE e.movie_id NOT IN (SELECT movie_id FROM user_movie_edges WHERE user_id = ?)
        GROUP BY e.movie_id ORDER BY score DESC, e.movie_id LIMIT ?
        """, [int(user_id), int(user_id), int(k)]).fetchall()
    return [(int(m), float(s)) for m, s in rows]


# -- pages ---------------------------------------------------------------------------------------
def _render(**ctx: Any) -> str:
    import jinja2

    from posterkg import __version__

    src = resources.files("posterkg.explain").joinpath("report_template.html").read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(src).render(version=__version__, **ctx)


def _genres(k: Knowledge, m: int) -> str:
    return ", ".join(k.genres.get(int(m), []))


def _title_year(k: Knowledge, m: int) -> str:
    t = k.title(m)
    y = k.years.get(int(m))
    return t if y is None or str(y) in t or y != y else f"{t} ({int(y)})"


def user_report(store: Store, user_id: int, model=None, cfg: ExplainConfig | None = None,
                knowledge: Knowledge | None = None, model_id: str | None = None) -> str:
    """HTML of the user page."""
    cfg = cfg or ExplainConfig()
    k = knowledge or Knowledge(store)
    k.check_user(user_id)
    posters = Posters(store, cfg.thumb_width)
    prof = user_profile(k, user_id, cfg)
    if model is not None:
        recs = model.recommend(int(user_id), k=cfg.report_k)
        rec_note = f"Top {len(recs)} of model {model_id}." if model_id else f"Top {len(recs)} of the model."
    else:
        recs = graph_recommend(store, user_id, cfg.report_k)
        rec_note = "No trained model: ranked by the visual profile alone (graph-only)."
    ex = Explainer(k, model, cfg)
    rows = []
    for m, s in recs:
        e = ex.explain(user_id, m)
        rows.append(dict(movie_id=m, title=_title_year(k, m), score=float(s), genres=_genres(k, m),
                         thumb=posters.thumb(m), reasons=e.sentences, cited=e.cited, against=e.against,
                         method=e.method,
                         context=[interest_phrase(it, cfg.examples) for it in e.context_interests[: cfg.cite]]))
    methods = sorted({r["method"] for r in rows})
    if methods:
        rec_note += f" Paths weighted by: {', '.join(methods)}."
    liked = k.interactions(user_id, +1).movie_id.astype(int).tolist()[: cfg.recent_posters]
    liked_rows = [dict(movie_id=m, title=_title_year(k, m), thumb=posters.thumb(m, int(cfg.thumb_width * 0.8)))
                  for m in liked]
    return _render(kind="user", page_title=f"posterkg: user {user_id}",
                   subtitle=f"Visual profile and recommendations for user {user_id}",
                   thumb_width=cfg.thumb_width, recent=cfg.recent, profile=prof,
                   profile_svg=profile_svg(prof), profile_summary=prof.summary(),
                   recs=rows, rec_note=rec_note, liked=liked_rows,
                   interest_source=prof.interest_source,
                   interests=[dict(ctype=t, rows=[dict(horizon=h, polarity=pol, concept=it.concept,
                                                       confidence=it.confidence,
                                                       evidence=[title for _, title in it.evidence])
                                                  for (h, pol), items in groups.items() for it in items])
                              for t, groups in prof.interests_by_type(cfg.cite * 2).items()])


def movie_report(store: Store, movie_id: int, model=None, cfg: ExplainConfig | None = None,
                 knowledge: Knowledge | None = None) -> str:
    """HTML of the movie page."""
    cfg = cfg or ExplainConfig()
    k = knowledge or Knowledge(store)
    k.check_movie(movie_id)
    posters = Posters(store, cfg.thumb_width)
    points = []
    if store.table_exists("raw_points"):
        points = [dict(type=t, value=v, confidence=float(c or 0.0)) for t, v, c in store.execute(
            "SELECT type, value, max(confidence) FROM raw_points WHERE movie_id = ? "
            "GROUP BY type, value ORDER BY type, max(confidence) DESC, value", [int(movie_id)]).fetchall()]
    concepts = [dict(concept_id=c, concept=k.name(c), ctype=k.ctype(c), weight=w)
                for c, w in sorted(k.concepts_of(movie_id).items(), key=lambda t: -t[1])]
    sim = Similar(k, model)
    neigh = sim.neighbours(movie_id, cfg.similar_k)
    sim_rows = []
    for n in neigh:
        shared = [concept_phrase(t, name, article=False) for _, name, t, _ in n.shared[:3]]
        sim_rows.append(dict(movie_id=n.movie_id, title=_title_year(k, n.movie_id), similarity=n.similarity,
                             thumb=posters.thumb(n.movie_id), shared=n.shared,
                             shared_text=", ".join(shared)))
    note = ("Nearest neighbours of the model's learned movie embeddings (cosine)." if sim.source == "model"
            else "No trained model: nearest neighbours by poster concepts (cosine of concept weights).")
    return _render(kind="movie", page_title=f"posterkg: {_title_year(k, movie_id)}",
                   subtitle=f"Movie {movie_id}: knowledge points and similar movies",
                   thumb_width=cfg.thumb_width,
                   movie=dict(title=_title_year(k, movie_id), genres=_genres(k, movie_id),
                              thumb=posters.thumb(movie_id, cfg.thumb_width * 2)),
                   points=points, concepts=concepts, similar=sim_rows, sim_note=note)


def write_report(html_text: str, out: str | Path) -> Path:
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(html_text, encoding="utf-8")
    return p
