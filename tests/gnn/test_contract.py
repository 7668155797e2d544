"""The recommender contract (posterkg/gnn/base.py), checked for EVERY model of the registry.

Parametrised over ``posterkg.gnn.registry.MODELS``, so a new registry entry is covered at once;
none is skipped: a model whose class cannot be imported fails here. Each model is fitted on the
tiny database of ``contract_world.py`` (a few epochs) and must

* give finite scores for every user and movie;
* recommend the k highest-scored movies the user has not seen (train + valid), best first
  (computed here from ``TrainedModel.score`` independently of ``recommend_many``);
* be deterministic under a seed;
* score identically after ``save_model`` / ``load_model`` through a real DuckDB store, and still
  identically after 10 new movies are ingested (reported in ``TrainedModel.unknown``);
* score unchanged under a graph mask of ones requiring grad (explanations' call), if it scores
  from a graph at all.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from contract_world import add_movies, make_world
from torch_threads import one_torch_thread  # noqa: F401
from posterkg.errors import ConfigError
from posterkg.gnn import registry
from posterkg.gnn.api import load_model, save_model
from posterkg.gnn.inputs import assemble
from posterkg.gnn.stage import feature_spec
from posterkg.gnn.train import TrainConfig, default_model_config, train
from posterkg.store import open_store

TINY = TrainConfig(dim=8, epochs=2, batch_size=64, lr=0.01, patience=2, eval_batch_size=64, seed=0, threads=1)
SMALL = {"dim": 8, "max_len": 16, "layers": 1, "struct_batch": 64}   # applied where a Config has them


@pytest.fixture(scope="module")
def world_db(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("contract") / "world.duckdb")


def _model_cfg(name: str):
    fields = {f.name for f in dataclasses.fields(registry.entry(name).cls().Config)}
    return default_model_config(name, TINY, {k: v for k, v in SMALL.items() if k in fields})


def _fit(db, name: str, seed: int = 0):
    cfg = dataclasses.replace(TINY, model=name, seed=seed)
    mcfg = _model_cfg(name)
    feats = feature_spec(mcfg)
    with open_store(db, read_only=True) as store:
        inputs = assemble(store, features=feats).inputs
    res = train(inputs, cfg, model_cfg=mcfg)
    res.model.feature_spec = feats
    return res, inputs


def _scores(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model.score(torch.arange(inputs.n_users), inputs.data.history("test")).float()


@pytest.fixture(scope="module", params=registry.MODELS)
def fitted(request, world_db):
    res, inputs = _fit(world_db, request.param)
    return request.param, res, inputs, _scores(res.model.eval(), inputs)


def test_registry_lists_every_model_once():
    assert len(set(registry.MODELS)) == len(registry.MODELS) >= 10
    for name in registry.MODELS:
        assert registry.entry(name).name == name


def test_scores_are_finite(fitted):
    name, res, inputs, s = fitted
    assert s.shape == (inputs.n_users, inputs.n_movies), name
    assert torch.isfinite(s).all(), name


def test_recommend_gives_the_top_unseen_movies(fitted, world_db, tmp_path):
    name, res, inputs, _ = fitted
    db = tmp_path / "rec.duckdb"
    shutil.copy(world_db, db)
    with open_store(db) as store:
        mid = save_model(store, res, inputs)
        tm = load_model(store, mid)
    users = [int(u) for u in tm.user_ids]
    k = 5
    recs = tm.recommend_many(users, k)
    scores = tm.score(users).numpy()
    seen = inputs.data.history("test").csr()
    for i, u in enumerate(users):
        got = [m for m, _ in recs[u]]
        unseen = np.setdiff1d(np.arange(inputs.n_movies), seen[i].indices)
        assert not set(got) & {int(tm.movie_ids[j]) for j in seen[i].indices}, (name, u)
        assert len(got) == min(k, len(unseen))
        vals = [s for _, s in recs[u]]
        assert vals == sorted(vals, reverse=True), (name, u)
        # the k-th best unseen score, computed here: every recommended movie reaches it
        kth = np.sort(scores[i, unseen])[::-1][len(got) - 1]
        assert min(vals) >= kth - 1e-6, (name, u, vals, kth)
        np.testing.assert_allclose(vals, scores[i, tm.ids.lookup("movie", got)[0]], rtol=1e-6, atol=1e-6)


def test_deterministic_under_seed(fitted, world_db):
    name, res, inputs, s = fitted
    again, _ = _fit(world_db, name)
    torch.testing.assert_close(_scores(again.model.eval(), inputs), s, rtol=0, atol=0, msg=name)


def test_save_load_round_trip_and_new_movies(fitted, world_db, tmp_path):
    name, res, inputs, s = fitted
    db = tmp_path / "rt.duckdb"
    shutil.copy(world_db, db)
    with open_store(db) as store:
        mid = save_model(store, res, inputs)
        tm = load_model(store, mid)
    assert tm.kind == name
    users = [int(u) for u in inputs.ids.user_ids]
    torch.testing.assert_close(tm.score(users).float(), s, rtol=0, atol=0, msg=name)
    assert tm.unknown.get("movies", 0) == 0
    new = add_movies(db, 10)
    with open_store(db, read_only=True) as store:
        tm2 = load_model(store, mid)
    assert tm2.unknown["movies"] == 10, tm2.unknown
    assert not set(new) & set(tm2.movie_ids.tolist())
    torch.testing.assert_close(tm2.score(users).float(), s, rtol=0, atol=0, msg=name)


def test_collaborative_part_survives_save_and_load(world_db, tmp_path):
    # posterkg-seq with its collaborative part forced on (a configured weight is kept as it is)
    db = tmp_path / "ii.duckdb"
    shutil.copy(world_db, db)
    mcfg = dataclasses.replace(_model_cfg("posterkg-seq"), item_item=0.2, item_item_l2=10.0)
    with open_store(db, read_only=True) as store:
        inputs = assemble(store, features=feature_spec(mcfg)).inputs
    res = train(inputs, dataclasses.replace(TINY, model="posterkg-seq"), model_cfg=mcfg)
    assert res.model.ii_S.shape == (inputs.n_movies, inputs.n_movies) and res.model_config.item_item == 0.2
    s = _scores(res.model.eval(), inputs)
    seq_only = dataclasses.replace(res.model.cfg, item_item=0.0)
    plain = registry.build("posterkg-seq", inputs, seq_only)
    plain.load_state_dict(res.model.state_dict())
    assert not torch.allclose(_scores(plain.eval(), inputs), s)          # the part changes the scores
    with open_store(db) as store:
        mid = save_model(store, res, inputs)
        tm = load_model(store, mid)
    users = [int(u) for u in inputs.ids.user_ids]
    torch.testing.assert_close(tm.score(users).float(), s, rtol=0, atol=0)
    assert tm.model.cfg.item_item == 0.2 and tm.model.cfg.item_item_l2 == 10.0


def test_a_model_stored_before_an_option_existed_loads_with_it_off(world_db, tmp_path):
    # a posterkg-seq trained without the rating input, stored with a config that predates the
    # option (the key removed from the stored JSON, as saves before it have it): loading must
    # not take the registry's current setting (on), which would add a part the model never had
    db = tmp_path / "old.duckdb"
    shutil.copy(world_db, db)
    assert registry.model_config("posterkg-seq").rating_input           # the registry turns it on
    mcfg = dataclasses.replace(_model_cfg("posterkg-seq"), rating_input=False)
    with open_store(db, read_only=True) as store:
        inputs = assemble(store, features=feature_spec(mcfg)).inputs
    res = train(inputs, dataclasses.replace(TINY, model="posterkg-seq"), model_cfg=mcfg)
    s = _scores(res.model.eval(), inputs)
    with open_store(db) as store:
        mid = save_model(store, res, inputs)
        config = json.loads(store.execute("SELECT config FROM models WHERE model_id = ?", [mid]).fetchone()[0])
        del config["model"]["rating_input"]
        store.execute("UPDATE models SET config = ? WHERE model_id = ?", [json.dumps(config), mid])
        tm = load_model(store, mid)
    assert tm.model.cfg.rating_input is False and tm.model.stars is None
    torch.testing.assert_close(tm.score([int(u) for u in inputs.ids.user_ids]).float(), s, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="unknown key"):
        registry.stored_model_config("posterkg-seq", {**config["model"], "no_such_option": 1})


def test_mask_of_ones_leaves_scores_unchanged(fitted):
    name, res, inputs, s = fitted
    model = res.model.eval()
    users = torch.arange(inputs.n_users)
    hist = inputs.data.history("test")
    g = inputs.graph.with_history(hist)      # test scores fold the valid edges in (base.history_embeddings)
    masks = {r: torch.ones(len(rel), requires_grad=True) for r, rel in g.relations.items()}
    with torch.enable_grad():
        if getattr(model, "score_graph", None) is not None:
            got = model.score_graph(users, hist, g.masked(masks))
        else:
            try:
                emb = model.embeddings(g.masked(masks))
            except NotImplementedError:
                # scores from the history alone (EASE, ItemKNN): nothing in the graph to mask
                assert model.trainer in ("fit", "none"), name
                return
            got = emb[0][users] @ emb[1].T
    torch.testing.assert_close(got.detach().float(), s, rtol=1e-5, atol=1e-5, msg=name)


def test_dense_features_are_read_by_alias_as_by_stored_name(world_db):
    """A model's ``text_encoder = "minilm"`` (the default) reads the rows `posterkg embed texts
    --model minilm` writes, stored under the model's full name; an encoder with no rows is a
    one-line error naming the command."""
    from posterkg.errors import InputError

    with open_store(world_db, read_only=True) as store:
        by_alias = assemble(store, features={"text": "minilm", "poster": "efficientnet-lite0"}).inputs
        by_name = assemble(store, features={"text": "sentence-transformers/all-MiniLM-L6-v2#mean"}).inputs
        assert by_alias.features["text"].shape == (by_alias.n_movies, 5) and by_alias.feature_mask["text"].all()
        np.testing.assert_array_equal(by_alias.features["text"], by_name.features["text"])
        with pytest.raises(InputError, match="posterkg embed posters"):
            assemble(store, features={"poster": "pixels"})
