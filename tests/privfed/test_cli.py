import subprocess
import sys

import pytest

from privfed.cli import main

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
]


@pytest.mark.parametrize("args,match", BAD)
def test_bad_input_one_line_nonzero_nothing_written(tmp_path, capsys, args, match):
    out = tmp_path / "run"
    code = main(["run", "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("privfed: error:") and match in err
    assert not out.exists()


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
