"""Independent ε recomputation (audits.accounting): dp_accounting's own accountants, typed events, tolerance."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest

import audits
from audits.accounting import (ABS_TOLERANCE, GaussianEvent, IndependentAccountant, backend_description,
                               epsilon_for_events, parse_event, within_tolerance)
from audits.errors import BudgetViolationError, UnknownAccountant, UnknownEventType
from audits.ledger import LedgerWriter
from audits.verify import verify_run


def test_pld_matches_dp_accounting_pld_accountant():
    import dp_accounting as dpa
    from dp_accounting.pld import PLDAccountant

    acc = PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(1.1)), 30)
    acc.compose(dpa.PoissonSampledDpEvent(0.08, dpa.GaussianDpEvent(1.5)), 10)
    ours = epsilon_for_events([GaussianEvent(1.1, 0.05, 30), GaussianEvent(1.5, 0.08, 10)], delta=1e-5)
    assert within_tolerance(ours, acc.get_epsilon(1e-5), rel=1e-3)
    assert ours >= acc.get_epsilon(1e-5) - 1e-9  # the coarser grid is pessimistic, never optimistic


def test_rdp_is_looser_than_pld_prv_is_pld_and_unknown_accountant_refused():
    ev = [GaussianEvent(1.0, 0.02, 100)]
    pld = epsilon_for_events(ev, delta=1e-5)
    assert epsilon_for_events(ev, delta=1e-5, accountant="rdp") > pld
    assert epsilon_for_events(ev, delta=1e-5, accountant="prv") == pld
    assert IndependentAccountant(accountant="pld").epsilon(delta=1e-5) == 0.0
    with pytest.raises(UnknownAccountant):
        IndependentAccountant(accountant="moments")


def test_typed_events_parse_and_unknown_types_are_named():
    e = parse_event({"type": "gaussian", "noise_multiplier": 1, "sample_rate": 0.1, "steps": 3})
    assert e == GaussianEvent(1.0, 0.1, 3) and parse_event(e.to_payload()) == e
    for bad in ({"noise_multiplier": 1, "sample_rate": 0.1, "steps": 3}, {"type": "laplace", "scale": 1.0}):
        with pytest.raises(UnknownEventType):
            parse_event(bad)


def test_tolerance_is_relative_plus_the_stated_absolute_slack():
    assert within_tolerance(1.0099, 1.0, rel=0.01) and within_tolerance(1.0 + 0.01 + 0.9 * ABS_TOLERANCE, 1.0, rel=0.01)
    assert not within_tolerance(1.05, 1.0, rel=0.01) and not within_tolerance(0.95, 1.0, rel=0.01)
    assert "dp_accounting" in backend_description() and "independent" in backend_description()


def test_audits_never_imports_the_dp_package_it_checks():
    root = Path(audits.__file__).parent
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text("utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "dp" or n.startswith("dp.") for n in names), f"{f} imports {names}"


def _dp(led, rnd, eps, client="a"):
    led.append("dp_event", {"round": rnd, "client": client, "unit": "example",
                            "event": {"type": "gaussian", "noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 10},
                            "delta": 1e-5, "max_grad_norm": 1.0, "accountant": "pld", "epsilon": eps})


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
