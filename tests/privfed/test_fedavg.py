import numpy as np  # noqa: F401
import pytest
import torch

from privfed.federation.aggregation import PlainAggregator, client_weights, fedavg
from privfed.parties import messages as M
from privfed.federation.client import ClientUpdate


def test_fedavg_equals_hand_computed_weighted_mean():
    a = ClientUpdate(client_id=0, delta=torch.tensor([1.0, 2.0, -3.0]), num_examples=10, loss=0.0, steps=1)
    b = ClientUpdate(client_id=4, delta=torch.tensor([4.0, 0.0, 1.0]), num_examples=30, loss=0.0, steps=1)
    # (10*[1,2,-3] + 30*[4,0,1]) / 40 = [130, 20, 0] / 40
    expected = torch.tensor([3.25, 0.5, 0.0])
    assert torch.allclose(fedavg([a, b]), expected)
    ups = {0: a, 4: b}

    def exchange(kind, fields, arrays):       # each site scales its own update by w_i / weight_total
        assert kind == "upload"
        return {c: M.make("plain_update", run_id="r", round_index=1, sender=c, receiver=M.SERVER,
                          fields={"weight": float(ups[c].num_examples)},
                          arrays={"delta": (ups[c].delta.double() * ups[c].num_examples
                                            / f["weight_total"]).numpy()}) for c, f in fields.items()}

    res = PlainAggregator().aggregate(exchange, round_index=1, participants=[0, 4], weights={0: 10.0, 4: 30.0},
                                      dim=3)
    # (sum, total_weight): nothing normalised; the privacy layer divides
    assert res.total_weight == 40.0 and torch.allclose((res.total / res.total_weight).float(), expected)
    assert torch.allclose(res.total.float(), 10 * a.delta + 30 * b.delta)
    assert res.contributors == [0, 4] and res.transcript["plaintext"] is True
    assert client_weights([a, b]) == {0: 0.25, 4: 0.75}


def test_fedavg_on_a_toy_model_matches_manual_average():
    torch.manual_seed(0)
    models = [torch.nn.Linear(3, 2) for _ in range(3)]
    base = torch.nn.Linear(3, 2)
    vec = torch.nn.utils.parameters_to_vector
    ups = [ClientUpdate(client_id=i, delta=(vec(m.parameters()) - vec(base.parameters())).detach(),
                        num_examples=n, loss=0.0, steps=1) for i, (m, n) in enumerate(zip(models, (1, 2, 5)))]
    new = vec(base.parameters()).detach() + fedavg(ups)
    manual_w = (models[0].weight * 1 + models[1].weight * 2 + models[2].weight * 5) / 8
    manual_b = (models[0].bias * 1 + models[1].bias * 2 + models[2].bias * 5) / 8
    assert torch.allclose(new, torch.cat([manual_w.flatten(), manual_b]).detach(), atol=1e-6)


def test_dp_fedavg_adds_server_noise_to_the_sum_and_divides_by_the_expected_number_of_sites(tiny_config):
    from privfed.federation.privacy import server_privacy

    cfg = tiny_config.replace(dp={"mode": "client", "noise_multiplier": 0.8, "max_grad_norm": 0.5})
    p = server_privacy(cfg, [100, 100, 100])
    d = 200_000
    noisy = p.post_aggregate(torch.zeros(d, dtype=torch.float64), 0.0, round_index=1).double()
    assert abs(noisy.std().item() - 0.8 * 0.5 / 3) < 0.01 * 0.8 * 0.5 / 3     # σC on the sum, / (q·n) sites
    total = torch.full((d,), 3.0, dtype=torch.float64)            # three clipped updates of 1.0 each
    assert abs(p.post_aggregate(total, 3.0, round_index=1).double().mean().item() - 1.0) < 0.01
    assert any("trusts the server" in line or "sees the clean sum" in line for line in p.notes())


def test_site_level_dp_warns_when_the_noise_must_swamp_every_possible_update(tiny_config):
    """10 sites, σ = 1.33 (ε = 16 on the digits), d = 163,985: ‖Σ updates‖/‖noise‖ ≤ 10/(1.33·405) ≈ 0.019. Both
    site-level placements say so at run start; DP-SGD and a small model do not."""
    import math

    from dp import signal_to_noise_bound
    from privfed.federation.privacy import server_privacy

    d = 163_985
    assert signal_to_noise_bound(sites_per_round=10, noise_multiplier=1.33, dimension=d) == pytest.approx(
        10 / (1.33 * math.sqrt(d)))
    assert signal_to_noise_bound(sites_per_round=10, noise_multiplier=0.0, dimension=d) == math.inf
    with pytest.raises(ValueError):
        signal_to_noise_bound(sites_per_round=0, noise_multiplier=1.0, dimension=d)

    def warnings(cfg, dim):
        return [line for line in server_privacy(cfg, [100] * cfg.fed.clients, dimension=dim).notes()
                if line.startswith("warning: site-level noise swamps")]

    server = tiny_config.replace(fed={"clients": 10, "fraction": 1.0},
                                 dp={"mode": "client", "noise_multiplier": 1.33, "max_grad_norm": 0.5})
    [line] = warnings(server, d)
    assert f"{1 / signal_to_noise_bound(sites_per_round=10, noise_multiplier=1.33, dimension=d):,.0f}×" in line
    assert f"≈ {1.33 * math.sqrt(d):,.0f} sites per round" in line
    assert warnings(server, 100) == []                            # 10/(1.33·10) = 0.75: learnable
    assert warnings(server, None) == []                           # dimension unknown: nothing claimed
    # q = 0.5: five sites per round on average
    half = server.replace(fed={"fraction": 0.5, "min_clients": 1}, secure_agg={"mode": "off"})
    assert "with 5 sites per round" in warnings(half, d)[0]
    distributed = server.replace(dp={"placement": "distributed"}, secure_agg={"mode": "secagg", "clip_range": 40.0})
    [line] = warnings(distributed, d)
    assert "with 10 sites per round" in line
    sample = tiny_config.replace(dp={"mode": "sample", "noise_multiplier": 1.0})
    assert warnings(sample, d) == []
