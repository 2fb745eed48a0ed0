"""privfed rescore: a run's evaluation samples regenerate faithfully (its own extractor reproduces the recorded FID),
the shared extractor scores them in the dataset's common feature space, and nothing in the run changes."""

import csv
import math

import pytest

import privfed.metrics.classifier as C
from audits.artifact_hash import sha256_path
from privfed.cli import main
from privfed.federation.runner import FederatedRun
from privfed.rescore import COLUMNS, rescore_runs
from tests.privfed.cli_errors import assert_refused


@pytest.fixture
def small_extractor(monkeypatch, tmp_path):
    """A small public extractor (200 typeset digits) in a private cache: quick to train."""
    monkeypatch.setattr(C, "PUBLIC_CLASSIFIER_IMAGES", 200)
    monkeypatch.setenv("PRIVFED_CACHE", str(tmp_path / "cache"))


def _tree(run):
    return {p.relative_to(run).as_posix(): sha256_path(p) for p in sorted(run.rglob("*")) if p.is_file()}


def test_rescore_reproduces_the_recorded_fid_and_scores_in_the_shared_space(tmp_path, tiny_config, monkeypatch,
                                                                            small_extractor, capsys):
    # the run measures FID with an extractor of another configuration (as runs from before the shared one did)
    monkeypatch.setattr(C, "EXTRACTOR_EPOCHS", 2)
    run = tmp_path / "run"
    FederatedRun.create(tiny_config, run).run()
    monkeypatch.setattr(C, "EXTRACTOR_EPOCHS", 3)
    before = _tree(run)
    started = []
    rows = rescore_runs([run], on_start=started.append)
    assert started == [2] and [r["round"] for r in rows] == [0, 2]
    for r in rows:
        # the regenerated samples are the run's: its own extractor gives the signed FID back
        assert math.isclose(r["own_extractor_fid"], r["recorded_fid"], rel_tol=1e-3, abs_tol=1e-2)
        assert r["own_extractor"] == sha256_path(run / C.RUN_EXTRACTOR_PATH)[:16] != r["shared_extractor"]
        assert abs(r["shared_extractor_fid"] - r["own_extractor_fid"]) > 1e-3      # another feature space
        assert r["shared_fid_lo"] <= r["shared_fid_hi"]
    assert _tree(run) == before                                                    # the run is untouched
    # the command: a table on the console, the CSV on request; the same figures
    assert main(["rescore", str(run), "--out", str(tmp_path / "rescore.csv")]) == 0
    assert "shared extractor" in capsys.readouterr().out
    got = list(csv.DictReader((tmp_path / "rescore.csv").open()))
    assert list(got[0]) == list(COLUMNS) and [float(g["shared_extractor_fid"]) for g in got] == \
        [r["shared_extractor_fid"] for r in rows]


def test_rescore_refuses_what_it_cannot_trust_before_scoring_anything(tmp_path, tiny_config, small_extractor,
                                                                      capsys):
    run = tmp_path / "run"
    FederatedRun.create(tiny_config, run).run()
    (run / "checkpoints" / "round_0002" / "unet" / "config.json").write_text("{}")   # not the recorded model
    cases = [([str(tmp_path / "nowhere")], "not a run directory"), ([str(run)], "does not verify"),
             ([str(run), "--rounds", "some"], "--rounds")]
    for args, match in cases:
        assert_refused(capsys, ["rescore", *args, "--out", str(tmp_path / "x.csv")], match=match)
    assert not (tmp_path / "x.csv").exists()
