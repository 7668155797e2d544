r"""User -> concept preferences, long-term and short-term, positive and negative.

A preference says how much more often a concept appears among a user's *liked* movies than among
the *disliked* ones and than its base rate. For a user ``u``, a horizon ``h`` and a concept ``c``:

* ``x_c(m)`` in [0, 1] is the weight of the edge movie ``m`` -> ``c`` (``movie_concept_edges``,
  clipped to [0, 1]; 0 when the poster does not show ``c``).
* Interaction weights ``w_i`` over the user's *train* interactions ``i = (m_i, t_i)``:

  - ``long``: every interaction, time-decayed, ``w_i = 0.5 ** ((t_last - t_i) / half_life)``,
    ``t_last`` the user's last train interaction, so the newest counts 1;
  - ``short``: the last ``short_n`` interactions (by time, newest movie id first on ties), ``w_i = 1``.

* ``L`` / ``D`` are the liked (sign +1) / disliked (sign -1) interactions of the horizon; neutral
  ones (rating 3) are evidence of neither. ``W_L = sum_{i in L} w_i`` and
  ``S_L(c) = sum_{i in L} w_i x_c(m_i)``; likewise ``W_D``, ``S_D(c)``.
* The base rate ``p0_c`` is the mean of ``x_c`` over *all* train interactions (every user), i.e.
  how often the concept shows up among the movies people rate; measuring it over ratings rather
  than over the catalogue keeps popularity from looking like taste.
* The rates are smoothed with a Beta prior of strength ``kappa = smoothing`` centred on the base
  rate (additive smoothing towards ``p0_c``; the posterior mean for fractional counts)::

      p_L(c) = (S_L(c) + kappa * p0_c) / (W_L + kappa)
      p_D(c) = (S_D(c) + kappa * p0_c) / (W_D + kappa)

      score(u, c, h) = ln p_L(c) - ln p_D(c)

  With few dislikes ``p_D`` stays near ``p0_c`` and the score is the lift of the liked rate over
  the base rate; with many dislikes it contrasts likes against dislikes. Little evidence on either
  side shrinks the score towards 0. ``score > 0``: the user likes the concept; ``< 0``: dislikes.
* ``support`` counts the liked + disliked interactions of the horizon whose movie shows ``c``.

Kept rows: ``support >= min_support`` (``min_support = 0`` scores every concept for every user,
because a concept *absent* from many liked movies is evidence too, at the cost of a dense table),
score not exactly 0, and at most ``top_k`` positive plus ``top_k`` negative rows per user and
horizon (strongest first). Everything runs as one DuckDB query per build.
"""

from __future__ import annotations

from posterkg.errors import InputError

_SECONDS_PER_DAY = 86400.0


def _prefs_sql(min_support: int, top_k: int) -> str:
    if min_support > 0:
        cand = """
            SELECT a.user_id, a.horizon, a.concept_id, a.sl, a.sd, a.support,
                   t.wl, t.wd, b.p0
            FROM agg a JOIN tot t USING (user_id, horizon) JOIN base b USING (concept_id)
            WHERE a.support >= $min_support"""
    else:
        cand = """
            SELECT t.user_id, t.horizon, b.concept_id, coalesce(a.sl, 0) AS sl,
                   coalesce(a.sd, 0) AS sd, coalesce(a.support, 0) AS support,
                   t.wl, t.wd, b.p0
            FROM tot t CROSS JOIN base b
            LEFT JOIN agg a ON a.user_id = t.user_id AND a.horizon = t.horizon
                           AND a.concept_id = b.concept_id"""
    qualify = (
        "QUALIFY row_number() OVER (PARTITION BY user_id, horizon, score > 0 "
        "ORDER BY abs(score) DESC, concept_id) <= $top_k" if top_k > 0 else ""
    )
    return f"""
    WITH e AS (
        SELECT user_id, movie_id, sign, ts,
               max(ts) OVER (PARTITION BY user_id) AS t_last,
               row_number() OVER (PARTITION BY user_id ORDER BY ts DESC, movie_id DESC) AS rn
        FROM user_movie_edges
    ),
    w AS (
        SELECT user_id, movie_id, sign, 'long' AS horizon,
               pow(0.5, (t_last - ts) / $half_life_s) AS w
        FROM e
        UNION ALL
        SELECT user_id, movie_id, sign, 'short' AS horizon, 1.0 AS w
        FROM e WHERE rn <= $short_n
    ),
    x AS (
        SELECT movie_id, concept_id, least(greatest(weight, 0.0), 1.0) AS x
        FROM movie_concept_edges
    ),
    base AS (
        SELECT x.concept_id,
               greatest(sum(x.x) / (SELECT count(*) FROM user_movie_edges), 1e-12) AS p0
        FROM user_movie_edges JOIN x USING (movie_id)
        GROUP BY x.concept_id
    ),
    tot AS (
        SELECT user_id, horizon,
               coalesce(sum(w) FILTER (WHERE sign = 1), 0) AS wl,
               coalesce(sum(w) FILTER (WHERE sign = -1), 0) AS wd
        FROM w GROUP BY user_id, horizon
    ),
    agg AS (
        SELECT w.user_id, w.horizon, x.concept_id,
               coalesce(sum(w.w * x.x) FILTER (WHERE w.sign = 1), 0) AS sl,
               coalesce(sum(w.w * x.x) FILTER (WHERE w.sign = -1), 0) AS sd,
               count(*) FILTER (WHERE x.x > 0) AS support
        FROM w JOIN x USING (movie_id)
        WHERE w.sign <> 0
        GROUP BY w.user_id, w.horizon, x.concept_id
    ),
    cand AS ({cand}
    ),
    scored AS (
        SELECT user_id, concept_id, horizon, support,
               ln((sl + $kappa * p0) / (wl + $kappa)) - ln((sd + $kappa * p0) / (wd + $kappa))
                   AS score
        FROM cand
    )
    SELECT user_id, concept_id, horizon, score, CAST(support AS INTEGER) AS support
    FROM scored
    WHERE score <> 0
    {qualify}
    """


