import json
import tomllib

import pytest
import torch
from diffusers import UNet2DModel

from privfed.config import RunConfig
from privfed.federation.runner import FederatedRun, SilentReporter


def _weights(path):
    m = UNet2DModel.from_pretrained(path)
    return torch.nn.utils.parameters_to_vector(m.parameters()).detach()


def test_two_round_federated_run(tmp_path, tiny_config):
    res = FederatedRun.create(tiny_config, tmp_path / "run").run()
    run = tmp_path / "run"
    assert res.rounds_completed == 2
    assert RunConfig.from_dict(tomllib.loads((run / "config.toml").read_text())) == tiny_config
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [0, 1, 2]
    # no training loss of private batches anywhere (issue 15): the loss is the model's, on the evaluation split
    assert not any("loss" in m for m in metrics)
    assert metrics[0]["eval_loss"] > 0 and metrics[2]["eval_loss"] > 0 and "eval_loss" not in metrics[1]
    # the FID feature extractor is trained on public typeset digits only; on real handwritten digits it is well
    # above chance (0.1), not as good as one trained on the sites' pooled images (0.97) was
    assert "fid" in metrics[0] and "fid" in metrics[2] and metrics[0]["classifier_test_accuracy"] > 0.4
    assert sum(metrics[2]["class_histogram"]) == tiny_config.eval_samples
    assert (run / "samples" / "round_0002.png").is_file()
    w0 = _weights(run / "checkpoints" / "round_0000" / "unet")
    w2 = _weights(run / "checkpoints" / "round_0002" / "unet")
    assert w0.shape == w2.shape and not torch.equal(w0, w2)
    assert not list(run.rglob(".*tmp*"))
    from audits.verify import verify_run
    report = verify_run(run)
    assert report.complete and report.kinds["round_end"] == 3 and report.kinds["round_start"] == 2


class CrashIn(SilentReporter):
    """Simulates a kill in the middle of a round (after one client has trained)."""

    def __init__(self, round_index):
        self.round_index = round_index

    def client_done(self, round_index, client_id, update):
        if round_index == self.round_index:
            raise KeyboardInterrupt


def test_resume_after_interrupted_round_matches_uninterrupted(tmp_path, tiny_config):
    cfg = tiny_config.replace(fed={"rounds": 3})
    FederatedRun.create(cfg, tmp_path / "ref").run()
    with pytest.raises(KeyboardInterrupt):
        FederatedRun.create(cfg, tmp_path / "crash", reporter=CrashIn(2)).run()
    crashed = tmp_path / "crash"
    assert not (crashed / "checkpoints" / "round_0002").exists()
    res = FederatedRun.resume(crashed).run()
    assert res.rounds_completed == 3
    metrics = [json.loads(line) for line in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [0, 1, 2, 3]
    ref = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    # evaluated rounds only (eval_every = 2: rounds 2 and 3); pytest.approx does not take None
    assert [m["round"] for m in metrics if "eval_loss" in m] == [m["round"] for m in ref if "eval_loss" in m]
    assert [m["eval_loss"] for m in metrics[1:] if "eval_loss" in m] == pytest.approx(
        [m["eval_loss"] for m in ref[1:] if "eval_loss" in m], rel=1e-5)
    assert [m["eval_loss"] for m in metrics if "eval_loss" in m] and metrics[3]["eval_loss"] > 0
    from audits.verify import verify_run
    assert verify_run(crashed).kinds["resume"] == 1
    assert torch.allclose(_weights(crashed / "checkpoints" / "round_0003" / "unet"),
                          _weights(tmp_path / "ref" / "checkpoints" / "round_0003" / "unet"), atol=1e-6)


def test_create_refuses_existing_run(tmp_path, tiny_config):
    FederatedRun.create(tiny_config.replace(fed={"rounds": 1}), tmp_path / "r").run()
    from privfed.errors import RunDirError
    with pytest.raises(RunDirError, match="already holds a run"):
        FederatedRun.create(tiny_config, tmp_path / "r")
