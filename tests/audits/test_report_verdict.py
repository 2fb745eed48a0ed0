"""Issue 16: page 1 is a verdict a compliance officer can sign; the crosswalk is generated from what the run recorded;
the report prints (A4 CSS, tables not raw JSON, secure aggregation summarised and explained, ε from round 0)."""

from __future__ import annotations

import copy
import hashlib
import html as htmllib
import json
import re
import shutil

import jsonschema
import pytest

from audits.ledger import LedgerWriter
from audits.ledger_schema import load_schema
from audits.report import build_report
from audits.report.build import report_digest, verify_report_digest
from audits.verify import verify_run

from .conftest import CLIENTS, write_run

OPERATOR = {"name": "J. Doe", "organisation": "Example Hospital, Research Data Unit", "contact": "dpo@example.org"}
SOURCE = {"package": "privfed", "version": "0.1.0", "commit": "ab" * 20, "modified": False}
DATASET = {"source": "digits.csv.gz", "sha256": "cd" * 32}
CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER


@pytest.fixture(scope="module")
def operator_run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("verdict") / "run", sites=True,
                     start_extra={"operator": OPERATOR, "source": SOURCE, "dataset_fingerprint": DATASET})


@pytest.fixture(scope="module")
def pinned(operator_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("pinned") / "run"
    shutil.copytree(operator_run, run)
    rep = verify_run(run)
    paths = build_report(run, expected_key_fingerprint=rep.key_fingerprint, expected_head_hash=rep.head_hash)
    return run, paths, json.loads(paths.json.read_text()), rep


def _records(run):
    return [json.loads(x) for x in (run / "ledger.jsonl").read_text().splitlines()]


def test_verdict_page_content(pinned):
    run, paths, doc, rep = pinned
    jsonschema.validate(doc, load_schema("report-v1"), format_checker=CHECKER)
    v = doc["sections"]["verdict"]
    recs = _records(run)
    assert v["verified"] is True and v["verdict"].startswith("PASSED")
    assert v["run_id"] == "synthetic-run"
    assert v["operator"] == OPERATOR
    assert v["started_utc"] == recs[0]["utc"] and v["ended_utc"] == recs[-1]["utc"]
    assert v["code"]["version"] == "0.1.0" and v["code"]["commit"] == "ab" * 20 and v["code"]["modified"] is False
    assert v["dataset"]["sha256"] == "cd" * 32 and v["dataset"]["name"] == "digits" and v["dataset"]["sites"] == 3
    assert v["pinned"] == {"key_fingerprint": True, "head_hash": True}
    assert v["key_fingerprint"] == rep.key_fingerprint and v["head_hash"] == rep.head_hash
    assert v["unit"] == "one image (not one patient)" and v["adjacency"] == "add/remove one unit"
    assert v["placement"] == "local" and "against the server" in v["trust"]
    assert [x["site"] for x in v["epsilon"]] == sorted(CLIENTS)
    final = doc["sections"]["privacy_loss"]["final"]
    for x in v["epsilon"]:
        assert x["epsilon"] == final[x["site"]]["epsilon"] and x["cap"] == 8.0 and x["within_cap"] is True
        assert x["replace_one_epsilon"] > x["epsilon"]
    assert v["caps_met"] is True
    assert "ε = 10" in v["epsilon_meaning"] and "22,000" in v["epsilon_meaning"] and "not a patient" in \
        v["epsilon_meaning"].replace("an image, not a patient", "not a patient")
    assert v["secure_aggregation"] == {"mode": "pairwise", "on": True, "plaintext_rounds": []}
    assert v["receipts_cross_checked"] == 3
    assert not any("Nothing was pinned" in x for x in v["open_issues"])
    assert any("empirical" in x for x in v["open_issues"])          # not run: an open issue, not silence
    # the HTML: the verdict is the first page, before anything else, with a page break after it
    page = htmllib.unescape(paths.html.read_text())
    first = page[page.index('<section class="page1"'):page.index("</section>")]
    assert page.index('<section class="page1"') < page.index('<h2 id="integrity">')
    for needle in ("PASSED", "J. Doe", "Example Hospital, Research Data Unit", "dpo@example.org", recs[0]["utc"],
                   recs[-1]["utc"], "ababababab", "0.1.0", "one image (not one patient)", "pinned: yes",
                   "ε, replace one image", "What ε means here", "Open issues", doc["report_sha256"], "signature"):
        assert needle in first, needle
    assert ".page1 { page-break-after: always; break-after: page; }" in page


def test_unpinned_run_without_operator_says_so_in_its_open_issues(pristine_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pristine_run, run)
    v = json.loads(build_report(run).json.read_text())["sections"]["verdict"]
    assert v["pinned"] == {"key_fingerprint": False, "head_hash": False}
    issues = " ".join(v["open_issues"])
    assert "Nothing was pinned: integrity is only relative to the operator's own key" in issues
    assert "operator (name, organisation) was not recorded" in issues
    assert "source commit was not recorded" in issues
    assert "No roster and no site receipts" in issues
    assert "can be undone by subtraction" in issues            # site-b: 620 − 616 in this (old-rule) ledger
    assert v["operator"] == {"name": "not recorded", "organisation": "not recorded", "contact": "not recorded"}
    assert v["run_id"] == "not recorded" and v["code"]["commit"] == "not recorded"


def test_report_fingerprint_matches_report_json_and_catches_an_edit(pinned, tmp_path):
    _, paths, doc, _ = pinned
    assert re.fullmatch(r"[0-9a-f]{64}", doc["report_sha256"])
    assert verify_report_digest(paths.json)
    assert report_digest(doc) == doc["report_sha256"]
    edited = copy.deepcopy(doc)
    edited["sections"]["verdict"]["epsilon"][0]["epsilon"] = 0.5
    p = tmp_path / "report.json"
    p.write_text(json.dumps(edited))
    assert not verify_report_digest(p)


def _dp_off_run(tmp_path, *, secure_agg: str = "off"):
    run = tmp_path / "off"
    with LedgerWriter.open(run, create=True) as led:
        (run / "config.toml").write_text("x = 1\n")
        led.append("run_start", {"config_hash": hashlib.sha256(b"x = 1\n").hexdigest(), "config": {},
                                 "versions": {}, "hardware": {}, "dp_mode": "off", "secure_agg_mode": secure_agg})
        led.append("secure_agg", {"round": 1, "transcript": {"mode": "off", "plaintext": True, "n": 2}})
        led.append("run_end", {"rounds_completed": 1, "final_epsilon": {}, "delta": None})
    return run


def test_crosswalk_is_generated_from_the_run_and_a_dp_off_run_does_not_read_like_a_dp_run(pinned, tmp_path):
    _, _, doc, _ = pinned
    dp_rows = {r["framework"]: r for r in doc["sections"]["crosswalk"]["rows"]}
    off = json.loads(build_report(_dp_off_run(tmp_path)).json.read_text())
    jsonschema.validate(off, load_schema("report-v1"), format_checker=CHECKER)
    off_rows = {r["framework"]: r for r in off["sections"]["crosswalk"]["rows"]}
    for fw in ("GDPR Art. 5(2)", "GDPR Art. 30", "GDPR Art. 32", "HIPAA §164.312(b)", "HIPAA §164.312(c)(1)",
               "EDPB Opinion 28/2024", "NIST SP 800-226", "GDPR Art. 25", "EU AI Act Art. 12"):
        assert fw in dp_rows and fw in off_rows, fw
    assert dp_rows != off_rows
    # the DP run: evidence names ε and the unit; every row points to sections
    assert "ε" in dp_rows["NIST SP 800-226"]["evidence"] and dp_rows["NIST SP 800-226"]["status"] == "evidenced"
    assert dp_rows["HIPAA §164.312(c)(1)"]["status"] == "evidenced"   # pinned
    assert all(r["sections"] for r in dp_rows.values())
    # the dp-off run: no ε anywhere, the DP rows say so
    for r in off_rows.values():
        assert "ε " not in r["evidence"] and "unit one image" not in r["evidence"]
    assert off_rows["NIST SP 800-226"]["status"] == "not evidenced by this run"
    assert "no differential privacy" in off_rows["NIST SP 800-226"]["evidence"]
    assert off_rows["EDPB Opinion 28/2024"]["status"] == "not evidenced by this run"
    assert "nothing here supports a claim that the model is anonymous" in off_rows["EDPB Opinion 28/2024"]["evidence"]
    assert "the server saw every site's update" in off_rows["GDPR Art. 32"]["evidence"]
    assert off_rows["HIPAA §164.514(b)(1)"]["status"] == "not evidenced by this run"
    # Art. 12 row claims timestamps: page 1 and section 9 carry them
    assert "page 1" in dp_rows["EU AI Act Art. 12"]["evidence"]
    ov = off["sections"]["verdict"]
    assert ov["epsilon"] == "not recorded" and ov["caps_met"] == "not recorded" and ov["placement"] == "not recorded"
    assert "no ε" in ov["epsilon_meaning"]
    assert any("No differential privacy" in x for x in ov["open_issues"])
    assert any("Secure aggregation was off" in x for x in ov["open_issues"])


@pytest.mark.parametrize("dp, placement, expect", [
    ({"mode": "sample"}, None, "local"),
    ({"mode": "client"}, None, "server"),
    ({"mode": "sample", "placement": "distributed"}, "distributed", "distributed"),
    ({"mode": "client", "placement": "auto"}, "auto", "server"),
    ({"mode": "sample", "placement": "auto"}, "auto", "local"),
])
def test_dp_placement_is_read_defensively_from_run_start(tmp_path, dp, placement, expect):
    from audits.report.build import _placement

    start = {"dp_mode": dp["mode"], "config": {"dp": dp}}
    got, trust = _placement(start)
    assert got == expect
    assert trust.startswith(expect + ":")
    if expect == "server":
        assert "trusted" in trust and "not against the server" in trust


def _verdict_mutations():
    def v(d):
        return d["sections"]["verdict"]
    return {
        "verdict verified while the report is not": lambda d: v(d).update(verified=False),
        "verdict says FAILED while verified": lambda d: v(d).update(verdict="FAILED: x"),
        "negative ε on page 1": lambda d: v(d)["epsilon"][0].update(epsilon=-1.0),
        "δ of 2 on page 1": lambda d: v(d)["epsilon"][0].update(delta=2.0),
        "start time not a date": lambda d: v(d).update(started_utc="monday"),
        "unknown verdict field": lambda d: v(d).update(approved=True),
        "unknown placement": lambda d: v(d).update(placement="cloud"),
        "malformed commit": lambda d: v(d)["code"].update(commit="HEAD"),
        "report fingerprint missing": lambda d: d.pop("report_sha256"),
        "report fingerprint malformed": lambda d: d.update(report_sha256="xyz"),
        "crosswalk status unknown": lambda d: d["sections"]["crosswalk"]["rows"][0].update(status="compliant"),
        "verdict section missing": lambda d: d["sections"].pop("verdict"),
    }


@pytest.mark.parametrize("name", sorted(_verdict_mutations()))
def test_report_schema_rejects_a_bad_verdict_page(pinned, name):
    _, _, doc, _ = pinned
    schema = load_schema("report-v1")
    jsonschema.validate(doc, schema, format_checker=CHECKER)
    bad = copy.deepcopy(doc)
    _verdict_mutations()[name](bad)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema, format_checker=CHECKER)


