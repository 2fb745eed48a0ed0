import subprocess
import sys
from pathlib import Path

import pytest

from privfed.cli import main
from tests.privfed.cli_errors import assert_refused

BAD = [
    (["--alpha", "0"], "alpha"),
    (["--alpha", "-1"], "alpha"),
    (["--fraction", "0"], "fraction"),
    (["--fraction", "1.5"], "fraction"),
    (["--clients", "5000"], "clients need at least"),
    (["--dataset", "nosuchset"], "unknown dataset"),
    (["--dataset", "pneumoniamnist"], "medmnist"),
    (["--dataset", "npz", "--data", "missing.npz"], "not found"),
    (["--partition", "zipf"], "partition"),
    (["--ema-decay", "1"], "ema_decay"),
    (["--ema-decay", "-0.1"], "ema_decay"),
    (["--min-timestep", "1000"], "min_timestep"),
    (["--min-timestep", "-5"], "min_timestep"),
]


@pytest.mark.parametrize("args,match", BAD)
def test_bad_input_one_line_nonzero_nothing_written(tmp_path, capsys, args, match):
    out = tmp_path / "run"
    assert_refused(capsys, ["run", "--out", str(out), *args], match=match, nothing_at=out)


def test_corrupt_npz_via_cli(tmp_path, capsys):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"garbage")
    assert main(["run", "--out", str(tmp_path / "r"), "--dataset", "npz", "--data", str(bad)]) == 2
    assert "not a readable .npz" in capsys.readouterr().err


def test_resume_missing_dir(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err


def test_console_script_runs_tiny_job(tmp_path, tiny_config):
    cfg = tmp_path / "c.toml"
    cfg.write_text(tiny_config.replace(fed={"rounds": 1}).to_toml())
    p = subprocess.run([sys.executable, "-m", "privfed", "run", "--config", str(cfg), "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "round   1" in p.stdout and "domain-FID" in p.stdout
    assert (tmp_path / "r" / "samples" / "round_0001.png").is_file()


# --- which errors become one line: the project's own, never every ValueError ----------------------------------------

def _raise_from_run(monkeypatch, exc):
    """`privfed run` with a stand-in runner whose create() raises `exc` (the CLI imports the runner lazily)."""
    import types

    def create(*a, **k):
        raise exc
    fake = types.ModuleType("privfed.federation.runner")
    fake.FederatedRun = type("FederatedRun", (), {"create": staticmethod(create)})
    monkeypatch.setitem(sys.modules, "privfed.federation.runner", fake)


PROJECT_ERRORS = [
    ("privfed.errors", "RunDirError", "run dir gone"),
    ("secure_agg.errors", "ThresholdError", "unsafe threshold t=2 for n=10"),
    ("audits.errors", "LedgerKeyError", "ledger key fingerprint is not the pinned one"),
    ("dp.budget", "BudgetExceeded", "ε would reach 12 > cap 10"),
    ("dp.calibrate", "CalibrationError", "no σ reaches ε=0.01"),
    ("privfed.errors", "PolicyViolation", "t=4 below the site's minimum 7"),
    ("privfed.errors", "UnknownSiteError", "site 9 is not on the roster"),
    ("privfed.errors", "SiteKeyError", "no key in site/"),
    ("privfed.errors", "SealedStateError", "sealed state bound to another round"),
]


@pytest.mark.parametrize("module,name,text", PROJECT_ERRORS, ids=[e[1] for e in PROJECT_ERRORS])
def test_project_errors_one_line(tmp_path, capsys, monkeypatch, module, name, text):
    import importlib
    exc = getattr(importlib.import_module(module), name)(text)
    _raise_from_run(monkeypatch, exc)
    assert main(["run", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"privfed: error: {text}"


@pytest.mark.parametrize("exc", [KeyError("state"), ValueError("a bug, not bad input"), TypeError("bug"),
                                 AssertionError("bug")], ids=lambda e: type(e).__name__)
def test_bugs_are_not_bad_input(tmp_path, capsys, monkeypatch, exc):
    _raise_from_run(monkeypatch, exc)
    with pytest.raises(type(exc)):
        main(["run", "--out", str(tmp_path / "r")])
    assert "privfed: error" not in capsys.readouterr().err


def test_debug_shows_traceback_of_project_error(tmp_path, capsys):
    assert main(["--debug", "run", "--out", str(tmp_path / "r"), "--alpha", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ConfigError" in err
    assert err.strip().splitlines()[-1].startswith("privfed: error: alpha")
    # without --debug (the flag does not stick between calls): one line
    assert main(["run", "--out", str(tmp_path / "r"), "--alpha", "0"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_console_script_bug_exits_with_traceback(tmp_path):
    # a genuine bug inside the CLI process: a KeyError from code is a traceback and exit 1, never "bad input"
    code = ("import sys, types; from privfed.cli import main\n"
            "r = sys.modules['privfed.federation.runner'] = types.ModuleType('privfed.federation.runner')\n"
            "r.FederatedRun = type('FederatedRun', (), {'create': staticmethod(lambda *a, **k: {}['missing'])})\n"
            f"sys.exit(main(['run', '--out', {str(tmp_path / 'r')!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" in p.stderr and "KeyError: 'missing'" in p.stderr
    assert "privfed: error" not in p.stderr


# --- privfed site init -------------------------------------------------------------------------------------------

def test_site_init_prints_fingerprint_and_key_path(tmp_path, capsys):
    site = tmp_path / "hospital-a"
    assert main(["site", "init", str(site), "--site-id", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("fingerprint: ") and len(lines[0]) > len("fingerprint: ") + 16
    assert lines[1].startswith("private key: ") and lines[1].endswith(" (mode 0600)")
    key = Path(lines[1][len("private key: "):-len(" (mode 0600)")])
    assert key.is_file() and key.stat().st_mode & 0o777 == 0o600
    assert site in key.parents
    from privfed.parties.identity import load_identity
    assert load_identity(site).fingerprint == lines[0][len("fingerprint: "):]
    assert (site / "site.toml").is_file()        # --site-id also writes the site's default policy


def test_site_init_bad_site_id_is_usage_error(tmp_path, capsys):
    assert main(["site", "init", str(tmp_path / "s"), "--site-id", "hospital-a"]) == 2
    assert not (tmp_path / "s").exists()


def test_site_init_refuses_to_overwrite(tmp_path, capsys):
    site = tmp_path / "s"
    assert main(["site", "init", str(site)]) == 0
    first = capsys.readouterr().out
    assert main(["site", "init", str(site)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("privfed: error:")
    assert main(["site", "init", str(site)]) == 2       # still refused; the first key is untouched
    capsys.readouterr()
    assert first.splitlines()[0].startswith("fingerprint: ")
