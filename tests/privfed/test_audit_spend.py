"""Issue 15 item 6: `privfed audit --empirical` records what its helper runs spent in the audited run's signed ledger
(an audit_spend record after run_end), the report's totals come from there, and --synthetic-only spends nothing."""

import hashlib
import json
import shutil

import pytest

import privfed.empirical as empirical
from audits import releases as R
from audits.errors import EpsilonMismatchError, LedgerIntegrityError, RecordSchemaError
from audits.ledger import LedgerWriter
from audits.verify import verify_run
from privfed.cli import main
from privfed.pins import read_pins
from tests.privfed.test_audit_command import dp_run  # noqa: F401  (the module's tiny DP run, reused)


def _records(run):
    return [json.loads(x) for x in (run / "ledger.jsonl").read_text().splitlines()]


def _head(run):
    return hashlib.sha256((run / "ledger.jsonl").read_bytes().splitlines()[-1]).hexdigest()


def _audit(src, dst, *flags):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report"))
    pinned = _head(dst)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(empirical, "CANARIES", 32)
        mp.setattr(empirical, "GRADIENT_CANARIES", 200)
        mp.setattr(empirical, "MIA_DRAWS", 2)
        assert main(["audit", "--empirical", *flags, str(dst)]) == 0
    return pinned


