"""ε recomputation adapter: dp_accounting fallback, project accountant when it lands, budget enforcement."""

from __future__ import annotations

import hashlib
import sys
import types

import pytest

from audits.epsilon import ClientAccountant, GaussianEvent, backend_description, epsilon_for_events
from audits.errors import BudgetViolationError, UnknownAccountant
from audits.ledger import LedgerWriter
from audits.verify import verify_run


def test_pld_matches_dp_accounting_accountant():
    import dp_accounting as dpa
    from dp_accounting.pld import pld_privacy_accountant

    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    acc.compose(dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(1.1)), 30)
    acc.compose(dpa.PoissonSampledDpEvent(0.08, dpa.GaussianDpEvent(1.5)), 10)
    ours = epsilon_for_events([GaussianEvent(1.1, 0.05, 30), GaussianEvent(1.5, 0.08, 10)], delta=1e-5)
    assert ours == pytest.approx(acc.get_epsilon(1e-5), rel=1e-3)


def test_rdp_is_looser_than_pld_and_unknown_accountant_refused():
    ev = [GaussianEvent(1.0, 0.02, 100)]
    assert epsilon_for_events(ev, delta=1e-5, accountant="rdp") > epsilon_for_events(ev, delta=1e-5)
    with pytest.raises(UnknownAccountant):
        ClientAccountant(accountant="moments")


def test_project_accountant_used_when_interface_matches(monkeypatch):
    calls = []

    class PrivacyAccountant:
        def __init__(self, *, accountant):
            calls.append(("init", accountant))

        def add_event(self, *, noise_multiplier, sample_rate, steps):
            calls.append(("add", noise_multiplier, sample_rate, steps))

        def get_epsilon(self, *, delta):
            return 1.25

    monkeypatch.setitem(sys.modules, "dp.accountant", types.SimpleNamespace(PrivacyAccountant=PrivacyAccountant))
    assert backend_description() == "dp.accountant.PrivacyAccountant"
    assert epsilon_for_events([GaussianEvent(1.0, 0.1, 3)], delta=1e-5) == 1.25
    assert calls == [("init", "pld"), ("add", 1.0, 0.1, 3)]

    class Other:  # an interface we do not recognise: fall back, and say so
        def __init__(self, x): ...

    monkeypatch.setitem(sys.modules, "dp.accountant", types.SimpleNamespace(PrivacyAccountant=Other))
    assert "not recognised" in backend_description()


def _dp(led, rnd, eps, client="a"):
    led.append("dp_event", {"round": rnd, "client": client, "unit": "example",
                            "event": {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 10}, "delta": 1e-5,
                            "max_grad_norm": 1.0, "accountant": "pld", "epsilon": eps})


def test_training_after_refused_budget_check_fails(tmp_path):
    run = tmp_path / "run"
    (tmp_path / "run").mkdir()
    (run / "config.toml").write_bytes(b"x = 1\n")
    with LedgerWriter.open(run, create=True) as led:
        led.append("run_start", {"config_hash": hashlib.sha256(b"x = 1\n").hexdigest(), "config": {},
                                 "versions": {}, "hardware": {}, "dp_mode": "sample", "secure_agg_mode": "off"})
        e1 = epsilon_for_events([GaussianEvent(1.0, 0.01, 10)], delta=1e-5)
        _dp(led, 1, e1)
        led.append("budget_check", {"round": 2, "client": "a", "projected_epsilon": 2 * e1, "max_epsilon": e1,
                                    "allowed": False})
    verify_run(run)  # so far, so good
    with LedgerWriter.open(run, create=False) as led:
        _dp(led, 2, epsilon_for_events([GaussianEvent(1.0, 0.01, 10)] * 2, delta=1e-5))
    with pytest.raises(BudgetViolationError) as ei:
        verify_run(run)
    assert ei.value.record_index == 3