def test_printable_structure(pinned):
    """Always runs (no renderer needed): A4 print CSS, the verdict alone on page 1, no raw JSON in any cell, the
    secure-aggregation transcript summarised per round with every column explained, identical rounds merged."""
    _, paths, doc, _ = pinned
    page = paths.html.read_text()
    assert "@page { size: A4;" in page and "@media print" in page
    assert "break-inside: avoid" in page and "break-after: avoid" in page
    assert not re.search(r"<t[dh][^>]*>\s*(<code>)?\s*[\[{]&#34;", page)    # no JSON object/array in a cell
    assert not re.search(r"<t[dh][^>]*>\s*(<code>)?\s*\{\"", page)
    sa = doc["sections"]["secure_aggregation"]
    assert [g["rounds"] for g in sa["round_groups"]] == ["1", "2", "3"]     # round 2 had a dropout: its own row
    assert sa["round_groups"][1]["summary"]["dropped"] == ["site-c"]
    assert sa["round_groups"][1]["summary"]["pairwise_reconstructed_for"] == ["site-c"]
    cols = {c["column"]: c["meaning"] for c in sa["columns"]}
    assert "self-masks removed for" in cols and "reveals only the mask, never the update" in cols[
        "self-masks removed for"]
    text = htmllib.unescape(page)
    for c in cols:
        assert f"<dt>{c}</dt>" in text
    for heading in ("Model</h3>", "Data</h3>", "Federation</h3>", "Run: package versions</h3>"):
        assert heading in text
    assert '<div class="kvcols">' in page


