"""Issue 16: a forged ledger through `privfed audit` exits non-zero and leaves no PASSED report behind, not even one
written before the forgery (it is set aside as *.stale)."""

import json

from privfed.cli import main


def test_failed_audit_sets_an_earlier_passed_report_aside(tmp_path, capsys):
    from tests.audits.conftest import write_run
    from tests.privfed.test_audit_command import _forge_halved_epsilon

    run = write_run(tmp_path / "run", sites=True)
    assert main(["audit", str(run)]) == 0
    assert json.loads((run / "report" / "report.json").read_text())["verified"] is True
    capsys.readouterr()
    _forge_halved_epsilon(run)                 # σ×2, ε recomputed, re-signed with the run's own key
    assert main(["audit", str(run)]) == 1      # the sites' receipts disagree
    out = capsys.readouterr().out
    assert "FAILED" in out and "ReceiptMismatch" in out and "moved to" in out
    report = run / "report"
    assert not any((report / n).exists() for n in ("report.html", "report.json", "report.pdf"))
    assert (report / "report.html.stale").is_file() and (report / "report.json.stale").is_file()
    assert not [p for p in report.iterdir() if p.name.endswith((".html", ".json")) and "PASSED" in p.read_text()]
