"""``explain``, ``profile`` and ``report`` cite the user's stored interests, on real ../shared data.

The module fixture: real ML-1M users (../shared, skipped with a reason without it, a failure
under CI=true), the real pixel tagger on their train movies' posters, the graph stage, then the
CLI's ``posterkg interests extract --backend stats``, the graph rebuilt with ``[graph]
user_interests = "stats"``, and the posterkg GNN trained for two epochs (dim 8) and stored. The
checks compare what the explanations and profiles say with the ``user_interests`` rows: every
cited interest is a stored row (concept, horizon, polarity, confidence and the very evidence ids,
in order), its evidence titles are the user's own train movies of the right side that show the
concept, an interest is cited only with a concept the attribution cites, and the explanation
follows the table when a row's evidence changes (nothing is searched for or invented).
"""

from __future__ import annotations

import shutil

import pytest

from torch_threads import one_torch_thread  # noqa: F401

N_USERS = 8
SHORT_N = 10


@pytest.fixture(scope="module")
def world(ml1m_db, tmp_path_factory):
    from click.testing import CliRunner

    from _explain_world import concepts_from_points
    from posterkg.cli import cli
    from posterkg.gnn.api import save_model
    from posterkg.gnn.inputs import assemble
    from posterkg.gnn.train import TrainConfig, train
    from posterkg.graphs import GraphConfig, build_graphs
    from posterkg.store import open_store
    from posterkg.vlm.backends import get_backend
    from posterkg.vlm.knowledge import load_schema
    from posterkg.vlm.runner import tag_posters

    tmp = tmp_path_factory.mktemp("interests_explain")
    db = tmp / "w.duckdb"
    shutil.copy(ml1m_db, db)
    with open_store(db) as store:
        users = [u for (u,) in store.execute(
            "SELECT user_id FROM split WHERE part = 'train' GROUP BY user_id "
            "HAVING count(*) BETWEEN 25 AND 45 ORDER BY user_id LIMIT ?", [N_USERS]).fetchall()]
        for t in ("ratings", "split"):   # only these users: a small graph, a model in seconds
            store.execute(f"DELETE FROM {t} WHERE user_id NOT IN (SELECT unnest(?::INTEGER[]))", [users])
        movies = [m for (m,) in store.execute("SELECT DISTINCT movie_id FROM ratings ORDER BY 1").fetchall()]
        tag_posters(store, get_backend("pixels"), load_schema().build_spec(), movies=movies, batch_size=32)
        concepts_from_points(store)
        build_graphs(store, GraphConfig(short_n=SHORT_N))
    r = CliRunner().invoke(cli, ["interests", "extract", "--db", str(db), "--backend", "stats"])
    assert r.exit_code == 0, r.output
    with open_store(db) as store:
        counts = build_graphs(store, GraphConfig(short_n=SHORT_N, user_interests="stats"))
        assert counts["interests_extracted"] == 0 and counts["user_interests"] > 0   # the CLI's rows
        inputs = assemble(store).inputs
        res = train(inputs, TrainConfig(dim=8, epochs=2, batch_size=256, patience=2, threads=1))
        save_model(store, res, inputs)
    return {"db": db, "users": users, "extract_output": r.output}


def _table(db, user_id):
    """(concept, horizon, polarity) -> (confidence, evidence ids) of the user's stats interests."""
    from posterkg.store import open_store

    with open_store(db, read_only=True) as store:
        rows = store.execute("SELECT concept_id, horizon, polarity, confidence, evidence FROM user_interests "
                             "WHERE user_id = ? AND backend = 'stats'", [user_id]).fetchall()
    return {(c, h, p): (conf, list(ev)) for c, h, p, conf, ev in rows}


def _facts(store, user_id):
    """The user's train movies -> sign, and the (movie, concept) pairs of the graph."""
    signs = dict(store.execute("SELECT movie_id, sign FROM user_movie_edges WHERE user_id = ?",
                               [user_id]).fetchall())
    shows = set(store.execute("SELECT movie_id, concept_id FROM movie_concept_edges").fetchall())
    return signs, shows