@pytest.fixture(scope="module")
def audited(dp_run, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("spend") / "run"
    pinned = _audit(dp_run, run, "--keep-audit-runs")
    return run, pinned


def test_audit_spend_is_signed_after_run_end_with_each_helper_runs_own_epsilon(audited):
    run, pinned = audited
    recs = _records(run)
    assert [r["kind"] for r in recs[-2:]] == ["run_end", "audit_spend"]
    rep = verify_run(run, require_complete=True)          # the whole ledger, audit_spend included, verifies
    assert rep.complete and rep.kinds["audit_spend"] == 1
    spend = recs[-1]["payload"]
    assert spend["data"] == "sites" and spend["audit"] == "empirical"
    runs = {h["label"]: h for h in spend["helper_runs"]}
    assert list(runs) == ["non_private_control", "non_private_control_replay", "dp_model", "dp_model_replay"]
    for label, h in runs.items():
        helper = run / "report" / "empirical_runs" / label           # kept (--keep-audit-runs): compare with it
        own = _records(helper)
        end = next(r["payload"] for r in own if r["kind"] == "run_end")
        start = next(r["payload"] for r in own if r["kind"] == "run_start")
        config_sha = hashlib.sha256((helper / "config.toml").read_bytes()).hexdigest()
        assert h["config_hash"] == start["config_hash"] == config_sha
        assert h["ledger_head"] == _head(helper) and h["rounds"] == end["rounds_completed"]
        if label.startswith("non_private"):
            assert not h["private"] and h["epsilon"] is None and h["dp_mode"] == "off" and not h["dp_events"]
        else:   # ε as the helper run's own accountant reported it at its run_end, with its δ and events
            assert h["private"] and h["epsilon"] == end["final_epsilon"] and h["delta"] == end["delta"]
            assert h["epsilon"] == pytest.approx(verify_run(helper).final_epsilon, rel=0.01, abs=2e-3)
            assert {c: len(e) for c, e in h["dp_events"].items()} == \
                {c: sum(1 for r in own if r["kind"] == "dp_event" and r["payload"]["client"] == c)
                 for c in h["dp_events"]}
    # pins.txt names the new head; a head pinned before the audit still verifies as a prefix, and says so
    assert read_pins(run / "pins.txt")["head_hash"] == _head(run) != pinned
    before = verify_run(run, expected_head_hash=pinned)
    assert before.records_after_pin == 1 and any("audit_spend" in w and "not covered by the pin" in w
                                                 for w in before.warnings)
    assert verify_run(run, expected_head_hash=_head(run)).records_after_pin == 0


def test_report_shows_total_spending_from_the_signed_ledger(audited, capsys):
    run, _ = audited
    doc = json.loads((run / "report" / "report.json").read_text())
    total = doc["sections"]["verdict"]["total_spending"]
    assert total["infinite"] and total["source"].startswith("signed ledger")
    assert {x["total_epsilon"] for x in total["per_site"]} == {"infinite"}
    helpers = {h["label"]: h for h in _records(run)[-1]["payload"]["helper_runs"]}
    for x in total["per_site"]:   # the DP helper runs' ε, from the signed record, adds to the run's
        dp = helpers["dp_model"]["epsilon"][x["site"]] + helpers["dp_model_replay"]["epsilon"][x["site"]]
        assert x["run_epsilon"] > 0 and x["audit_dp_epsilon"] == pytest.approx(dp)
        assert x["total_without_non_private"] == pytest.approx(x["run_epsilon"] + dp)
    assert any("unaccounted (ε = ∞)" in x for x in doc["sections"]["verdict"]["open_issues"])
    assert "empirical privacy audit of it is recorded in the signed ledger" in \
        doc["sections"]["privacy_statement"]["text"]
    html = (run / "report" / "report.html").read_text()
    assert "Total spending: the run and its empirical audit" in html and "signed ledger, audit_spend records" in html
    # the report's totals come from the ledger, not from empirical.json: editing that file changes nothing
    emp = run / "report" / "empirical.json"
    data = json.loads(emp.read_text())
    data["audit_cost"]["helper_runs"] = []
    emp.write_text(json.dumps(data))
    assert main(["audit", str(run)]) == 0
    again = json.loads((run / "report" / "report.json").read_text())["sections"]["verdict"]["total_spending"]
    assert again["per_site"] == total["per_site"]
    assert main(["audit", "verify", str(run)]) == 0
    assert "audit spending (signed audit_spend records" in capsys.readouterr().out
    # every field of the new record is in the release inventory
    assert not [p for w, p in R.unlisted(run) if w == "ledger"]
    assert R.classify("ledger", "audit_spend.helper_runs").status == R.DECLARED


def _resign(run, edit):
    """The run's key holder edits the audit_spend record and re-signs the chain from there (tests.audits helper)."""
    from tests.audits.test_receipt import _forge_ledger
    _forge_ledger(run, edit)


def test_edited_audit_spend_fails_verification(audited, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(audited[0], run, ignore=shutil.ignore_patterns("report"))
    lines = (run / "ledger.jsonl").read_bytes().splitlines()
    rec = json.loads(lines[-1])
    rec["payload"]["helper_runs"][2]["epsilon"]["0"] /= 2             # edited, not re-signed
    from audits.canonical import canonical_bytes
    (run / "ledger.jsonl").write_bytes(b"\n".join(lines[:-1] + [canonical_bytes(rec)]) + b"\n")
    with pytest.raises(LedgerIntegrityError):
        verify_run(run)
    assert main(["audit", "verify", str(run)]) == 1

    # re-signed with the run's key: the halved ε no longer matches the recorded DP events
    shutil.copy2(audited[0] / "ledger.jsonl", run / "ledger.jsonl")

    def halve(records):
        for r in records:
            if r["kind"] == "audit_spend":
                r["payload"]["helper_runs"][2]["epsilon"]["0"] /= 2
    _resign(run, halve)
    with pytest.raises(EpsilonMismatchError, match="audit helper run dp_model, site 0"):
        verify_run(run)


def test_audit_spend_only_after_run_end(tmp_path, dp_run):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(dp_run, run, ignore=shutil.ignore_patterns("report"))
    recs = _records(run)
    assert recs[-1]["kind"] in ("run_end", "audit_spend")
    # the verifier refuses a record of another kind after run_end, and audit_spend before it
    lines = (run / "ledger.jsonl").read_bytes().splitlines()
    end = max(i for i, r in enumerate(recs) if r["kind"] == "run_end")
    (run / "ledger.jsonl").write_bytes(b"\n".join(lines[:end]) + b"\n")        # cut before run_end
    payload = {"audit": "empirical", "data": "synthetic", "synthetic_source": "x",
               "started_utc": "2026-01-01T00:00:00Z", "released": "x", "statement": "x", "helper_runs": [{
                   "label": "non_private_control", "role": "x", "dp_mode": "off", "rounds": 1, "sites": 3,
                   "config_hash": "0" * 64, "data": "synthetic", "private": False, "epsilon": None, "delta": None,
                   "accountant": None, "unit": None, "dp_events": {}, "ledger_head": "0" * 64}]}
    with LedgerWriter.open(run, create=False) as w:
        with pytest.raises(RecordSchemaError, match="may only follow run_end"):
            w.append("audit_spend", payload)
        w.append("run_end", recs[end]["payload"])
        w.append("audit_spend", payload)
        with pytest.raises(RecordSchemaError, match="has ended"):
            w.append("resume", {"from_round": 1})
    assert verify_run(run, check_receipts=False).kinds["audit_spend"] == 1


def test_synthetic_only_audit_spends_nothing(dp_run, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    _audit(dp_run, run, "--synthetic-only")
    spend = _records(run)[-1]
    assert spend["kind"] == "audit_spend" and spend["payload"]["data"] == "synthetic"
    assert "typeset digits" in spend["payload"]["synthetic_source"]
    assert {h["data"] for h in spend["payload"]["helper_runs"]} == {"synthetic"}
    rep = verify_run(run)
    doc = json.loads((run / "report" / "report.json").read_text())
    total = doc["sections"]["verdict"]["total_spending"]
    assert total["synthetic_only"] and not total["infinite"]
    for x in total["per_site"]:     # nothing spent: the total is the run's own ε
        assert x["audit_epsilon"] == 0.0 and x["total_epsilon"] == pytest.approx(rep.final_epsilon[x["site"]])
    res = json.loads((run / "report" / "empirical.json").read_text())
    assert "non_private_control" not in res["membership_inference"]   # never saw the sites' images
    assert res["audit_cost"]["data"] == "synthetic"
    assert not any("ε = ∞" in x for x in doc["sections"]["verdict"]["open_issues"])
