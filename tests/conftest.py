"""Shared fixtures: where the shared real data lives, tiny configs that train in seconds."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_NPZ = ROOT.parent / "shared" / "data" / "pneumoniamnist_subset.npz"


@pytest.fixture
def shared_npz() -> Path:
    if not SHARED_NPZ.is_file():
        pytest.fail(f"the shared test data set is missing: {SHARED_NPZ} (CI provides ../shared/data)")
    return SHARED_NPZ


@pytest.fixture
def tiny_config():
    from privfed.config import RunConfig

    return RunConfig.from_dict({
        "seed": 3, "eval_every": 2, "eval_samples": 16,
        "model": {"base_channels": 8, "num_train_timesteps": 50, "sampling_steps": 2, "pretrain_steps": 5,
                  "pretrain_set_size": 64},
        "fed": {"clients": 3, "rounds": 2, "batch_size": 16, "local_epochs": 1},
        "data": {"partition": "iid"},
        "dp": {"mode": "off"}, "secure_agg": {"mode": "off"},
    })