def _explanations(store, tm, users, per_user=5, cfg=None):
    from posterkg.explain.paths import Explainer, Knowledge

    ex_ = Explainer(Knowledge(store), tm, cfg)
    for u in users:
        for m, _ in tm.recommend(int(u), k=per_user):
            yield u, ex_.explain(int(u), m)


def test_explanations_cite_stored_interests_with_their_own_evidence(world):
    from posterkg.explain.model import load_scorer
    from posterkg.explain.paths import Knowledge
    from posterkg.explain.sentences import concept_phrase
    from posterkg.store import open_store

    with open_store(world["db"], read_only=True) as store:
        tm, mid, note = load_scorer(store, required=True)
        titles = Knowledge(store, "off")
        cited_total = context_total = 0
        for u, ex in _explanations(store, tm, world["users"]):
            assert ex.method == "gradient", ex.note
            assert ex.interest_source.startswith("user_interests from rating statistics (stats)")
            assert "the graph's user -> concept edges" in ex.interest_source
            table = _table(world["db"], u)
            signs, shows = _facts(store, u)
            cited_ids = {e.concept_id for e in ex.cited} | {e.concept_id for e in ex.against}
            for group, polarity, sign in ((ex.cited, "likes", 1), (ex.against, "dislikes", -1)):
                for e in group:
                    # only concepts the model's attribution cites, on their side
                    assert (e.relevance > 0) == (polarity == "likes") and e.movie_edge * sign > 0
                    for it in e.interests:
                        assert it.concept_id == e.concept_id and it.polarity == polarity
                        conf, ev = table[(it.concept_id, it.horizon, it.polarity)]   # a stored row
                        assert it.confidence == conf and [m for m, _ in it.evidence] == ev
                        for m, title in it.evidence:
                            assert signs[m] == sign                  # the user's own movie, right side
                            assert (m, it.concept_id) in shows       # and its poster shows the concept
                            assert title == titles.title(m)
                        cited_total += 1
                    if e.interests:
                        it = e.interests[0]
                        text = " ".join(ex.sentences)
                        assert concept_phrase(it.ctype, it.concept) in text
                        for _, title in it.evidence[:2]:
                            assert title in text
                        assert f"confidence {it.confidence:g}" in text
            for it in ex.context_interests:   # profile context: not among the cited concepts' reasons
                assert not any(it is x for e in ex.cited + ex.against for x in e.interests)
                assert (ex.movie_id, it.concept_id) in shows
                context_total += 1
            # a sentence naming an interest names only cited concepts
            for s in ex.sentences:
                if s.startswith("You have "):
                    assert any(e.interests for e in ex.cited + ex.against)
            assert cited_ids >= {it.concept_id for e in ex.cited + ex.against for it in e.interests}
    assert cited_total >= 10 and context_total >= 1, (cited_total, context_total)


def test_explanation_follows_the_stored_evidence(world, tmp_path):
    """Change one cited row's evidence in the table: the explanation names the new movies, in
    the stored order, so the evidence comes from the record and is not recomputed."""
    from posterkg.explain.model import load_scorer
    from posterkg.store import open_store

    db = tmp_path / "m.duckdb"
    shutil.copy(world["db"], db)
    with open_store(db, read_only=True) as store:
        tm, _, _ = load_scorer(store, required=True)
        u, ex = next((u, ex) for u, ex in _explanations(store, tm, world["users"])
                     if ex.cited and ex.cited[0].interests)
        it = ex.cited[0].interests[0]
        signs, _ = _facts(store, u)
    ev = [m for m, _ in it.evidence]
    others = sorted(m for m, s in signs.items() if s == 1 and m not in ev)[:1]
    new = others + ev[::-1]            # a liked movie of the user first, then the old ones reversed
    with open_store(db) as store:
        store.execute("UPDATE user_interests SET evidence = ? WHERE user_id = ? AND concept_id = ? "
                      "AND horizon = ? AND polarity = ? AND backend = 'stats'",
                      [new, u, it.concept_id, it.horizon, it.polarity])
    with open_store(db, read_only=True) as store:
        tm, _, _ = load_scorer(store, required=True)
        from posterkg.explain.paths import Explainer, Knowledge

        k = Knowledge(store)
        ex2 = Explainer(k, tm).explain(u, ex.movie_id)
    it2 = next(x for x in ex2.cited[0].interests if (x.horizon, x.polarity) == (it.horizon, it.polarity))
    assert [m for m, _ in it2.evidence] == new
    assert ex2.cited[0].interests[0] is it2 and len(new) >= 2
    sentence = next(s for s in ex2.sentences if s.startswith("You have "))
    assert f"from {k.title(new[0])}, {k.title(new[1])}" in sentence


