"""Secure aggregation between separate parties: the server sees only masked vectors and the sum; the model equals
plain FedAvg up to the quantization bound; dropouts are recovered or abort with nothing revealed."""

import json

import numpy as np
import torch

from audits.verify import verify_run
from privfed.federation.runner import FederatedRun

SERVER_BOUND = {"offer_reply", "train_reply", "secagg_reply", "close_reply", "error"}


def _weights(path):
    from diffusers import UNet2DModel
    return torch.nn.utils.parameters_to_vector(UNet2DModel.from_pretrained(path).parameters()).detach()


def _records(run, kind):
    return [json.loads(line)["payload"] for line in (run / "ledger.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == kind]


def test_secure_run_matches_plain_run_and_the_server_never_sees_a_plaintext_update(tmp_path, tiny_config):
    plain = tiny_config.replace(fed={"rounds": 2})
    FederatedRun.create(plain, tmp_path / "plain").run()
    seen = []
    sec = FederatedRun.create(plain.replace(secure_agg={"mode": "secagg+"}), tmp_path / "sec")
    sec.observer = lambda direction, m: seen.append((direction, m.kind, {k: a.dtype for k, a in m.arrays.items()}))
    sec.run()
    to_server = [s for s in seen if s[0] == "to_server"]
    assert to_server and {k for _, k, _ in to_server} <= SERVER_BOUND
    # the only arrays that ever reach the server are masked vectors in Z_2^k (uint32), never float updates
    dtypes = {str(d) for _, _, arrays in to_server for d in arrays.values()}
    assert dtypes <= {"uint32"} and "uint32" in dtypes
    a = _weights(tmp_path / "plain" / "checkpoints" / "round_0002" / "unet")
    b = _weights(tmp_path / "sec" / "checkpoints" / "round_0002" / "unet")
    sa = _records(tmp_path / "sec", "secure_agg")
    assert len(sa) == 2 and all(t["transcript"]["survivors"] == [0, 1, 2] for t in sa)
    # after round 1 both runs started from the same model: weights agree up to the quantization bound (plus
    # float32 rounding of weight + update); later rounds train from slightly different models (Adam amplifies)
    a1 = _weights(tmp_path / "plain" / "checkpoints" / "round_0001" / "unet")
    b1 = _weights(tmp_path / "sec" / "checkpoints" / "round_0001" / "unet")
    bound = sa[0]["transcript"]["sum_error_bound"]
    assert 0 < (a1 - b1).abs().max().item() <= bound + 4 * torch.finfo(torch.float32).eps * a1.abs().max().item()
    assert not torch.equal(a, b) and (a - b).abs().max().item() < 0.05
    assert verify_run(tmp_path / "sec").complete
    assert np.isfinite(b.numpy()).all()


def test_dropout_before_masking_is_recovered_and_only_released_updates_are_charged(tmp_path, tiny_config):
    cfg = tiny_config.replace(fed={"rounds": 1, "clients": 6}, eval_every=1,
                              secure_agg={"mode": "secagg+", "dropout_rate": 0.3},
                              dp={"mode": "sample", "target_epsilon": 8.0})
    FederatedRun.create(cfg, tmp_path / "d").run()
    sa = _records(tmp_path / "d", "secure_agg")[0]["transcript"]
    gone = sorted(set(range(6)) - set(sa["survivors"]))
    assert len(gone) == 1 and len(sa["survivors"]) == 5
    charged = sorted(int(e["client"]) for e in _records(tmp_path / "d", "dp_event"))
    assert charged == sa["survivors"]          # the dropped site never released its update: nothing to charge
    receipt = (tmp_path / "d" / "sites" / str(gone[0]) / "receipt.jsonl").read_text()
    assert "dp_spend" not in receipt
    rep = verify_run(tmp_path / "d")            # receipts and ledger agree site by site
    assert rep.complete and all(c.status == "consistent" for c in rep.receipts)


def test_too_many_dropouts_abort_without_revealing_anything(tmp_path, tiny_config):
    cfg = tiny_config.replace(fed={"rounds": 1}, eval_every=1, secure_agg={"mode": "secagg"})
    run = FederatedRun.create(cfg, tmp_path / "a")
    run._dropouts = lambda r: {0}              # 2 survivors < t = 3
    run.run()
    t = _records(tmp_path / "a", "secure_agg")[0]["transcript"]
    assert "aborted" in t and t["survivors"] == []
    w0 = _weights(tmp_path / "a" / "checkpoints" / "round_0000" / "unet")
    w1 = _weights(tmp_path / "a" / "checkpoints" / "round_0001" / "unet")
    assert torch.equal(w0, w1)                 # nothing was revealed, the global model is unchanged


def test_sealed_state_engine_gives_the_same_run(tmp_path, tiny_config):
    """Sealing and unsealing each site's round state at every message (what a process-per-message engine such
    as Flower's ClientApp must do) changes nothing in the result."""
    cfg = tiny_config.replace(fed={"rounds": 1}, eval_every=1, secure_agg={"mode": "secagg+",
                                                                           "seeded_rounding": True})
    FederatedRun.create(cfg, tmp_path / "live").run()
    sealed = FederatedRun.create(cfg, tmp_path / "sealed")
    sealed.reseal_state = True
    sealed.run()
    assert torch.equal(_weights(tmp_path / "live" / "checkpoints" / "round_0001" / "unet"),
                       _weights(tmp_path / "sealed" / "checkpoints" / "round_0001" / "unet"))