def test_identical_secure_aggregation_rounds_share_one_row():
    from audits.report.build import _secure_agg

    tr = {"mode": "secagg+", "n": 10, "threshold": 7, "neighbours": 4, "survivors": list(range(10)),
          "dropped": {"masked_input_stage": [], "unmasking_stage": []},
          "reconstructed": {"pairwise_reconstructed_for": [], "self_mask_reconstructed_for": list(range(10))},
          "protocol": "pairwise", "modulus_bits": 32}
    drop = copy.deepcopy(tr) | {"survivors": list(range(9)), "dropped": {"masked_input_stage": [9]},
                                "reconstructed": {"pairwise_reconstructed_for": [9],
                                                  "self_mask_reconstructed_for": list(range(9))}}
    records = [{"kind": "secure_agg", "payload": {"round": r, "transcript": drop if r == 8 else tr}}
               for r in range(1, 16)]
    sa = _secure_agg(records)
    assert [g["rounds"] for g in sa["round_groups"]] == ["1–7", "8", "9–15"]
    assert sa["round_groups"][1]["summary"]["dropped_at"] == {"masked input": ["9"]}
    assert {p["name"] for p in sa["parameters"]} == {"protocol", "modulus_bits"}
    assert len(sa["rounds"]) == 15                     # report.json keeps every round's transcript


