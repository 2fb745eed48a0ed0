import math

import pytest
import torch

from dp import PrivacyAccountant
from dp.client_level import aggregate_noise, clip_update, client_level_event
from dp.statement import privacy_statement


def test_clip_update():
    v = torch.tensor([3.0, 4.0])
    c, was = clip_update(v, clip_norm=1.0)
    assert was and torch.linalg.vector_norm(c).item() == pytest.approx(1.0)
    c2, was2 = clip_update(v, clip_norm=10.0)
    assert not was2 and torch.equal(c2, v)
    with pytest.raises(ValueError):
        clip_update(torch.tensor([float("nan")]), clip_norm=1.0)
    with pytest.raises(ValueError):
        clip_update(v, clip_norm=0.0)


def test_aggregate_noise_std_and_event():
    g = torch.Generator().manual_seed(0)
    z = aggregate_noise((20000,), noise_multiplier=1.5, clip_norm=0.2, generator=g)
    assert z.std().item() == pytest.approx(0.3, rel=0.03)
    assert aggregate_noise((3,), noise_multiplier=1.0, clip_norm=1.0).shape == (3,)
    acc = PrivacyAccountant()
    for _ in range(10):
        acc.add_event(client_level_event(noise_multiplier=1.0, client_sample_rate=0.5))
    assert 0 < acc.epsilon(delta=1e-3) < math.inf
    assert acc.events[0].steps == 1 and acc.events[0].sample_rate == 0.5


def test_statement_mentions_unit_delta_accountant_and_assumption():
    s = privacy_statement(unit="site", epsilons={"site-0": 1.234, "site-1": 2.5}, delta=1e-5, accountant="pld",
                          sampling="poisson", mode="client-level DP-FedAvg")
    for word in ("2.5", "1e-05", "PLD", "one site", "Poisson", "not protected"):
        assert word in s
    s2 = privacy_statement(unit="image", epsilons={"c": math.inf}, delta=1e-5, accountant="rdp",
                           sampling="shuffle", mode="sample-level DP-SGD")
    assert "not a formal guarantee" in s2 and "∞" in s2


def test_statement_states_add_remove_image_not_patient_and_epsilon_meaning():
    s = privacy_statement(unit="one training image", epsilons={"0": 9.99}, delta=1e-5, accountant="prv",
                          sampling="poisson", mode="sample-level DP-SGD")
    assert "adding or removing one training image" in s and "changing" not in s
    assert "replace-one" in s and "not what was computed" in s
    assert "an image, not a patient" in s and "group privacy" in s
    assert "ε = 10" in s and "22,000" in s
    site = privacy_statement(unit="site", epsilons={"0": 1.0}, delta=1e-5, accountant="pld", mode="client-level")
    assert "not a patient" not in site
