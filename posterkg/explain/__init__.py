"""Explanations, visual profiles, similar movies and the HTML report.

* :mod:`posterkg.explain.paths`: enumerate the paths user -> concept -> movie (through
  ``user_prefs``) and user -> liked movie -> concept -> movie (through the train positives and
  ``movie_concept_edges``), weighted by the model (gradient x input on a differentiable edge mask,
  see :mod:`posterkg.explain.attribution`) or, without a model, by the graph alone.
* :mod:`posterkg.explain.sentences`: plain sentences, positive and negative.
* :mod:`posterkg.explain.profile`: long- vs short-term concept shares per knowledge type, and the
  user's stored interests (``user_interests``) with their evidence movies.
* :mod:`posterkg.explain.interests`: a stored interest as explanations cite it.
* :mod:`posterkg.explain.similar`: item-item neighbours from the learned movie embeddings.
* :mod:`posterkg.explain.report`: one self-contained HTML page (posters as data URIs, SVG chart).
* :mod:`posterkg.explain.faithfulness`: deletion test of the cited concepts against random ones.

Configuration: the ``[explain]`` section (:class:`ExplainConfig`).
"""

from __future__ import annotations

import dataclasses

METHODS = ("gradient", "occlusion", "graph")


@dataclasses.dataclass
class ExplainConfig:
    """``[explain]`` settings (all optional)."""

    method: str = "gradient"   # gradient | occlusion | graph: how paths are weighted
    cite: int = 2              # concepts a sentence cites (positive and negative)
    rank: str = "path"         # path: rank cited concepts by path relevance; edge: by the movie edge
    examples: int = 2          # liked / disliked movies named per cited concept
    recent: int = 20           # the last `recent` train interactions are 'recent' (= [graph] short_n)
    top_paths: int = 8         # paths listed by `posterkg explain`
    report_k: int = 10         # recommendations shown in a user report
    similar_k: int = 8         # similar movies shown in a movie report
    recent_posters: int = 12   # recently liked posters shown in a user report
    thumb_width: int = 120     # poster thumbnail width in the report (pixels)
    model_id: str | None = None  # model to use; default: the newest in the models table
    interactions: bool = False  # gradient: also mask the user's interaction edges (slow on big graphs)
    # stored interests (user_interests) to cite: "auto" (the graph's own if it was built from them,
    # else the latest stats extraction), "off", or a backend name / run id; docs/interests.md
    interests: str = "auto"

    def __post_init__(self) -> None:
        from posterkg.errors import ConfigError

        if self.method not in METHODS:
            raise ConfigError(f"[explain] method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.rank not in ("path", "edge"):
            raise ConfigError(f"[explain] rank must be 'path' or 'edge', not {self.rank!r}")
        for name in ("cite", "examples", "recent", "top_paths", "report_k", "similar_k", "thumb_width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"[explain] {name} must be >= 1")


__all__ = ["ExplainConfig", "METHODS"]
