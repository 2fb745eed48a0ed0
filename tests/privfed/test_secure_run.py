"""Secure aggregation plugged into the update seam: same model as plain FedAvg up to quantization, dropouts."""

import json

import numpy as np
import pytest
import torch

from audits.verify import verify_run
from privfed.config import SecAggConfig
from privfed.federation.aggregation import fedavg
from privfed.federation.client import ClientUpdate
from privfed.federation.runner import FederatedRun
from privfed.federation.secure import SecureFedAvg


def _updates(n=4, d=2000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [ClientUpdate(client_id=c, delta=0.02 * torch.randn(d, generator=g), num_examples=50 + 37 * c,
                         loss=0.0, steps=1) for c in range(n)]


@pytest.mark.parametrize("mode", ["secagg", "secagg+"])
def test_secure_mean_equals_fedavg_within_quantization_bound(mode):
    ups = _updates()
    agg = SecureFedAvg(SecAggConfig(mode=mode), run_id="test-run", seed=1).aggregate(ups, round_index=1)
    ref = fedavg(ups)
    bound = agg.transcript["sum_error_bound"]   # on the weighted sum; the weights over all clients sum to 1
    err = (agg.mean_delta.double() - ref.double()).abs().max().item()
    assert 0 < err <= bound + 1e-7
    assert agg.contributors == [0, 1, 2, 3] and agg.transcript["mode"] == mode


def test_dropout_mean_is_survivors_fedavg_and_recorded():
    ups = _updates(n=6)
    sec = SecureFedAvg(SecAggConfig(mode="secagg+", dropout_rate=0.3), run_id="test-run", seed=5)
    agg = sec.aggregate(ups, round_index=3)
    dropped = agg.transcript["dropped"]
    gone = [c for ids in dropped.values() for c in ids]
    assert len(gone) == 1 and sorted(gone + agg.contributors) == list(range(6))
    ref = fedavg([u for u in ups if u.client_id in agg.contributors])
    w = sum(u.num_examples for u in ups if u.client_id in agg.contributors) / sum(u.num_examples for u in ups)
    assert (agg.mean_delta.double() - ref.double()).abs().max().item() <= agg.transcript["sum_error_bound"] / w + 1e-7
    rec = agg.transcript["reconstructed"]
    # survivors' self-mask seeds and dropped clients' mask keys are reconstructed; never both for one client
    assert set(rec["self_mask_reconstructed_for"]) == set(agg.contributors)
    assert set(rec["pairwise_reconstructed_for"]) <= set(gone)
    assert not set(rec["self_mask_reconstructed_for"]) & set(rec["pairwise_reconstructed_for"])


def _weights(path):
    from diffusers import UNet2DModel
    return torch.nn.utils.parameters_to_vector(UNet2DModel.from_pretrained(path).parameters()).detach()


def test_secure_run_matches_plain_run(tmp_path, tiny_config):
    plain = tiny_config.replace(fed={"rounds": 2})
    FederatedRun.create(plain, tmp_path / "plain").run()
    FederatedRun.create(plain.replace(secure_agg={"mode": "secagg+"}), tmp_path / "sec").run()
    a = _weights(tmp_path / "plain" / "checkpoints" / "round_0002" / "unet")
    b = _weights(tmp_path / "sec" / "checkpoints" / "round_0002" / "unet")
    recs = [json.loads(line) for line in (tmp_path / "sec" / "ledger.jsonl").read_text().splitlines()]
    sa = [r["payload"] for r in recs if r["kind"] == "secure_agg"]
    assert len(sa) == 2 and all(t["transcript"]["survivors"] == [0, 1, 2] for t in sa)
    # after round 1 both runs started from the same model: weights agree up to the quantization bound (plus
    # float32 rounding of weight + update); later rounds train from slightly different models (Adam amplifies)
    a1 = _weights(tmp_path / "plain" / "checkpoints" / "round_0001" / "unet")
    b1 = _weights(tmp_path / "sec" / "checkpoints" / "round_0001" / "unet")
    bound = sa[0]["transcript"]["sum_error_bound"]
    assert (a1 - b1).abs().max().item() <= bound + 4 * torch.finfo(torch.float32).eps * a1.abs().max().item()
    assert not torch.equal(a, b) and (a - b).abs().max().item() < 0.05
    assert verify_run(tmp_path / "sec").complete
    assert np.isfinite(b.numpy()).all()


def test_too_many_dropouts_abort_without_revealing_anything():
    ups = _updates(n=6)
    sec = SecureFedAvg(SecAggConfig(mode="secagg+", dropout_rate=0.3), run_id="test-run", seed=5)
    sec.simulated_dropouts = lambda selected, r: [0, 1, 2]    # 3 survivors < t = 5
    agg = sec.aggregate(ups, round_index=1)
    assert agg.contributors == [] and "aborted" in agg.transcript
    assert torch.count_nonzero(agg.mean_delta) == 0
