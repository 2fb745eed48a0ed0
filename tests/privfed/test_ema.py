"""The moving average of the global model (fed.ema_decay): what it averages, what is evaluated and released, and
that it survives an interrupted run."""

import json

import pytest
import torch
from diffusers import UNet2DModel

from privfed.federation.runner import FederatedRun
from privfed.federation.seeding import derive_seed
from privfed.metrics.eval_loss import eval_loss
from privfed.models import build_scheduler
from tests.privfed.test_run import CrashIn

DECAY = 0.6


def _vec(path):
    m = UNet2DModel.from_pretrained(path)
    return torch.nn.utils.parameters_to_vector(m.parameters()).detach().double()


def _ckpt(run, r):
    return run / "checkpoints" / f"round_{r:04d}"


@pytest.fixture
def ema_config(tiny_config):
    return tiny_config.replace(fed={"rounds": 3, "ema_decay": DECAY}, eval_every=1)


def test_average_weighs_the_rounds_models_and_is_what_is_evaluated(tmp_path, ema_config):
    run = tmp_path / "run"
    FederatedRun.create(ema_config, run).run()
    assert not (_ckpt(run, 0) / "unet_ema").exists()           # round 0 has nothing to average
    models = {r: _vec(_ckpt(run, r) / "unet") for r in (1, 2, 3)}
    # bias-corrected: round 1's average is round 1's model, never mixed with the initial model
    assert torch.allclose(_vec(_ckpt(run, 1) / "unet_ema"), models[1], atol=1e-6)
    norm = sum((1 - DECAY) * DECAY ** (3 - k) for k in (1, 2, 3))
    expected = sum((1 - DECAY) * DECAY ** (3 - k) * models[k] for k in (1, 2, 3)) / norm
    ema3 = _vec(_ckpt(run, 3) / "unet_ema")
    assert torch.allclose(ema3, expected, atol=1e-6)
    assert not torch.allclose(ema3, models[3], atol=1e-4)      # the average is not the last model
    # the recorded evaluation is the average's, not the last model's
    metrics = {m["round"]: m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    fr = FederatedRun.resume(run)
    images = fr.splits.test.images
    seed = derive_seed(ema_config.seed, "eval-loss")
    sched = build_scheduler(ema_config.model)
    on_ema = eval_loss(UNet2DModel.from_pretrained(_ckpt(run, 3) / "unet_ema"), sched, images, seed=seed)
    on_last = eval_loss(UNet2DModel.from_pretrained(_ckpt(run, 3) / "unet"), sched, images, seed=seed)
    assert metrics[3]["eval_loss"] == pytest.approx(on_ema, abs=1e-5)
    assert on_last != pytest.approx(on_ema, abs=1e-5)
    # the empirical audit attacks the released model: the average
    from privfed.empirical import _final_model
    assert torch.equal(torch.nn.utils.parameters_to_vector(_final_model(run).parameters()).double(), ema3)


def test_resumed_run_continues_the_same_average(tmp_path, ema_config):
    FederatedRun.create(ema_config, tmp_path / "ref").run()
    with pytest.raises(KeyboardInterrupt):
        FederatedRun.create(ema_config, tmp_path / "crash", reporter=CrashIn(3)).run()
    crashed = tmp_path / "crash"
    assert FederatedRun.resume(crashed).run().rounds_completed == 3
    assert torch.allclose(_vec(_ckpt(crashed, 3) / "unet_ema"), _vec(_ckpt(tmp_path / "ref", 3) / "unet_ema"),
                          atol=1e-6)


def test_resume_refuses_a_checkpoint_without_its_average(tmp_path, ema_config):
    import shutil

    from privfed.errors import RunDirError

    with pytest.raises(KeyboardInterrupt):
        FederatedRun.create(ema_config, tmp_path / "crash", reporter=CrashIn(3)).run()
    shutil.rmtree(_ckpt(tmp_path / "crash", 2) / "unet_ema")
    with pytest.raises(RunDirError, match="unet_ema"):
        FederatedRun.resume(tmp_path / "crash").run()
