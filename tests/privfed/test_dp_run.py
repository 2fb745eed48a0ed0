"""DP plugged into the federated loop: ε per round from events, resume, caps, bad input, DP-FedAvg."""

import json

import pytest

from audits.verify import verify_run
from dp import GaussianEvent, PrivacyAccountant
from privfed.federation.runner import FederatedRun, SilentReporter
from tests.privfed.cli_errors import assert_refused


def _dp(cfg, **dp):
    return cfg.replace(dp={"mode": "sample", **dp})


def _records(run, kind):
    out = []
    for line in (run / "ledger.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == kind:
            out.append(rec["payload"])
    return out


def _final_eps(run):
    return _records(run, "run_end")[-1]["final_epsilon"]


class CrashIn(SilentReporter):
    def __init__(self, round_index):
        self.round_index = round_index

    def client_done(self, round_index, client_id, update):
        if round_index == self.round_index:
            raise KeyboardInterrupt


def test_dp_run_reports_epsilon_from_events_and_resume_matches(tmp_path, tiny_config):
    cfg = _dp(tiny_config.replace(fed={"rounds": 3}, eval_every=3), target_epsilon=6.0)
    ref = FederatedRun.create(cfg, tmp_path / "ref").run()
    eps_ref = _final_eps(tmp_path / "ref")
    assert set(eps_ref) == {"0", "1", "2"} and all(0 < e <= 6.0 for e in eps_ref.values())
    # ε recomputed independently from the recorded events equals what the run reported
    events = _records(tmp_path / "ref", "dp_event")
    assert len(events) == 9 and all(e["unit"] == "example" for e in events)
    for cid, eps in eps_ref.items():
        acc = PrivacyAccountant(kind="pld")
        for e in events:
            if e["client"] == cid:
                ev = dict(e["event"])
                assert ev.pop("type") == "gaussian"          # typed events end to end
                acc.add_event(GaussianEvent(**ev))
        assert acc.epsilon(delta=events[0]["delta"]) == pytest.approx(eps, rel=1e-9)
    assert any("differential privacy" in line for line in ref.closing_lines)
    # crash in round 2, resume: the same ε (accountant rebuilt from the signed ledger), same rounds
    with pytest.raises(KeyboardInterrupt):
        FederatedRun.create(cfg, tmp_path / "crash", reporter=CrashIn(2)).run()
    res = FederatedRun.resume(tmp_path / "crash").run()
    assert res.rounds_completed == 3
    assert _final_eps(tmp_path / "crash") == pytest.approx(eps_ref, rel=1e-9)
    assert len(_records(tmp_path / "crash", "dp_event")) == 9     # the crashed round was never charged twice
    rep = verify_run(tmp_path / "crash")
    assert rep.complete and rep.kinds["resume"] == 1


def test_cap_stops_training_before_it_is_exceeded(tmp_path, tiny_config, capsys):
    cfg = _dp(tiny_config.replace(fed={"rounds": 4}, eval_every=4), noise_multiplier=1.5)
    probe = FederatedRun.create(cfg, tmp_path / "probe")
    one = probe.site_privacy[0].release_event()   # the site's own event (it calibrated σ)
    acc = PrivacyAccountant(kind="pld")
    acc.add_event(one)
    e1 = acc.epsilon(delta=probe.privacy.delta)
    acc.add_event(one)
    e2 = acc.epsilon(delta=probe.privacy.delta)
    cap = (e1 + e2) / 2           # room for one round, not two
    capped = cfg.replace(dp={"max_epsilon": cap})
    res = FederatedRun.create(capped, tmp_path / "cap").run()
    assert res.rounds_completed == 1
    aborts = _records(tmp_path / "cap", "abort")
    assert len(aborts) == 1 and "privacy budgets are spent" in aborts[0]["reason"]
    refused = [c for c in _records(tmp_path / "cap", "budget_check") if not c["allowed"]]
    assert refused and all(c["projected_epsilon"] > cap for c in refused)
    assert all(e["epsilon"] <= cap for e in _records(tmp_path / "cap", "dp_event"))
    assert max(_final_eps(tmp_path / "cap").values()) <= cap
    assert verify_run(tmp_path / "cap").complete


BAD_DP = [
    (["--target-epsilon", "0"], "epsilon"),
    (["--target-epsilon", "-3"], "epsilon"),
    (["--delta", "1.5"], "delta"),
    (["--delta", "0.01"], "delta"),                       # ≥ 1/n_local for every client without the override
    (["--delta", "0.01", "--dp-placement", "local"], "delta"),
    (["--noise-multiplier", "-1"], "noise_multiplier"),
    (["--max-grad-norm", "-0.5"], "max_grad_norm"),
    (["--max-grad-norm", "0"], "max_grad_norm"),
    (["--noise-multiplier", "0.5", "--max-epsilon", "0.01"], "cap"),   # one round already costs more
    (["--noise-multiplier", "0.5", "--max-epsilon", "0.01", "--dp-placement", "local"], "cap"),
    (["--dp", "laplace"], "dp mode"),
    (["--accountant", "moments"], "accountant"),
]


@pytest.mark.parametrize("args,match", BAD_DP)
def test_bad_dp_input_one_line_before_training(tmp_path, capsys, args, match):
    out = tmp_path / "run"
    assert_refused(capsys, ["run", "--out", str(out), *args], match=match, nothing_at=out, ignore_case=True)


def test_client_level_dp_charges_every_site_each_round(tmp_path, tiny_config):
    cfg = tiny_config.replace(dp={"mode": "client", "noise_multiplier": 0.8, "max_grad_norm": 0.5},
                              secure_agg={"mode": "off"})
    from privfed.federation.runner import SilentReporter

    class Notes(SilentReporter):
        def run_start(self, *, info, **_):
            self.lines, self.d = info["notes"], info["trainable_parameters"]

    reporter = Notes()
    res = FederatedRun.create(cfg, tmp_path / "c", reporter=reporter).run()
    assert res.rounds_completed == 2
    # 3 sites, σ = 0.8 and this model's d: ‖Σ updates‖/‖noise‖ ≤ 3/(0.8·√d) < 0.1, said at run start
    assert 3 / (0.8 * reporter.d ** 0.5) < 0.1
    assert sum(line.startswith("warning: site-level noise swamps") for line in reporter.lines) == 1
    events = _records(tmp_path / "c", "dp_event")
    assert len(events) == 2 * 3 and {e["unit"] for e in events} == {"client"}
    assert all(e["event"] == {"type": "gaussian", "noise_multiplier": 0.8, "sample_rate": 1.0, "steps": 1}
               for e in events)
    acc = PrivacyAccountant(kind="pld")
    acc.add_event(GaussianEvent(noise_multiplier=0.8, sample_rate=1.0, steps=2))
    assert _final_eps(tmp_path / "c")["0"] == pytest.approx(acc.epsilon(delta=events[0]["delta"]), rel=1e-9)
