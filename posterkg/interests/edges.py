"""Which user -> concept edges a built graph uses, and a user's stored interests.

* :func:`graph_selector`: the ``[graph] user_interests`` of the last ``graph build`` ("" =
  ``user_prefs``).
* :func:`user_concept_sql`: SQL of the graph's ``(user_id, concept_id, score)`` user -> concept
  edges as the last build defined them (``user_interests`` of the selected key, signed
  confidence; else ``user_prefs``), per ``pref_horizon``. One definition for every reader.
* :func:`resolve`: the interests a reader (``explain``, ``profile``, ``report``) should show:
  ``"auto"`` = the graph's selected interests when the graph was built from them, else the latest
  ``stats`` extraction of the graph's vocabulary (the interests ``user_prefs`` itself yields), else
  none; ``"off"``; or a backend name / run id.
* :func:`load_interests`: one user's rows of a key, strongest first.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from posterkg.errors import InputError


@dataclasses.dataclass(frozen=True)
class InterestSource:
    """The ``user_interests`` key a reader uses, and whether the graph's edges are these rows."""

    selector: str                      # what was asked ("stats", "vllm", a run id)
    backend: str
    model: str
    vocab_version: int
    spec_hash: str
    from_graph: bool                   # the graph was built with [graph] user_interests = selector

    @property
    def key(self) -> tuple[str, str, int, str]:
        return self.backend, self.model, self.vocab_version, self.spec_hash

    @property
    def is_llm(self) -> bool:
        return self.backend != "stats"

    def label(self) -> str:
        what = "rating statistics (stats)" if not self.is_llm else f"LLM ({self.backend}, {self.model})"
        return f"user_interests from {what}" + ("; the graph's user -> concept edges" if self.from_graph else "")


def graph_selector(store) -> str:
    from posterkg.interests.retrieval import graph_settings

    return str(graph_settings(store).get("user_interests") or "")


def user_concept_sql(store) -> tuple[str, list]:
    """``(sql, params)`` selecting ``(user_id, concept_id, score)``: the user -> concept edges of
    the graph as the last build configured them (``score > 0`` likes, ``< 0`` dislikes)."""
    from posterkg.graphs.preferences import interest_scores_sql
    from posterkg.interests.retrieval import graph_settings

    gs = graph_settings(store)
    horizon = gs.get("pref_horizon", "long")
    sel = gs.get("user_interests") or ""
    if sel:
        sql, params = interest_scores_sql(store, sel, horizon)
    elif horizon == "mix":
        sql, params = ("SELECT user_id, concept_id, sum(score) / 2 AS score FROM user_prefs "
                       "GROUP BY user_id, concept_id"), []
    else:
        sql, params = "SELECT user_id, concept_id, score FROM user_prefs WHERE horizon = ?", [horizon]
    return f"SELECT * FROM ({sql}) WHERE score <> 0", params


def resolve(store, selector: str = "auto") -> InterestSource | None:
    """The interests to show (see the module docstring); None when there are none to show.
    An explicit selector that matches nothing is an InputError; ``auto`` never raises for that."""
    from posterkg.graphs.preferences import interest_key

    sel = (selector or "off").strip()
    if sel == "off":
        return None
    if not store.table_exists("interest_runs") or not store.table_exists("user_interests"):
        if sel == "auto":
            return None
        raise InputError(f"[explain] interests = {sel!r} but no interests were extracted; run "
                         "`posterkg interests extract` first (or set interests = \"off\")")
    gsel = graph_selector(store)
    if sel == "auto":
        if gsel:
            return InterestSource(gsel, *interest_key(store, gsel), from_graph=True)
        from posterkg.interests.retrieval import vocab_version

        try:
            version = vocab_version(store)
        except InputError:
            return None
        row = store.execute(
            "SELECT backend, model, vocab_version, spec_hash FROM interest_runs WHERE backend = 'stats' "
            "AND vocab_version = ? ORDER BY started_at DESC, run_id DESC LIMIT 1", [version]).fetchall()
        if not row:
            return None
        b, m, v, h = row[0]
        return InterestSource("stats", str(b), str(m), int(v), str(h), from_graph=False)
    key = interest_key(store, sel)
    from_graph = bool(gsel) and interest_key(store, gsel) == key
    return InterestSource(sel, *key, from_graph=from_graph)


def load_interests(store, source: InterestSource, user_id: int) -> pd.DataFrame:
    """The user's rows of ``source``'s key: concept_id, horizon, polarity, confidence, evidence
    (list of movie ids, as stored), run_id; strongest first."""
    return store.df(
        "SELECT concept_id, horizon, polarity, confidence, evidence, run_id FROM user_interests "
        "WHERE user_id = ? AND backend = ? AND model = ? AND vocab_version = ? AND spec_hash = ? "
        "ORDER BY confidence DESC, horizon, polarity, concept_id", [int(user_id), *source.key])
