"""`dp` and `audits` are also names of unrelated PyPI distributions: make sure ours are imported."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["privfed", "secure_agg", "dp", "audits"])
def test_top_level_packages_are_this_project(name):
    mod = __import__(name)
    assert Path(mod.__file__).resolve().parent == ROOT / name
    if name != "privfed":
        assert mod.PROJECT == "privfed"


def test_import_contracts_hold():
    """secure_agg, dp and audits never import privfed; secure_agg never imports torch (import-linter)."""
    exe = Path(sys.executable).parent / "lint-imports"
    p = subprocess.run([str(exe) if exe.exists() else "lint-imports", str(ROOT / "pyproject.toml")], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "BROKEN" not in p.stdout and "KEPT" in p.stdout
