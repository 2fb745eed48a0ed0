"""Events, accountant (PLD/PRV/RDP), calibration, budget and validation."""

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import dp
from dp import (BudgetExceeded, GaussianEvent, PrivacyAccountant, calibrate_noise_multiplier, check_budget,
                default_delta, enforce_budget, validate_dp_args)

DELTA = 1e-5


def _ref_pld(events, delta=DELTA):
    """dp_accounting PLDAccountant from scratch (its default grid 1e-4)."""
    import dp_accounting as dpa
    from dp_accounting.pld import pld_privacy_accountant as pa

    acc = pa.PLDAccountant()
    acc.compose(dpa.ComposedDpEvent([e.to_dp_accounting() for e in events]))
    return acc.get_epsilon(delta)


def test_is_this_projects_dp():
    assert dp.PROJECT == "privfed" and dp.__version__


def test_event_json_roundtrip_and_dp_accounting():
    e = GaussianEvent(noise_multiplier=1.1, sample_rate=0.02, steps=7)
    assert GaussianEvent.from_json(e.to_json()) == e
    d = e.to_dp_accounting()
    assert d.count == 7 and d.event.sampling_probability == 0.02 and d.event.event.noise_multiplier == 1.1
    with pytest.raises(ValueError):
        GaussianEvent(noise_multiplier=-1, sample_rate=0.1, steps=1)
    with pytest.raises(ValueError):
        GaussianEvent(noise_multiplier=1, sample_rate=1.5, steps=1)
    with pytest.raises(TypeError):
        GaussianEvent(noise_multiplier=1, sample_rate=0.1, steps=1.0)


def test_pld_matches_dp_accounting_from_scratch_with_changing_sigma_q():
    events = [GaussianEvent(noise_multiplier=s, sample_rate=q, steps=n)
              for s, q, n in [(1.0, 0.02, 40), (1.3, 0.01, 60), (0.9, 0.02, 40), (1.0, 0.02, 40), (1.3, 0.01, 60)]]
    acc = PrivacyAccountant()
    for e in events:
        acc.add_event(e)
    ref = _ref_pld(events)
    eps = acc.epsilon(delta=DELTA)
    assert abs(eps - ref) / ref < 0.01, (eps, ref)
    # order does not matter (composition commutes) and incremental == from scratch
    acc2 = PrivacyAccountant()
    for e in reversed(events):
        acc2.add_event(e)
    assert abs(acc2.epsilon(delta=DELTA) - eps) / eps < 1e-3
    # PRV alias, RDP looser but same ballpark
    prv = PrivacyAccountant(kind="prv")
    rdp = PrivacyAccountant(kind="rdp")
    for e in events:
        prv.add_event(e)
        rdp.add_event(e)
    assert prv.epsilon(delta=DELTA) == pytest.approx(eps, rel=1e-9)
    assert eps <= rdp.epsilon(delta=DELTA) <= 2 * eps


def test_small_epsilon_grid_is_accurate():
    events = [GaussianEvent(noise_multiplier=5.0, sample_rate=0.01, steps=100)]
    acc = PrivacyAccountant()
    acc.add_event(events[0])
    ref = _ref_pld(events)
    assert abs(acc.epsilon(delta=DELTA) - ref) / ref < 0.01


def test_state_dict_roundtrip_same_epsilon():
    for kind in ("pld", "rdp"):
        acc = PrivacyAccountant(kind=kind)
        for s in (1.0, 1.2, 1.0):
            acc.add_event(GaussianEvent(noise_multiplier=s, sample_rate=0.05, steps=20))
        state = json.loads(json.dumps(acc.state_dict()))
        acc2 = PrivacyAccountant()
        acc2.load_state_dict(state)
        assert acc2.kind == kind and acc2.events == acc.events
        assert acc2.epsilon(delta=DELTA) == pytest.approx(acc.epsilon(delta=DELTA), rel=1e-9)


def test_edge_cases_sigma_zero_steps_zero_and_projection():
    acc = PrivacyAccountant()
    assert acc.epsilon(delta=DELTA) == 0.0
    acc.add_event(GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=0))
    assert acc.epsilon(delta=DELTA) == 0.0
    e = GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=10)
    proj = acc.project_epsilon(e, delta=DELTA)
    assert acc.epsilon(delta=DELTA) == 0.0 and len(acc.events) == 1
    acc.add_event(e)
    assert acc.epsilon(delta=DELTA) == pytest.approx(proj, rel=1e-6)
    assert acc.project_epsilon(GaussianEvent(noise_multiplier=0.0, sample_rate=0.1, steps=1), delta=DELTA) == math.inf
    acc.add_event(noise_multiplier=0.0, sample_rate=0.1, steps=1)  # keyword form (audits adapter)
    assert acc.get_epsilon(delta=DELTA) == math.inf
    assert PrivacyAccountant(accountant="rdp").kind == "rdp"
    with pytest.raises(dp.UnknownAccountant):
        PrivacyAccountant(kind="gdp")
    with pytest.raises(ValueError):
        acc.epsilon(delta=0.0)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=st.floats(0.5, 8.0), q=st.sampled_from([0.01, 0.05, 0.2]), steps=st.integers(1, 200),
       prior=st.booleans())
