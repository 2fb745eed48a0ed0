"""Audit report rendering: ``build_report(run_dir, *, pdf=False) -> ReportPaths``."""

from audits.report.build import ReportPaths, build_report, render_html, report_digest, verify_report_digest
from audits.report.text import SECTIONS

__all__ = ["ReportPaths", "SECTIONS", "build_report", "render_html", "report_digest", "verify_report_digest"]
