"""Issue 16 on a real (tiny) run: the [operator] config, the code version and the data set fingerprint are recorded in
the signed run_start and shown on the report's verdict page; a --dp off run's verdict and crosswalk say so."""

import json

from privfed.cli import main
from privfed.federation.runner import FederatedRun

OPERATOR = {"name": "R. Roe", "organisation": "Example Clinic", "contact": "privacy@example.org"}


def test_operator_code_and_data_reach_the_verdict_page(tiny_config, tmp_path, capsys):
    cfg = tiny_config.replace(operator=OPERATOR)
    run = tmp_path / "run"
    FederatedRun.create(cfg, run).run()
    start = json.loads((run / "ledger.jsonl").read_text().splitlines()[0])["payload"]
    assert start["operator"] == OPERATOR and start["config"]["operator"] == OPERATOR
    assert start["run_id"] == start["config_hash"][:32]
    assert start["source"]["version"] and start["dataset_fingerprint"]["sha256"]
    assert "[operator]" in (run / "config.toml").read_text()
    summary = next(json.loads(x)["payload"] for x in (run / "ledger.jsonl").read_text().splitlines()
                   if json.loads(x)["kind"] == "data_summary")
    assert summary["suppression"] == "complementary"

    pins = dict(line.split(": ", 1) for line in (run / "pins.txt").read_text().splitlines() if ": " in line)
    assert main(["audit", str(run), "--pin-key", pins["key_fingerprint"], "--head", pins["head_hash"]]) == 0
    doc = json.loads((run / "report" / "report.json").read_text())
    v = doc["sections"]["verdict"]
    assert v["operator"] == OPERATOR and v["run_id"] == pins["run_id"]
    assert v["code"]["version"] == start["source"]["version"]
    assert v["dataset"]["sha256"] == start["dataset_fingerprint"]["sha256"]
    assert v["pinned"] == {"key_fingerprint": True, "head_hash": True}
    assert v["epsilon"] == "not recorded" and v["dp_mode"] == "off"
    issues = " ".join(v["open_issues"])
    assert "No differential privacy" in issues and "Secure aggregation was off" in issues
    assert "Nothing was pinned" not in issues
    rows = {r["framework"]: r for r in doc["sections"]["crosswalk"]["rows"]}
    assert rows["NIST SP 800-226"]["status"] == "not evidenced by this run"
    page = (run / "report" / "report.html").read_text()
    assert "R. Roe" in page and "Example Clinic" in page and "none recorded" in page