def test_calibration_never_overshoots(target, q, steps, prior):
    priors = [GaussianEvent(noise_multiplier=3.0, sample_rate=0.05, steps=10)] if prior else []
    sigma = calibrate_noise_multiplier(target_epsilon=target, target_delta=DELTA, sample_rate=q, steps=steps,
                                       prior_events=priors)
    acc = PrivacyAccountant()
    for e in priors:
        acc.add_event(e)
    acc.add_event(GaussianEvent(noise_multiplier=sigma, sample_rate=q, steps=steps))
    eps = acc.epsilon(delta=DELTA)
    assert eps <= target
    # and it is (nearly) the smallest: 1% less noise overshoots or the accountant is at its floor
    acc_lo = PrivacyAccountant()
    for e in priors:
        acc_lo.add_event(e)
    acc_lo.add_event(GaussianEvent(noise_multiplier=sigma * 0.99, sample_rate=q, steps=steps))
    assert acc_lo.epsilon(delta=DELTA) > target * 0.98


def test_calibration_rdp_and_default_delta():
    s = calibrate_noise_multiplier(target_epsilon=2.0, target_delta=DELTA, sample_rate=0.05, steps=50,
                                   accountant="rdp")
    acc = PrivacyAccountant(kind="rdp")
    acc.add_event(GaussianEvent(noise_multiplier=s, sample_rate=0.05, steps=50))
    assert acc.epsilon(delta=DELTA) <= 2.0
    assert default_delta(100) == 1e-5 and default_delta(1_000_000) == 1e-7
    assert all(default_delta(n) < 1 / n for n in (1, 7, 1000, 10**8))


def test_budget_check_refuses_the_round_that_would_exceed_cap():
    acc = PrivacyAccountant()
    ev = GaussianEvent(noise_multiplier=1.0, sample_rate=0.05, steps=50)
    cap = 3.0
    rounds = 0
    while True:
        res = check_budget(acc, ev, delta=DELTA, max_epsilon=cap)
        if not res["allowed"]:
            break
        enforce_budget(acc, ev, delta=DELTA, max_epsilon=cap)
        acc.add_event(ev)
        rounds += 1
        assert acc.epsilon(delta=DELTA) <= cap
    assert rounds >= 1 and res["projected_epsilon"] > cap
    with pytest.raises(BudgetExceeded) as ei:
        enforce_budget(acc, ev, delta=DELTA, max_epsilon=cap)
    assert ei.value.projected_epsilon > cap
    json.dumps(res)


@pytest.mark.parametrize("kw, msg", [
    (dict(target_epsilon=0.0), "target_epsilon"),
    (dict(target_epsilon=-1.0), "target_epsilon"),
    (dict(target_delta=0.0), "target_delta"),
    (dict(target_delta=1.0), "target_delta"),
    (dict(target_delta=0.01, n_local=100), "1/n_local"),
    (dict(noise_multiplier=-0.5), "noise_multiplier"),
    (dict(max_grad_norm=0.0), "max_grad_norm"),
    (dict(max_epsilon=0.1, one_round_event=GaussianEvent(noise_multiplier=0.5, sample_rate=0.5, steps=10)),
     "single round"),
])
def test_validation_errors(kw, msg):
    args = dict(target_epsilon=1.0, target_delta=1e-5, n_local=1000, noise_multiplier=1.0, max_grad_norm=1.0,
                max_epsilon=10.0)
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        validate_dp_args(**args)


def test_validation_ok_and_override():
    validate_dp_args(target_epsilon=1.0, target_delta=0.05, n_local=100, noise_multiplier=1.0, max_grad_norm=1.0,
                     max_epsilon=10.0, allow_large_delta=True,
                     one_round_event=GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=10))


def test_rdp_hides_dp_accountings_unconverged_order_warnings_without_changing_epsilon(caplog):
    """At the default sites' sampling rate (batch 64 of ~140 images) dp_accounting warns once per fractional order
    and call that a series did not converge (and drops the order: ε can only grow). The RDP accountant keeps that
    out of the user's terminal; ε is dp_accounting's own."""
    import logging

    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    from dp.accountant import _DropUnconvergedOrders

    absl = logging.getLogger("absl")
    for f in [f for f in absl.filters if isinstance(f, _DropUnconvergedOrders)]:
        absl.removeFilter(f)
    event = GaussianEvent(noise_multiplier=1.1, sample_rate=0.46, steps=30)
    raw = rdp.RdpAccountant()
    with caplog.at_level(logging.WARNING):
        raw.compose(event.to_dp_accounting())
    assert any("failed to converge" in r.getMessage() for r in caplog.records)     # the condition is real here
    caplog.clear()
    acc = PrivacyAccountant(kind="rdp")
    with caplog.at_level(logging.WARNING):
        acc.add_event(event)
        eps = acc.epsilon(delta=1e-5)
        calibrate_noise_multiplier(target_epsilon=10, target_delta=1e-5, sample_rate=0.46, steps=30, accountant="rdp")
    assert not [r for r in caplog.records if "failed to converge" in r.getMessage()]
    assert eps == raw.get_epsilon(1e-5)