def test_profile_lists_interests_per_type_and_horizon(world):
    from click.testing import CliRunner

    from posterkg.cli import cli
    from posterkg.explain.paths import Knowledge
    from posterkg.explain.profile import user_profile
    from posterkg.store import open_store

    u = world["users"][0]
    table = _table(world["db"], u)
    with open_store(world["db"], read_only=True) as store:
        k = Knowledge(store)
        p = user_profile(k, u)
        signs, shows = _facts(store, u)
    assert p.source == "user_interests"          # the graph's user -> concept edges
    assert len(p.interests) == len(table) > 0
    for it in p.interests:
        conf, ev = table[(it.concept_id, it.horizon, it.polarity)]
        assert it.confidence == conf and [m for m, _ in it.evidence] == ev
        assert all(signs[m] == it.sign and (m, it.concept_id) in shows for m in ev)
    groups = p.interests_by_type(top=3)
    assert {(h, pol) for g in groups.values() for h, pol in g} >= {("long", "likes"), ("short", "likes")}
    # the preference paths and shares use the graph's edges: the signed confidences
    with open_store(world["db"], read_only=True) as store:
        prefs = Knowledge(store).prefs(u)
    want: dict = {}
    for (c, h, pol), (conf, _) in table.items():
        want[(c, h)] = want.get((c, h), 0.0) + (conf if pol == "likes" else -conf)
    assert {(int(c), h): s for c, h, s in zip(prefs.concept_id, prefs.horizon, prefs.score)} == \
        {key: v for key, v in want.items() if v != 0}

    r = CliRunner().invoke(cli, ["profile", "--db", str(world["db"]), "--user", str(u), "--top", "3"])
    assert r.exit_code == 0, r.output
    assert "Interests (user_interests from rating statistics (stats)" in r.output
    for ctype, g in groups.items():
        for items in g.values():
            for it in items:
                line = next(x for x in r.output.splitlines()
                            if f" {it.concept} " in x and x.split()[:2] == [it.horizon, it.polarity])
                assert f"{it.confidence:g}" in line
                assert it.evidence[0][1][:20] in line
    off = CliRunner().invoke(cli, ["profile", "--db", str(world["db"]), "--user", str(u), "--interests", "off"])
    assert off.exit_code == 0 and "Interests (" not in off.output


def test_cli_explain_and_report_show_the_interests(world, tmp_path):
    from markupsafe import escape

    from click.testing import CliRunner

    from posterkg.cli import cli
    from posterkg.explain.model import load_scorer
    from posterkg.store import open_store

    with open_store(world["db"], read_only=True) as store:
        tm, _, _ = load_scorer(store, required=True)
        u, ex = next((u, ex) for u, ex in _explanations(store, tm, world["users"])
                     if ex.cited and ex.cited[0].interests)
    run = CliRunner().invoke
    r = run(cli, ["explain", "--db", str(world["db"]), "--user", str(u), "--movie", str(ex.movie_id)])
    assert r.exit_code == 0, r.output
    it = ex.cited[0].interests[0]
    assert "Interests cited (concepts the model's attribution cites)" in r.output
    assert "You have a " in r.output and it.evidence[0][1] in r.output
    r_off = run(cli, ["explain", "--db", str(world["db"]), "--user", str(u), "--movie", str(ex.movie_id),
                      "--interests", "off"])
    assert r_off.exit_code == 0 and "You have a " not in r_off.output and "Interests cited" not in r_off.output
    bad = run(cli, ["explain", "--db", str(world["db"]), "--user", str(u), "--movie", str(ex.movie_id),
                    "--interests", "vllm"])
    assert bad.exit_code != 0 and "no interests run or backend of that name" in str(bad.exception)

    out = tmp_path / "u.html"
    r = run(cli, ["report", "--db", str(world["db"]), "--user", str(u), "--out", str(out), "-k", "5"])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert 'id="interests"' in page and "rating statistics (stats)" in page
    with open_store(world["db"], read_only=True) as store:
        from posterkg.explain.paths import Knowledge
        from posterkg.explain.profile import user_profile

        p = user_profile(Knowledge(store), u)
    for g in p.interests_by_type(4).values():
        for items in g.values():
            for x in items:
                assert str(escape(x.evidence[0][1])) in page
    assert page.count('class="interest"') == sum(len(v) for g in p.interests_by_type(4).values() for v in g.values())