def build_user_prefs(store, cfg=None) -> int:
    """Replace ``user_prefs`` from ``user_movie_edges`` and ``movie_concept_edges``; return rows."""
    from posterkg.graphs import ensure_tables, graph_config

    gc = graph_config(cfg)
    ensure_tables(store)
    if store.count("user_movie_edges") == 0:
        raise InputError("user_movie_edges is empty; run `posterkg graph build` (after a split)")
    params = {
        "half_life_s": gc.half_life_days * _SECONDS_PER_DAY,
        "short_n": gc.short_n,
        "kappa": gc.smoothing,
    }
    if gc.min_support > 0:
        params["min_support"] = gc.min_support
    if gc.top_k > 0:
        params["top_k"] = gc.top_k
    with store.transaction() as con:
        con.execute("DELETE FROM user_prefs")
        con.execute(
            "INSERT INTO user_prefs (user_id, concept_id, horizon, score, support) "
            "SELECT * FROM (" + _prefs_sql(gc.min_support, gc.top_k) + ") "
            "ORDER BY user_id, horizon, score DESC, concept_id",
            params,
        )
    return store.count("user_prefs")


def interest_key(store, selector: str) -> tuple[str, str, int, str]:
    """``[graph] user_interests`` -> the (backend, model, vocab_version, spec_hash) whose
    ``user_interests`` rows are used: the key of run ``selector``, else of the latest run of
    backend ``selector``."""
    if not store.table_exists("interest_runs"):
        raise InputError(f"[graph] user_interests = {selector!r} but no interests were extracted; the "
                         "graph tables are built: run `posterkg interests extract`, then the graph build again")
    row = store.execute(
        "SELECT backend, model, vocab_version, spec_hash FROM interest_runs WHERE run_id = ?",
        [selector]).fetchall()
    if not row:
        row = store.execute(
            "SELECT backend, model, vocab_version, spec_hash FROM interest_runs WHERE backend = ? "
            "ORDER BY started_at DESC, run_id DESC LIMIT 1", [selector]).fetchall()
    if not row:
        known = [r[0] for r in store.execute("SELECT DISTINCT backend FROM interest_runs").fetchall()]
        raise InputError(f"[graph] user_interests = {selector!r}: no interests run or backend of that "
                         f"name (backends with runs: {', '.join(known) or 'none'}); the graph tables are "
                         f"built: run `posterkg interests extract --backend ...`, then the graph build again")
    b, m, v, h = row[0]
    return str(b), str(m), int(v), str(h)


def interest_scores_sql(store, selector: str, pref_horizon: str) -> tuple[str, list]:
    """SQL (and parameters) of ``(user_id, concept_id, score)`` from ``user_interests`` for the
    fused graph: score = +confidence (likes) / -confidence (dislikes) of horizon ``pref_horizon``
    (``mix``: the sum over both horizons / 2, as with user_prefs)."""
    key = list(interest_key(store, selector))
    signed = ("SELECT user_id, concept_id, horizon, CASE WHEN polarity = 'likes' THEN confidence "
              "ELSE -confidence END AS score FROM user_interests WHERE backend = ? AND model = ? "
              "AND vocab_version = ? AND spec_hash = ?")
    if pref_horizon == "mix":
        return (f"SELECT user_id, concept_id, sum(score) / 2 AS score FROM ({signed}) "
                "GROUP BY user_id, concept_id", key)
    return (f"SELECT user_id, concept_id, sum(score) AS score FROM ({signed}) WHERE horizon = ? "
            "GROUP BY user_id, concept_id", key + [pref_horizon])
