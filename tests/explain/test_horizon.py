"""posterkg-seq explanations say short- or long-term from the model's own parts."""

from __future__ import annotations

import pytest
import torch

from _explain_world import make_db
from posterkg.explain.paths import Explainer, Knowledge
from posterkg.explain.sentences import horizon_sentence


def _seq_model(store, **cfg):
    from posterkg.gnn import registry
    from posterkg.gnn.api import TrainedModel
    from posterkg.gnn.inputs import assemble

    inputs = assemble(store).inputs
    torch.manual_seed(0)
    mc = registry.model_config("posterkg-seq", {"dim": 8, "max_len": 16, "dropout": 0.0, **cfg})
    model = registry.build("posterkg-seq", inputs, mc).eval()
    with torch.no_grad():     # make the concept side matter: strong concept embeddings and gate
        for m in (model, *model.extra):
            m.concept.weight.mul_(50.0)
    return TrainedModel("seq", "posterkg-seq", 0, {}, {}, model, inputs)


@pytest.mark.parametrize("members", [1, 2])        # 2: a seed ensemble, whose parts are its members' means
@pytest.mark.parametrize("part", ["short", "long"])
def test_the_sentence_follows_the_part_that_carries_the_score(tmp_path, part, members):
    store = make_db(tmp_path / "w.duckdb")
    try:
        only = {"short": {"long_term": False}, "long": {"short_term": False}}[part]
        tm = _seq_model(store, members=members, **only)
        ex = Explainer(Knowledge(store), tm).explain(1, 10)
        assert ex.horizon is not None
        other = "long" if part == "short" else "short"
        assert ex.horizon[other] == 0.0 and ex.horizon[part] != 0.0
        graded = [e for e in ex.concepts if e.model_horizon is not None]
        assert graded and all(e.model_horizon == part for e in graded)
        sentence = horizon_sentence(ex)
        assert ("100% from its short-term part" in sentence) == (part == "short")
        if ex.cited and ex.cited[0].liked:
            assert ("recently liked" in ex.sentences[0]) == (part == "short")
        # the split adds up to the model's score
        assert abs(ex.horizon["short"] + ex.horizon["long"] - ex.score) < 1e-4
    finally:
        store.close()
