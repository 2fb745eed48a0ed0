"""build_report: self-contained HTML with every section, report.json valid against its schema, not-recorded."""

from __future__ import annotations

import html
import json
import re

import jsonschema
import pytest

from audits.errors import IncompleteRunDirectory, LedgerIntegrityError, MissingRunDirectory, ReportDependencyMissing
from audits.ledger import LedgerWriter
from audits.ledger_schema import load_schema
from audits.report import SECTIONS, build_report

from .conftest import CLIENTS, ROUNDS


@pytest.fixture(scope="module")
def built(pristine_run, tmp_path_factory):
    import shutil

    run = tmp_path_factory.mktemp("rep") / "run"
    shutil.copytree(pristine_run, run)
    (run / "report").mkdir()
    (run / "report" / "empirical.json").write_text(json.dumps({"method": "canary", "epsilon_lower_bound": 0.4}))
    return run, build_report(run)


def test_report_json_validates_against_schema(built):
    run, paths = built
    doc = json.loads(paths.json.read_text())
    jsonschema.validate(doc, load_schema("report-v1"))
    s = doc["sections"]
    assert doc["verified"] and s["integrity"]["verified"] and s["integrity"]["complete"]
    assert set(s["privacy_loss"]["final"]) == set(CLIENTS)
    assert len(s["privacy_loss"]["rows"]) == len(CLIENTS) * ROUNDS
    assert all(r["within_cap"] is True for r in s["privacy_loss"]["rows"])
    assert [r["round"] for r in s["utility"]["fid"]] == list(range(1, ROUNDS + 1))
    assert s["empirical_audit"]["results"]["method"] == "canary"
    assert s["data_governance"]["clients"][1]["label_counts"]["1"] == "<5"
    assert "_b64" not in paths.json.read_text()


def test_html_has_every_section_and_is_self_contained(built):
    run, paths = built
    html = paths.html.read_text()
    for sid, title in SECTIONS:
        assert f'<h2 id="{sid}">{title}</h2>' in html
    assert "<style>" in html and "@media print" in html
    assert not re.search(r'<(link|script)\b', html) and not re.search(r'src="(?!data:)', html)
    assert html.count("data:image/png;base64,") >= 3 + ROUNDS  # ε, FID, loss figures + sample grids
    assert "PASSED" in html and "VERIFICATION FAILED" not in html
    assert all((run / "report" / "figures" / n).is_file() for n in ("epsilon.png", "fid.png"))


def test_dp_hazards_fit_the_mechanism_and_accountant_the_events_name(built):
    """Floating-point noise is a hazard of Gaussian events (the synthetic run's, PLD); exact discrete shares
    (distributed DP-SGD) are not exposed to it, and an RDP-accounted run is told what RDP's ε is."""
    from audits.report.text import DISCRETE_NOISE, DP_HAZARDS, RDP_NUMERICS, dp_hazards

    _, paths = built
    rows = json.loads(paths.json.read_text())["sections"]["dp_implementation"]["hazards"]
    assert [(r["hazard"], r["detail"]) for r in rows] == DP_HAZARDS
    assert "low-order bits" in dict(DP_HAZARDS)["Floating-point noise"]
    discrete = dict(dp_hazards({"distributed_discrete_gaussian"}, {"rdp"}))
    assert discrete["Floating-point noise"] == DISCRETE_NOISE[1] and "exactly" in DISCRETE_NOISE[1]
    assert discrete["Accountant numerics"] == RDP_NUMERICS[1]
    mixed = dict(dp_hazards({"distributed_discrete_gaussian", "poisson_gaussian"}, {"pld"}))
    assert mixed == dict(DP_HAZARDS)          # one floating-point Gaussian event keeps the hazard
    assert len(dp_hazards(set(), set())) == len(DP_HAZARDS)


