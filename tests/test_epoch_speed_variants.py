"""benchmarks/epoch_speed.py's variant labels: model settings and training settings after "@"."""

from __future__ import annotations

import pytest

from script_loader import load_script

es = load_script("benchmarks/epoch_speed.py")


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
