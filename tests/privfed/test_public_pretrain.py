"""Public pretraining: typeset digits (public synthetic data) and the non-private warm start of the global model."""

import json

import numpy as np
import pytest
import torch

from privfed.config import ModelConfig, RunConfig
from privfed.data.typeset import typeset_digits
from privfed.errors import ConfigError
from privfed.models import build_scheduler, build_unet, diffusion_loss
from privfed.models.pretrain import public_pretrain


def test_typeset_digits_look_like_uci_digits():
    ds = typeset_digits(300, seed=1)
    assert ds.images.shape == (300, 1, 8, 8) and ds.images.dtype == torch.float32
    assert set(ds.labels.tolist()) == set(range(10))
    # UCI reduction: ink pixels per 4×4 block, 0..16, stored as round(k·255/16), scaled to [-1, 1]
    levels = {round(k * 255 / 16) / 127.5 - 1 for k in range(17)}
    vals = set(np.round(ds.images.unique().numpy().astype(np.float64), 5))
    assert vals <= {round(v, 5) for v in levels}
    ink = (ds.images > -1).flatten(1).float().mean(1)
    assert 0.15 < float(ink.mean()) < 0.7           # strokes, not blank or filled frames
    assert not torch.equal(ds.images[0], ds.images[1])


def test_typeset_digits_deterministic_in_seed_and_other_shapes():
    a, b, c = typeset_digits(20, seed=5), typeset_digits(20, seed=5), typeset_digits(20, seed=6)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    rgb = typeset_digits(4, image_size=28, channels=3, seed=0)
    assert rgb.images.shape == (4, 3, 28, 28)
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 2])


def test_public_pretraining_lowers_the_loss_on_public_data():
    cfg = ModelConfig(base_channels=8, num_train_timesteps=50, attention=False)
    torch.manual_seed(0)
    model, sched = build_unet(cfg, channels=1, image_size=8), build_scheduler(cfg)
    data = typeset_digits(256, seed=2)

    def held_out_loss():
        with torch.no_grad():
            return float(diffusion_loss(model, sched, data.images, generator=torch.Generator().manual_seed(9)))

    before = held_out_loss()
    calls = []
    public_pretrain(model, sched, data, steps=60, lr=3e-3, batch_size=32, generator=torch.Generator().manual_seed(1),
                    progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (60, 60) and len(calls) == 60
    assert held_out_loss() < 0.7 * before


def test_public_pretrain_resolution_and_validation():
    assert RunConfig().public_pretrain == "typeset-digits"
    assert RunConfig.from_dict({"data": {"dataset": "npz", "path": "x.npz"}}).public_pretrain == "none"
    assert RunConfig.from_dict({"model": {"public_pretrain": "none"}}).public_pretrain == "none"
    with pytest.raises(ConfigError, match="public_pretrain"):
        RunConfig.from_dict({"model": {"public_pretrain": "imagenet"}})
    with pytest.raises(ConfigError, match="pretrain_steps"):
        RunConfig.from_dict({"model": {"pretrain_steps": 0}})


def _run(cfg, out):
    from privfed.federation.runner import FederatedRun

    return FederatedRun.create(cfg, out).run()


def test_run_records_public_pretraining(tiny_config, tmp_path):
    res = _run(tiny_config, tmp_path / "run")
    first = res.metrics[0]
    assert first["round"] == 0 and first["public_pretrain"] == "typeset-digits" and first["pretrain_loss"] > 0
    start = json.loads((tmp_path / "run" / "ledger.jsonl").read_text().splitlines()[0])
    assert start["kind"] == "run_start"
    assert start["payload"]["public_pretrain"].startswith("typeset-digits: 5 non-private Adam steps")
    assert "public pretraining" in res.initial_label


def test_run_without_public_pretraining_starts_from_random_weights(tiny_config, tmp_path):
    cfg = tiny_config.replace(model={"public_pretrain": "none"}, fed={"rounds": 1})
    res = _run(cfg, tmp_path / "run")
    assert "public_pretrain" not in res.metrics[0] and res.initial_label == "untrained model"
    start = json.loads((tmp_path / "run" / "ledger.jsonl").read_text().splitlines()[0])
    assert start["payload"]["public_pretrain"].startswith("none")


def test_report_names_the_initial_model(tiny_config, tmp_path):
    from audits.report import build_report

    _run(tiny_config.replace(fed={"rounds": 1}), tmp_path / "run")
    doc = json.loads(build_report(tmp_path / "run").json.read_text())
    assert doc["sections"]["training"]["initial_model"].startswith("typeset-digits: 5 non-private Adam steps")
    assert "no privacy budget spent" in (tmp_path / "run" / "report" / "report.html").read_text()
