"""The printed report, rendered with weasyprint (a test dependency, so this runs in CI; Chromium, the preferred
renderer where installed, is checked in test_report_verdict.py): a bounded number of A4 pages."""

from __future__ import annotations

import shutil

import pytest

from audits.report import build_report
from audits.report import pdf as pdf_mod
from audits.verify import verify_run

from .conftest import write_run


def test_weasyprint_prints_the_report_on_a_few_a4_pages(tmp_path, monkeypatch):
    if not pdf_mod._weasyprint_available():
        pytest.fail("weasyprint (a test dependency) cannot be imported here: pip install -e '.[test]'")
    monkeypatch.setattr(pdf_mod, "find_chromium", lambda: None)     # force the pip-installable renderer
    run = write_run(tmp_path / "run", sites=True)
    rep = verify_run(run)
    paths = build_report(run, pdf=True, expected_key_fingerprint=rep.key_fingerprint,
                         expected_head_hash=rep.head_hash)
    data = paths.pdf.read_bytes()
    assert data.startswith(b"%PDF-")
    pages = pdf_mod.count_pdf_pages(data)
    assert 2 <= pages <= 8, pages
    assert "size: A4" in paths.html.read_text()          # the @page rule the renderer followed
    shutil.rmtree(run)