def test_a_second_ckks_release_of_one_round_is_flagged_even_with_valid_signatures():
    """The key holder releases one decryption per round, rounds increasing; a ledger showing two for one round
    (both validly signed: a key holder that broke that rule) is named in the row and in the verdict's check."""
    import json as _json

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from audits.report.build import HE_DECRYPTION_LABEL, _he_decryptions

    key = Ed25519PrivateKey.generate()

    def rec(r):
        st = {"v": 1, "run": "x", "round": r, "contributors": [0, 1, 2], "min_contributors": 3}
        sig = key.sign(HE_DECRYPTION_LABEL + _json.dumps(st, sort_keys=True, separators=(",", ":")).encode())
        pub = key.public_key().public_bytes_raw().hex()
        return {"kind": "he_decryption",
                "payload": {"round": r, "statement": st, "signature": sig.hex(), "key_holder_public_key": pub}}
    rows = _he_decryptions([rec(1), rec(2), rec(2), rec(1), rec(3)])["decryptions"]
    assert [r["status"] for r in rows] == ["signature verifies", "signature verifies",
                                           "signature verifies; SECOND RELEASE (round 2 after round 2)",
                                           "signature verifies; SECOND RELEASE (round 1 after round 2)",
                                           "signature verifies"]


def test_epsilon_figure_starts_at_round_zero_with_one_series_per_site(pinned, tmp_path, monkeypatch):
    import audits.report.figures as figures

    seen = {}
    real = figures.epsilon_figure

    def spy(series, caps, label):
        seen.update(series)
        return real(series, caps, label)
    monkeypatch.setattr(figures, "epsilon_figure", spy)
    run = tmp_path / "run"
    shutil.copytree(pinned[0], run)
    build_report(run)
    assert set(seen) == set(CLIENTS)
    for pts in seen.values():
        assert pts[0] == (0, 0.0) and [r for r, _ in pts] == [0, 1, 2, 3]


def test_epsilon_figure_with_many_sites_draws_a_band():
    from audits.report.figures import MAX_LABELLED_SITES, epsilon_figure

    series = {str(i): [(0, 0.0)] + [(r, r * (0.5 + i / 100)) for r in range(1, 16)]
              for i in range(MAX_LABELLED_SITES + 8)}
    png = epsilon_figure(series, {c: 10.0 for c in series}, "δ=1e-05")
    assert png.startswith(b"\x89PNG")


def test_pdf_is_rendered_and_its_pages_counted(pinned, tmp_path):
    """--pdf through headless Chromium (skipped where none is installed; CI has none): the 3-site, 3-round run
    prints on at most 6 A4 pages (the fixed text dominates), the verdict alone on page 1. The 30-round, 10-site
    default run is a documented check in the README (7 pages)."""
    from audits.report.pdf import count_pdf_pages, find_chromium

    if find_chromium() is None:
        pytest.skip("no headless Chromium installed (apt-get install chromium, or set PRIVFED_CHROMIUM)")
    run = tmp_path / "run"
    shutil.copytree(pinned[0], run)
    paths = build_report(run, pdf=True)
    data = paths.pdf.read_bytes()
    assert data.startswith(b"%PDF-")
    assert 2 <= count_pdf_pages(data) <= 6
    assert b"/MediaBox [0 0 594.95996 841.91998]" in data or b"/MediaBox [0 0 595" in data  # A4 in points


def test_an_unsigned_metric_that_disagrees_with_the_ledger_is_an_open_issue_on_page_1(run_copy):
    lines = [json.loads(x) for x in (run_copy / "metrics.jsonl").read_text().splitlines()]
    lines[0]["eval_loss"] = 0.001
    (run_copy / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    paths = build_report(run_copy)
    v = json.loads(paths.json.read_text())["sections"]["verdict"]
    assert any("metrics.jsonl (not signed) disagrees with the signed ledger in 1 value(s)" in x
               for x in v["open_issues"])
    page = htmllib.unescape(paths.html.read_text())
    first = page[:page.index("</section>")]
    assert "disagrees with the signed ledger" in first
