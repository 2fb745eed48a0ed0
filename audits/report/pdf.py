"""report.pdf from report.html: headless Chromium (``--print-to-pdf``, the renderer the print CSS is measured with)
or, when no Chromium is installed, weasyprint (``pip install weasyprint``); and a page count for checks.

Chromium is found as ``$PRIVFED_CHROMIUM`` or on PATH (chromium, chromium-browser, google-chrome); it runs headless
with a fresh profile, no network services and no sandbox (it may run as root in containers), and reads only the
report file (the HTML is self-contained).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from audits.errors import ReportDependencyMissing

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-pdf-header-footer")


def find_chromium() -> str | None:
    env = os.environ.get("PRIVFED_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _weasyprint_available() -> bool:
    try:
        import weasyprint  # type: ignore[import-not-found]  # noqa: F401
    except (ImportError, OSError):   # OSError: the package is there but its system libraries (pango) are not
        return False
    return True


def pdf_renderer() -> str:
    """'chromium' or 'weasyprint'; ReportDependencyMissing when neither is available."""
    if find_chromium():
        return "chromium"
    if _weasyprint_available():
        return "weasyprint"
    raise ReportDependencyMissing("a PDF needs headless Chromium (apt-get install chromium, or PRIVFED_CHROMIUM=/path) "
                                  "or weasyprint (pip install weasyprint); the HTML report is print-friendly: print it "
                                  "to PDF from a browser")


def html_to_pdf(html_path: Path, pdf_path: Path, *, timeout_s: float = 180.0) -> str:
    """Render ``html_path`` to ``pdf_path`` (A4, as the report's @page rule says); return the renderer's name."""
    renderer = pdf_renderer()
    html_path, pdf_path = Path(html_path).resolve(), Path(pdf_path).resolve()
    tmp_pdf = pdf_path.with_name(f".{pdf_path.name}.tmp{os.getpid()}")
    if renderer == "weasyprint":  # pragma: no cover - optional dependency
        import weasyprint

        weasyprint.HTML(filename=str(html_path)).write_pdf(str(tmp_pdf))
    else:
        with tempfile.TemporaryDirectory(prefix="privfed-chromium-") as profile:
            cmd = [find_chromium() or "chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                   f"--print-to-pdf={tmp_pdf}", html_path.as_uri()]
            try:
                subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout_s, check=False)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise ReportDependencyMissing(f"headless Chromium failed to print the report: {e}") from None
    if not tmp_pdf.is_file() or not tmp_pdf.read_bytes().startswith(b"%PDF-"):
        tmp_pdf.unlink(missing_ok=True)
        raise ReportDependencyMissing(f"{renderer} wrote no PDF for {html_path}")
    os.replace(tmp_pdf, pdf_path)
    return renderer


def count_pdf_pages(data: bytes) -> int:
    """Pages of a PDF: pypdf when installed, else the page objects in the file (Chromium and weasyprint write them
    uncompressed)."""
    try:
        import io

        import pypdf  # type: ignore[import-not-found]

        return len(pypdf.PdfReader(io.BytesIO(data)).pages)
    except ImportError:
        return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))
