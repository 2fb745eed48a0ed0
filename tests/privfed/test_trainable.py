"""model.trainable: federated training changes only a chosen subset of the UNet's parameters (after public
pretraining), the update vectors carry only those coordinates, DP-SGD clips and noises only those, and the frozen
ones stay bit for bit at their initial values."""

import json

import numpy as np
import pytest
import torch
from torch.nn.utils import parameters_to_vector

import privfed.federation.privacy as P
import privfed.federation.site_privacy as SP
from audits.verify import verify_run
from privfed.config import RunConfig
from privfed.errors import ConfigError
from privfed.federation.runner import FederatedRun
from privfed.models import build_unet, load_unet, parameter_count, trainable_parameters


def _records(run, kind):
    return [r["payload"] for r in (json.loads(x) for x in (run / "ledger.jsonl").read_text().splitlines())
            if r["kind"] == kind]


def test_the_subsets_are_what_their_names_say():
    cfg = RunConfig().model
    model = build_unet(cfg, channels=1, image_size=8)
    names = {id(p): n for n, p in model.named_parameters()}
    every = trainable_parameters(model, "all")
    assert every == list(model.parameters())
    decoder = [names[id(p)] for p in trainable_parameters(model, "decoder")]
    assert decoder and all(n.startswith(("up_blocks.", "conv_norm_out.", "conv_out.")) for n in decoder)
    assert not any(n.startswith(("down_blocks.", "mid_block.", "time_embedding.", "conv_in.")) for n in decoder)
    small = trainable_parameters(model, "norms_biases")
    small_names = {names[id(p)] for p in small}
    assert {n for n in names.values() if n.endswith(".bias")} <= small_names
    norm_weights = {f"{m}.weight" for m, mod in model.named_modules() if isinstance(mod, torch.nn.GroupNorm)}
    assert norm_weights and norm_weights <= small_names
    assert not any(n.endswith(".weight") and n not in norm_weights for n in small_names)
    # model order (the update vector's layout), and the count the distributed-noise checks are sized by
    order = {id(p): i for i, p in enumerate(model.parameters())}
    assert [order[id(p)] for p in small] == sorted(order[id(p)] for p in small)
    for which, params in (("all", every), ("norms_biases", small)):
        assert parameter_count(RunConfig.from_dict({"model": {"trainable": which}}).model, channels=1,
                               image_size=8) == sum(p.numel() for p in params)
    assert 50 * sum(p.numel() for p in small) < sum(p.numel() for p in every)     # 2,161 of 164 k


def test_an_unknown_subset_is_refused():
    with pytest.raises(ConfigError, match="model.trainable"):
        RunConfig.from_dict({"model": {"trainable": "encoder"}})


@pytest.mark.parametrize("which", ["decoder", "norms_biases"])
def test_local_dp_sgd_changes_only_the_chosen_parameters(tmp_path, tiny_config, which):
    cfg = tiny_config.replace(model={"trainable": which}, dp={"mode": "sample", "target_epsilon": 8.0})
    run = FederatedRun.create(cfg, tmp_path / "r")
    res = run.run()
    assert res.rounds_completed == 2
    start = load_unet(tmp_path / "r" / "checkpoints" / "round_0000" / "unet")
    end = load_unet(tmp_path / "r" / "checkpoints" / "round_0002" / "unet")
    chosen = {id(p) for p in trainable_parameters(end, which)}
    for (name, p0), p1 in zip(start.named_parameters(), end.parameters(), strict=True):
        if id(p1) in chosen:
            continue
        assert torch.equal(p0, p1), name                        # frozen: bit for bit the initial weights
    moved = parameters_to_vector(trainable_parameters(end, which)) - \
        parameters_to_vector(trainable_parameters(start, which))
    assert moved.abs().max() > 0
    assert all(c.status == "consistent" for c in verify_run(tmp_path / "r").receipts)


def test_distributed_dp_sgd_masks_and_noises_only_the_chosen_coordinates(tmp_path, tiny_config, monkeypatch):
    which = "norms_biases"
    cfg = tiny_config.replace(model={"trainable": which},
                              dp={"mode": "sample", "placement": "distributed", "target_epsilon": 8.0},
                              secure_agg={"mode": "secagg", "clip_range": 4.0})
    sizes, totals = [], []
    real_share = SP.SiteDistributedDP.add_noise_share

    def spy_share(self, update, *, weight_total, **kw):
        sizes.append(np.asarray(update).size)
        return real_share(self, update, weight_total=weight_total, **kw)

    real_post = P.ServerDistributedDP.post_aggregate

    def spy_post(self, total, total_weight, *, round_index):
        totals.append(total.numpy().copy())
        return real_post(self, total, total_weight, round_index=round_index)

    monkeypatch.setattr(SP.SiteDistributedDP, "add_noise_share", spy_share)
    monkeypatch.setattr(P.ServerDistributedDP, "post_aggregate", spy_post)
    run = FederatedRun.create(cfg, tmp_path / "d")
    train = run.splits.train
    d = parameter_count(cfg.model, channels=train.channels, image_size=train.size)
    assert run.privacy.plan.dimension == d and all(sp.plan.dimension == d for sp in run.site_privacy)
    assert run.run().rounds_completed == 2
    assert set(sizes) == {d} and all(t.size == d for t in totals) and len(totals) == 2
    assert len(_records(tmp_path / "d", "secure_agg")) == 2
    # the unmasked total carries the noise in every coordinate it releases
    assert all(np.count_nonzero(t) > 0.9 * d for t in totals)
    start = load_unet(tmp_path / "d" / "checkpoints" / "round_0000" / "unet")
    end = load_unet(tmp_path / "d" / "checkpoints" / "round_0002" / "unet")
    chosen = {id(p) for p in trainable_parameters(end, which)}
    assert all(torch.equal(p0, p1) for p0, p1 in zip(start.parameters(), end.parameters(), strict=True)
               if id(p1) not in chosen)