def test_unrecorded_things_say_not_recorded(tmp_path):
    run = tmp_path / "run"
    with LedgerWriter.open(run, create=True) as led:
        import hashlib

        (run / "config.toml").write_text("seed = 1\n")
        led.append("run_start", {"config_hash": hashlib.sha256(b"seed = 1\n").hexdigest(), "config": {},
                                 "versions": {}, "hardware": {}, "dp_mode": "off", "secure_agg_mode": "off"})
    paths = build_report(run)
    doc = json.loads(paths.json.read_text())
    jsonschema.validate(doc, load_schema("report-v1"))
    s = doc["sections"]
    for value in (s["privacy_loss"]["final"], s["secure_aggregation"]["rounds"], s["data_governance"]["clients"],
                  s["training"]["rounds"], s["utility"]["fid"], s["utility"]["samples"], s["empirical_audit"],
                  s["system"]["intended_use"], s["dp_implementation"]["noise_rng"], s["environment"]["run_versions"]):
        assert value == "not recorded"
    assert "no formal" in s["privacy_statement"]["text"]
    html = paths.html.read_text()
    for sid, _ in SECTIONS:
        assert f'id="{sid}"' in html
    assert html.count("not recorded") >= 10


def test_unverified_run_raises_unless_allowed(run_copy):
    lines = (run_copy / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    lines[6] = lines[6].replace(b'"client":"site-b"', b'"client":"site-x"')
    (run_copy / "ledger.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(LedgerIntegrityError) as ei:
        build_report(run_copy)
    assert ei.value.record_index == 6
    paths = build_report(run_copy, allow_unverified=True)
    doc = json.loads(paths.json.read_text())
    jsonschema.validate(doc, load_schema("report-v1"))
    assert not doc["verified"] and "record 6" in doc["sections"]["integrity"]["error"]
    assert "VERIFICATION FAILED" in paths.html.read_text()


def test_bad_inputs(tmp_path, run_copy):
    with pytest.raises(MissingRunDirectory):
        build_report(tmp_path / "absent")
    (run_copy / "keys" / "ledger.pub").unlink()
    with pytest.raises(IncompleteRunDirectory):
        build_report(run_copy)


def test_pdf_without_any_renderer_is_a_named_error(pristine_run, monkeypatch):
    import audits.report.pdf as pdf

    monkeypatch.setattr(pdf, "find_chromium", lambda: None)
    monkeypatch.setattr(pdf, "_weasyprint_available", lambda: False)
    with pytest.raises(ReportDependencyMissing, match="Chromium.*weasyprint"):
        build_report(pristine_run, pdf=True)


def test_report_shows_site_receipts_next_to_the_ledger(pristine_site_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(pristine_site_run, run)
    paths = build_report(run)
    doc = json.loads(paths.json.read_text())
    jsonschema.validate(doc, load_schema("report-v1"))
    rc = doc["sections"]["privacy_loss"]["receipts"]
    assert re.fullmatch(r"[0-9a-f]{64}", rc["roster_fingerprint"])
    assert [r["site"] for r in rc["rows"]] == sorted(CLIENTS)
    for r in rc["rows"]:
        assert r["receipt_verified"] and r["status"] == "consistent"
        assert r["receipt_epsilon"] == pytest.approx(r["ledger_epsilon"])
    events = doc["sections"]["training"]["site_events"]
    assert [(e["client"], e["event"]) for e in events] == [("site-c", "dropped")]
    page = paths.html.read_text()
    assert "next to each site's own receipt" in html.unescape(page) and "verified, consistent" in page
    assert all(r["key_fingerprint"] in page for r in rc["rows"])
    assert "cross-checked" in doc["sections"]["privacy_statement"]["text"]


def test_plaintext_rounds_are_labelled(tmp_path):
    import hashlib

    from audits.errors import RecordSchemaError

    run = tmp_path / "run"
    with LedgerWriter.open(run, create=True) as led:
        (run / "config.toml").write_bytes(b"x = 1\n")
        led.append("run_start", {"config_hash": hashlib.sha256(b"x = 1\n").hexdigest(), "config": {},
                                 "versions": {}, "hardware": {}, "dp_mode": "off", "secure_agg_mode": "off"})
        with pytest.raises(RecordSchemaError, match="plaintext"):  # mode off must say plaintext
            led.append("secure_agg", {"round": 1, "transcript": {"mode": "off"}})
        with pytest.raises(RecordSchemaError):  # and plaintext is only for mode off
            led.append("secure_agg", {"round": 1, "transcript": {"mode": "secagg+", "plaintext": True}})
        led.append("secure_agg", {"round": 1, "transcript": {"mode": "off", "plaintext": True, "n": 2}})
        led.append("site_event", {"round": 1, "client": "1", "event": "refused", "error": "PolicyViolation",
                                  "reason": "threshold below the site's minimum"})
    doc = json.loads(build_report(run).json.read_text())
    jsonschema.validate(doc, load_schema("report-v1"))
    row = doc["sections"]["secure_aggregation"]["rounds"][0]
    assert row["plaintext"] is True and row["label"] == "aggregated in plaintext: the server saw every site's update"
    assert "the server saw every site's update" in html.unescape((run / "report" / "report.html").read_text())
    assert doc["sections"]["privacy_loss"]["receipts"]["rows"] == "not recorded"  # no roster: no receipt table
    assert doc["sections"]["training"]["site_events"][0]["error"] == "PolicyViolation"


def test_statement_states_adjacency_unit_replace_one_and_what_epsilon_means(built):
    """Issue 16: the statement says add/remove one image (the relation computed), shows replace-one ε too (larger,
    recomputed here under dp_accounting's REPLACE_ONE), says the unit is an image not a patient, and what ε means."""
    from audits.accounting import parse_event, replace_one_epsilon

    from .conftest import DELTA, gaussian

    run, paths = built
    st = json.loads(paths.json.read_text())["sections"]["privacy_statement"]
    t = st["text"]
    assert "adding or removing one image" in t and "add/remove-one" in t
    assert "changing" not in t and "adding, removing" not in t
    assert "replace-one" in t and "not the one the run accounted" in t
    assert "one image, not one patient" in t and "group privacy" in t
    assert "ε = 10" in t and "22,000" in t and "not a measured risk" in t
    final = json.loads(paths.json.read_text())["sections"]["privacy_loss"]["final"]
    assert st["adjacency"] == "add/remove one unit"
    for c in CLIENTS:
        r1 = st["replace_one"][c]["epsilon"]
        assert r1 > final[c]["epsilon"] * 1.05
        assert r1 == pytest.approx(replace_one_epsilon([parse_event(gaussian(c))] * ROUNDS, delta=DELTA))
        assert f"{c}: ε = {r1:.3g}" in t
    page = html.unescape(paths.html.read_text())
    assert "adding or removing one image" in page and "not one patient" in page


def test_replace_one_epsilon_is_dp_accountings_replace_one_pld():
    import dp_accounting as dpa
    from dp_accounting.pld import PLDAccountant

    from audits.accounting import GaussianEvent, epsilon_for_events, replace_one_epsilon

    ev = GaussianEvent(1.1, 0.05, 60)
    ref = PLDAccountant(dpa.NeighboringRelation.REPLACE_ONE, value_discretization_interval=1e-4)
    ref.compose(ev.dp_event())
    got = replace_one_epsilon([ev], delta=1e-5)
    assert got == pytest.approx(ref.get_epsilon(1e-5), rel=0.01, abs=2e-3)
    assert got > epsilon_for_events([ev], delta=1e-5) * 1.2   # replace-one is the weaker guarantee
    assert replace_one_epsilon([], delta=1e-5) == 0.0


def _mutations():
    def final(doc):
        return next(iter(doc["sections"]["privacy_loss"]["final"].values()))

    def row(doc):
        return doc["sections"]["privacy_loss"]["rows"][0]
    return {
        "negative final epsilon": lambda d: final(d).update(epsilon=-0.5),
        "negative recomputed epsilon": lambda d: row(d).update(recomputed_epsilon=-1.0),
        "delta of 5": lambda d: final(d).update(delta=5),
        "delta of 0": lambda d: row(d).update(delta=0),
        "delta of 1": lambda d: row(d).update(delta=1.0),
        "timestamp not a date": lambda d: d.update(generated_utc="yesterday"),
        "timestamp with impossible month": lambda d: d.update(generated_utc="2026-13-01T00:00:00Z"),
        "verified but integrity not": lambda d: d["sections"]["integrity"].update(verified=False),
        "not verified but integrity is": lambda d: d.update(verified=False),
        "verified with an error": lambda d: d["sections"]["integrity"].update(error="LedgerIntegrityError: x"),
        "verified with a FAILED verdict": lambda d: d["sections"]["integrity"].update(verdict="FAILED: x"),
        "unknown integrity field": lambda d: d["sections"]["integrity"].update(trust_me=True),
        "unknown top-level field": lambda d: d.update(signed_off=True),
        "unknown privacy-loss row field": lambda d: row(d).update(note="x"),
        "pinned not a boolean": lambda d: d["sections"]["integrity"]["pinned"].update(head_hash="yes"),
        "negative replace-one epsilon": lambda d: next(iter(
            d["sections"]["privacy_statement"]["replace_one"].values())).update(epsilon=-2.0),
    }


@pytest.mark.parametrize("name", sorted(_mutations()))
def test_report_schema_rejects_an_inconsistent_or_out_of_range_report(built, name):
    """Issue 16 item 5: a report with a negative ε, δ outside (0, 1), a non-date timestamp, contradictory verdict
    fields or an unknown field must fail validation (with the format checker the builder uses)."""
    import copy

    _, paths = built
    good = json.loads(paths.json.read_text())
    schema, checker = load_schema("report-v1"), jsonschema.Draft202012Validator.FORMAT_CHECKER
    jsonschema.validate(good, schema, format_checker=checker)
    bad = copy.deepcopy(good)
    _mutations()[name](bad)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema, format_checker=checker)


def test_a_failed_report_validates_and_its_verdict_fields_agree(run_copy):
    """The allow_unverified report (FAILED banner) is itself valid: verified false everywhere, an error, FAILED."""
    lines = (run_copy / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    (run_copy / "ledger.jsonl").write_bytes(b"".join(lines[:3]) + lines[3].replace(b'"round":1', b'"round":7')
                                            + b"".join(lines[4:]))
    doc = json.loads(build_report(run_copy, allow_unverified=True).json.read_text())
    jsonschema.validate(doc, load_schema("report-v1"), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    integ = doc["sections"]["integrity"]
    assert doc["verified"] is False and integ["verified"] is False and integ["error"]
    assert integ["verdict"].startswith("FAILED")


def test_utility_shows_the_signed_values_and_flags_an_edited_metrics_file(run_copy):
    """Issue 16: §10 reads FID/loss from the signed round_end records; an edited metrics.jsonl is flagged."""
    lines = [json.loads(x) for x in (run_copy / "metrics.jsonl").read_text().splitlines()]
    signed_fid = lines[-1]["fid"]
    lines[-1]["fid"] = 12.3
    (run_copy / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    paths = build_report(run_copy)
    u = json.loads(paths.json.read_text())["sections"]["utility"]
    assert "signed ledger" in u["metrics_source"]
    assert [r["fid"] for r in u["fid"]] == [120.0 / r for r in range(1, ROUNDS + 1)]
    assert u["mismatches"] == [{"round": ROUNDS, "metric": "fid", "signed": signed_fid, "unsigned": 12.3}]
    assert any("MISMATCH" in n and "12.3" in n for n in u["notes"])
    page = html.unescape(paths.html.read_text())
    assert "disagrees with the signed ledger" in page


def test_utility_without_mismatch_lists_none(built):
    _, paths = built
    u = json.loads(paths.json.read_text())["sections"]["utility"]
    assert u["mismatches"] == [] and "signed ledger" in u["metrics_source"]
    assert "disagrees with the signed ledger" not in paths.html.read_text()
