"""Valid only: choose a saved sequence model's collaborative part again with changed settings.

    .venv/bin/python benchmarks/blend_rechoose.py S.pt item_item_scale=global [key=value ...]

Loads a trained posterkg-seq / SASRec (``accuracy_tuning.py --state``), sets the given
``SASRec.Config`` keys (JSON values, strings bare), puts ``item_item = -1`` (weight and lambda
chosen on valid) and runs the model's own choice (``_fit_item_item``) on the accuracy
benchmark's database, printing every grid point. The sequence part is the saved one, so this is
what training with the changed settings would give (the part is fitted after training). Test is
never read.
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saved_seq import SavedSeq  # noqa: E402


def main(state: str, overrides: list[str]) -> None:
    saved = SavedSeq(state)
    c = saved.model.cfg
    print(f"saved: item_item={c.item_item} l2={c.item_item_l2}", flush=True)
    over = {}
    for kv in overrides:
        k, v = kv.split("=", 1)
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            pass
        over[k] = v
    alone, info = saved.rechoose_blend(over, verbose=True)
    print(f"sequence alone {alone:.4f}; chosen item_item={c.item_item} l2={c.item_item_l2} "
          f"ratio={getattr(c, 'item_item_ratio', 0.0):.4f}: valid NDCG@20 {info.valid['ndcg@20']:.4f}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2:])
