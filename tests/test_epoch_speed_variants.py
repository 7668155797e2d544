"""benchmarks/epoch_speed.py's variant labels: model settings and training settings after "@"."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _load():
    spec = importlib.util.spec_from_file_location("epoch_speed", REPO / "benchmarks" / "epoch_speed.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


es = _load()


def test_a_variant_splits_into_training_and_model_settings():
    from posterkg.gnn import registry
    from posterkg.gnn.train import TrainConfig

    kind, over = es.variant("tiger@encoder=full,epoch_samples=50000,batch_size=256,lr=0.001")
    assert kind == "tiger" and over == {"encoder": "full", "epoch_samples": 50000, "batch_size": 256, "lr": 0.001}
    train, model = es._split((TrainConfig(model="tiger"), registry.model_config("tiger")), over)
    assert train == {"batch_size": 256, "lr": 0.001}
    assert model == {"encoder": "full", "epoch_samples": 50000}
    with pytest.raises(SystemExit, match="unknown setting.*warp"):
        es._split((TrainConfig(model="tiger"), registry.model_config("tiger")), {"warp": 9})
    with pytest.raises(SystemExit, match="key=value"):
        es.variant("tiger@full")
