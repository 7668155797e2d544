"""Shared by the valid-only blend explorers (``blend_rows.py``, ``blend_extra.py``): a saved
posterkg-seq (``accuracy_tuning.py --state S.pt``) over the accuracy benchmark's database, its
valid users and a valid NDCG@20 of a [users, movies] score matrix. Test is never read."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class SavedSeq:
    def __init__(self, state_path: str, db: Path | None = None):
        from posterkg.gnn import registry
        from posterkg.gnn.inputs import assemble
        from posterkg.gnn.stage import feature_spec
        from posterkg.store import open_store

        torch.set_num_threads(1)
        state = torch.load(state_path, weights_only=False)
        name = state["model"]
        mcfg = registry.stored_model_config(name, state["model_config"])
        db = db or Path(__file__).resolve().parent / "results" / "accuracy-ml1m.duckdb"
        with open_store(db, read_only=True) as store:
            self.inputs = assemble(store, features=feature_spec(mcfg)).inputs
        self.model = registry.build(name, self.inputs, mcfg, seed=0)
        self.model.load_state_dict(state["state"])
        self.model.eval()
        self.data = self.inputs.data
        self.hist = self.data.history("valid")
        rel = self.data.relevant("valid")
        self.cand = np.flatnonzero(np.diff(rel.indptr) > 0)          # valid users with a relevant movie
        self._pos = {int(u): i for i, u in enumerate(self.cand)}

    def standardised(self, scores_of) -> torch.Tensor:
        """z-scores per user of ``scores_of(users, history)`` for the valid users, in ``cand`` order."""
        from posterkg.gnn.sequential import _standardise

        with torch.no_grad():
            return torch.cat([_standardise(scores_of(torch.as_tensor(self.cand[a:a + 512]), self.hist))
                              for a in range(0, len(self.cand), 512)])

    def parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(z-scored sequence scores, z-scored EASE scores) of the valid users, in ``cand`` order:
        the two parts of the saved model's blend, whatever its configured weight."""
        return self.standardised(self.model.sequence_scores), self.standardised(self.model.item_item_scores)

    def rechoose_blend(self, overrides: dict | None = None, verbose: bool = False):
        """Choose the collaborative part again as ``fit`` does after training (``item_item = -1``:
        weight and EASE lambda on valid), with ``overrides`` set on the model config first.
        Returns (valid NDCG@20 of the sequence alone, the ``FitInfo`` of the choice); the chosen
        blend stays set on the model."""
        from posterkg.gnn.base import FitInfo
        from posterkg.gnn.evaluate import evaluate_model

        c = self.model.cfg
        c.item_item = 0.0
        alone = evaluate_model(self.model, self.data, "valid")
        c.item_item, c.item_item_l2 = -1.0, 0.0          # chosen on valid unless set below
        for k, v in (overrides or {}).items():
            setattr(c, k, v)
        info = self.model._fit_item_item(self.inputs, lambda m: evaluate_model(m, self.data, "valid"),
                                         FitInfo([], 0, alone, 0.0), verbose=verbose)
        return alone["ndcg@20"], info

    def ndcg20(self, z: torch.Tensor) -> float:
        """valid NDCG@20 of a score matrix whose rows are the users of ``cand``."""
        from posterkg.gnn.evaluate import evaluate

        return evaluate(lambda u: z[[self._pos[int(x)] for x in u]], self.data, "valid", users=self.cand)["ndcg@20"]
