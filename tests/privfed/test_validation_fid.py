"""FID on the validation split (fid_val): a dataset with a `val` split scores every evaluation's samples against it
as well as against the test split, so that a schedule (rounds, lr) can be chosen without looking at the test FID.
The ledger pins the validation split by its hash, the release inventory lists the figure, and a sweep reports the
round where it is lowest."""

import csv
import json
import textwrap

import numpy as np
import pytest
import torch

import privfed.federation.runner as runner_module
from audits import releases as R
from audits.report.build import build_report
from audits.verify import verify_run
from privfed.config import DataConfig, RunConfig
from privfed.data.registry import load_dataset
from privfed.data.medmnist_npz import load_medmnist_npz
from privfed.errors import ConfigError, DataError
from privfed.federation.runner import FederatedRun
from privfed.metrics.classifier import dataset_sha256
from privfed.sweep.run import run_sweep
from privfed.sweep.spec import load_sweep


def _npz(path, *, val=True, val_shape=(28, 28)):
    rng = np.random.default_rng(0)

    def split(n, shape=(28, 28)):
        labels = rng.integers(0, 2, size=(n, 1))
        # two classes that differ in brightness, so the extractor learns something
        images = (rng.integers(0, 90, size=(n, *shape)) + 120 * labels[:, :, None]).astype(np.uint8)
        return images, labels

    arrays = {}
    for name, n, shape in (("train", 48, (28, 28)), ("test", 30, (28, 28))) + ((("val", 20, val_shape),) if val
                                                                                 else ()):
        arrays[f"{name}_images"], arrays[f"{name}_labels"] = split(n, shape)
    np.savez(path, **arrays)
    return path


def _config(path):
    return RunConfig.from_dict({
        "seed": 1, "eval_every": 1, "eval_samples": 16,
        "model": {"base_channels": 8, "num_train_timesteps": 50, "sampling_steps": 2},
        "fed": {"clients": 2, "rounds": 2, "batch_size": 16, "local_epochs": 1},
        "data": {"dataset": "npz", "path": str(path), "partition": "iid"},
        "dp": {"mode": "off"}, "secure_agg": {"mode": "off"},
    })


@pytest.fixture
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PRIVFED_CACHE", str(tmp_path / "cache"))


def test_every_evaluation_scores_the_validation_split_too(tmp_path, monkeypatch, private_cache):
    data = _npz(tmp_path / "toy.npz")
    splits = load_medmnist_npz(data)
    assert len(splits.val) == 20 and len(splits.test) == 30
    references = []
    real_fid = runner_module.domain_fid

    def spy(clf, real, fake):
        references.append(int(real.shape[0]))
        return real_fid(clf, real, fake)

    monkeypatch.setattr(runner_module, "domain_fid", spy)
    run = tmp_path / "run"
    FederatedRun.create(_config(data), run).run()
    # one FID against the 30 test images and one against the 20 validation images per evaluation (rounds 0–2)
    assert references == [30, 20] * 3
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "fid" in m]
    assert [m["round"] for m in evals] == [0, 1, 2]
    assert all(m["fid_val"] > 0 and m["fid_val"] != m["fid"] for m in evals)
    # the ledger carries it signed, and pins the split it was measured on
    recs = [json.loads(x) for x in (run / "ledger.jsonl").read_text().splitlines()]
    ends = [r["payload"]["metrics"] for r in recs if r["kind"] == "round_end"]
    assert [e["fid_val"] for e in ends] == [m["fid_val"] for m in evals]
    ev = next(r["payload"] for r in recs if r["kind"] == "run_start")["evaluation"]
    assert ev["validation_split"]["image_count"] == 20
    assert ev["validation_split"]["sha256"] == dataset_sha256(splits.val) != ev["evaluation_split"]["sha256"]
    verify_run(run)
    # a declared release, not an unaccounted one; the report names the split
    assert R.classify("ledger", "round_end.metrics.fid_val").status == R.DECLARED
    assert R.classify("metrics", "fid_val").status == R.DECLARED
    build_report(run)
    assert R.unlisted(run) == []
    assert "fid_val" in (run / "report" / "report.html").read_text()


def test_a_dataset_without_a_validation_split_has_no_fid_val(tmp_path, private_cache):
    data = _npz(tmp_path / "toy.npz", val=False)
    assert load_medmnist_npz(data).val is None
    run = tmp_path / "run"
    FederatedRun.create(_config(data), run).run()
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any("fid_val" in m for m in metrics) and any("fid" in m for m in metrics)
    start = next(json.loads(x) for x in (run / "ledger.jsonl").read_text().splitlines() if '"run_start"' in x)
    assert "validation_split" not in start["payload"]["evaluation"]