def test_which_interests_are_used(world, tmp_path):
    """``user_concept_sql`` is the graph's user -> concept edges; ``auto`` follows the graph, and
    without ``[graph] user_interests`` falls back to the stats extraction as citations only."""
    from posterkg.errors import InputError
    from posterkg.explain.paths import Knowledge
    from posterkg.graphs import GraphConfig, build_graphs
    from posterkg.graphs.hetero import build_hetero
    from posterkg.interests.edges import resolve, user_concept_sql
    from posterkg.store import open_store

    with open_store(world["db"], read_only=True) as store:
        sql, params = user_concept_sql(store)
        edges = {(u, c): s for u, c, s in store.execute(sql, params).fetchall()}
        b = build_hetero(store)
        auto, off = resolve(store, "auto"), resolve(store, "off")
        with pytest.raises(InputError, match="no interests run or backend"):
            resolve(store, "openai")
    got = {}
    for rel, sign in (("likes", 1), ("dislikes", -1)):
        e = b.data["user", rel, "concept"]
        for (u, c), w in zip(e.edge_index.t().tolist(), e.edge_weight.tolist()):
            got[(int(b.user_ids[u]), int(b.concept_ids[c]))] = sign * w
    assert got == pytest.approx(edges) and edges
    assert auto.from_graph and auto.backend == "stats" and off is None

    db = tmp_path / "plain.duckdb"
    shutil.copy(world["db"], db)
    with open_store(db) as store:
        build_graphs(store, GraphConfig(short_n=SHORT_N))       # back to user_prefs edges
        sql, params = user_concept_sql(store)
        n_prefs = store.scalar("SELECT count(*) FROM user_prefs WHERE horizon = 'long'")
        assert store.scalar(f"SELECT count(*) FROM ({sql})", params) == n_prefs
        k = Knowledge(store)
        u = world["users"][0]
        assert k.interest_source.backend == "stats" and not k.interest_source.from_graph
        assert k.prefs_source == "user_prefs" and len(k.interests(u)) == len(_table(world["db"], u))
        assert Knowledge(store, "off").interest_source is None


def test_the_models_graph_takes_its_user_concept_edges_from_the_interests(world):
    """With [graph] user_interests = "stats" the trained models' likes/dislikes relations are the
    stats interests (signed confidence, stored rows), not user_prefs."""
    from posterkg.gnn.inputs import assemble
    from posterkg.store import open_store

    with open_store(world["db"], read_only=True) as store:
        inputs = assemble(store).inputs
        g, ids = inputs.graph, inputs.ids
        want = {}
        for u, c, pol, conf in store.execute(
                "SELECT user_id, concept_id, polarity, confidence FROM user_interests WHERE backend = 'stats' "
                "AND horizon = 'long'").fetchall():
            want[(u, c)] = want.get((u, c), 0.0) + (conf if pol == "likes" else -conf)
        prefs = {(u, c): s for u, c, s in store.execute(
            "SELECT user_id, concept_id, score FROM user_prefs WHERE horizon = 'long'").fetchall()}
    got = {}
    for rel, sign in (("likes", 1.0), ("dislikes", -1.0)):
        r = g.get(rel)
        for u, c, w in zip(r.src.tolist(), r.dst.tolist(), r.weight.tolist()):
            got[(int(ids.user_ids[u]), int(ids.concept_ids[c]))] = sign * w
    want = {k: v for k, v in want.items() if v != 0}
    assert want and got.keys() == want.keys()
    assert all(abs(got[k] - want[k]) < 1e-5 for k in want)
    assert got != {k: v for k, v in prefs.items() if v != 0}     # not the user_prefs edges