def test_a_validation_split_of_another_shape_is_refused(tmp_path):
    with pytest.raises(DataError, match="val and test images differ in shape"):
        load_medmnist_npz(_npz(tmp_path / "bad.npz", val_shape=(14, 14)))


def test_a_sweep_reports_the_round_with_the_lowest_validation_fid(tmp_path, private_cache):
    data = _npz(tmp_path / "toy.npz")
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(f"""
    [base]
    eval_every = 1
    eval_samples = 16
    [base.model]
    base_channels = 8
    num_train_timesteps = 50
    sampling_steps = 2
    [base.fed]
    clients = 2
    rounds = 3
    batch_size = 16
    local_epochs = 1
    [base.data]
    dataset = "npz"
    path = "{data}"
    partition = "iid"
    [base.dp]
    mode = "off"
    [base.secure_agg]
    mode = "off"
    [grid]
    seed = [0]
    """))
    out = tmp_path / "out"
    states = run_sweep(load_sweep(path), out)
    assert [s.status for s in states] == ["done"]
    metrics = [json.loads(x) for x in (states[0].run_dir / "metrics.jsonl").read_text().splitlines()]
    by_round = {m["round"]: m["fid_val"] for m in metrics if "fid_val" in m and m["round"] > 0}
    row = next(csv.DictReader((out / "results.csv").open()))
    assert float(row["fid_val"]) == by_round[3]
    assert int(row["best_round_val"]) == min(by_round, key=by_round.get)
    html = (out / "summary.html").read_text()
    assert "best_round_val" in html and "validation split per round" in html


def _rows(ds):
    return {tuple(x) for x in ds.images.flatten(1).mul(127.5).round().to(torch.int16).tolist()}


def test_digits_can_carve_a_validation_split_out_of_training_and_keep_the_test_split():
    plain = load_dataset(DataConfig(), seed=3)
    carved = load_dataset(DataConfig(val_fraction=0.1), seed=3)
    assert plain.val is None
    # the test split is the same images in the same order: test FIDs stay comparable with runs without val
    assert torch.equal(carved.test.images, plain.test.images) and torch.equal(carved.test.labels, plain.test.labels)
    # the validation images come out of the training split, about 10 % of each class, never out of test
    assert len(carved.train) + len(carved.val) == len(plain.train)
    assert set(carved.val.labels.tolist()) == set(range(10))
    per_class = np.bincount(carved.val.labels.numpy(), minlength=10)
    from sklearn.datasets import load_digits
    totals = np.bincount(load_digits().target, minlength=10)
    assert np.all(np.abs(per_class - 0.1 * totals) <= 1)
    assert len(carved.val) == 179            # round(10 % of each class), summed
    trainset, valset = _rows(carved.train), _rows(carved.val)
    assert valset <= _rows(plain.train) and not valset & _rows(plain.test)
    # the digits hold a few duplicate images, so compare positions too: the train split lost exactly the val images
    assert len(trainset | valset) == len(_rows(plain.train))


def test_an_image_folder_can_have_a_validation_split(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("normal", "effusion"):
        (tmp_path / cls).mkdir()
        for i in range(20):
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    s = load_dataset(DataConfig(dataset="folder", path=str(tmp_path), image_size=12, val_fraction=0.25), seed=0)
    assert (len(s.train), len(s.test), len(s.val)) == (22, 8, 10)
    assert sorted(s.val.labels.tolist()) == [0] * 5 + [1] * 5


@pytest.mark.parametrize("kwargs, match", [
    ({"val_fraction": -0.1}, "val_fraction must be in"),
    ({"val_fraction": 0.8}, "test_fraction \\+ val_fraction < 1"),
    ({"val_fraction": 0.1, "dataset": "npz", "path": "x.npz"}, "brings its own validation split"),
    ({"val_fraction": 0.1, "dataset": "pneumoniamnist"}, "brings its own validation split"),
])
def test_bad_validation_fractions_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DataConfig(**kwargs)


def test_a_digits_run_with_a_validation_split_reports_fid_val(tmp_path, private_cache):
    cfg = RunConfig.from_dict({
        "seed": 0, "eval_every": 1, "eval_samples": 16,
        "model": {"base_channels": 8, "num_train_timesteps": 50, "sampling_steps": 2, "public_pretrain": "none"},
        "fed": {"clients": 2, "rounds": 1, "batch_size": 64, "local_epochs": 1},
        "data": {"val_fraction": 0.1, "partition": "iid"},
        "dp": {"mode": "off"}, "secure_agg": {"mode": "off"},
    })
    run = tmp_path / "run"
    FederatedRun.create(cfg, run).run()
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics if "fid_val" in m] == [0, 1]
    start = next(json.loads(x) for x in (run / "ledger.jsonl").read_text().splitlines() if '"run_start"' in x)
    assert start["payload"]["evaluation"]["validation_split"]["image_count"] == 179
    verify_run(run)
