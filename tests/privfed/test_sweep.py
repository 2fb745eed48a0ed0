"""privfed sweep: the grid and variants resolve to validated run configurations, every point is an ordinary run
directory, finished points are skipped, interrupted ones resumed, failures recorded, and the summary is drawn."""

import csv
import json
import math
import shutil
import textwrap

import numpy as np
import pytest
from PIL import Image

from privfed.cli import main
from privfed.errors import ConfigError
from audits.artifact_hash import sha256_path
from privfed.sweep.run import plan, run_sweep, write_results
from privfed.sweep.spec import load_sweep
from tests.privfed.cli_errors import assert_refused

TINY_BASE = """
[base]
eval_every = 1
eval_samples = 16
[base.model]
base_channels = 8
num_train_timesteps = 50
sampling_steps = 2
pretrain_steps = 5
pretrain_set_size = 64
[base.fed]
clients = 3
rounds = 1
batch_size = 16
local_epochs = 1
[base.data]
partition = "iid"
[base.secure_agg]
mode = "off"
"""


def _write(tmp_path, body, name="s.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_grid_and_variants_resolve_to_configs(tmp_path):
    path = _write(tmp_path, TINY_BASE + """
    [grid]
    seed = [0, 1]
    "dp.target_epsilon" = [2, 8, "inf"]
    [[variant]]
    name = "federated"
    [[variant]]
    name = "centralized"
    centralized = true
    [[variant]]
    name = "non-private"
    "dp.mode" = "off"
    """)
    sw = load_sweep(path)
    labels = [p.label for p in sw.points]
    # 2 seeds × 3 ε × 3 variants = 18 combinations; every non-private combination of a seed is one configuration
    assert len(sw.points) == 2 * 3 + 2 * 3 - 0 and len(set(p.config_hash for p in sw.points)) == len(sw.points)
    inf = next(p for p in sw.points if p.label == "federated,seed=0,target_epsilon=inf")
    assert inf.config.dp.mode == "off" and "non-private,seed=0,target_epsilon=2" in inf.also
    central = next(p for p in sw.points if p.label == "centralized,seed=1,target_epsilon=2")
    assert (central.config.fed.clients, central.config.secure_agg.mode, central.config.dp.target_epsilon) == \
        (1, "off", 2.0)
    assert central.config.seed == 1 and central.group_label == "centralized,target_epsilon=2"
    assert "federated,seed=1,target_epsilon=8" in labels


def test_per_round_sets_the_fraction(tmp_path):
    path = _write(tmp_path, TINY_BASE.replace("clients = 3", "clients = 4") + """
    [grid]
    "fed.clients" = [4, 8]
    [[variant]]
    name = "two per round"
    "fed.per_round" = 2
    "dp.mode" = "off"
    """)
    assert [p.config.fed.fraction for p in load_sweep(path).points] == [0.5, 0.25]


@pytest.mark.parametrize("body, match", [
    ("[grid]\nseed = 3\n", "non-empty list"),
    ("[grid]\n\"fed.clientz\" = [1, 2]\n", "fed.clientz"),
    ("[grid]\n\"fed.rounds\" = [\"inf\"]\n", "only meaningful for dp.target_epsilon"),
    ("[grid]\n\"fed.clients\" = [3, 0]\n", "clients must be >= 1"),
    ("[grids]\nseed = [1]\n", "unknown table"),
    ("[[variant]]\nname = \"a\"\n[[variant]]\nname = \"a\"\n", "two variants"),
])
def test_bad_sweep_files_fail_before_anything_is_written(tmp_path, capsys, body, match):
    path = _write(tmp_path, TINY_BASE + body)
    with pytest.raises(ConfigError, match=match):
        load_sweep(path)
    assert_refused(capsys, ["sweep", str(path), "--out", str(tmp_path / "out")], nothing_at=tmp_path / "out")


def test_sweep_runs_skips_resumes_and_summarises(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVFED_CACHE", str(tmp_path / "cache"))
    path = _write(tmp_path, TINY_BASE.replace("rounds = 1", "rounds = 2") + """
    [grid]
    seed = [0, 1]
    "dp.target_epsilon" = [4, "inf"]
    [[variant]]
    name = "local"
    [[variant]]
    name = "broken"
    "data.dataset" = "npz"
    "data.path" = "no-such-file.npz"
    "dp.mode" = "off"
    """)
    sw = load_sweep(path)
    out = tmp_path / "out"
    assert len(sw.points) == 6            # broken is non-private: its two ε crossings are one point per seed
    # interrupt the first point after its first round, as a crash would
    first = sw.points[0]

    class Crash:
        def __init__(self, st):
            self.st = st

        def __getattr__(self, name):
            return lambda *a, **k: None

        def round_end(self, r, record):
            if self.st.point is first and r == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(sw, out, reporter_factory=Crash)
    assert [s.status for s in plan(sw, out)][0] == "partial"

    seen = []
    states = run_sweep(sw, out, on_point=lambda st, s: seen.append(st.point.label))
    assert [s.status for s in states] == ["done"] * 4 + ["failed"] * 2
    assert "DataError" in states[4].error and "no-such-file.npz" in states[4].error
    ledger = [json.loads(x) for x in (out / "runs" / first.slug / "ledger.jsonl").read_text().splitlines()]
    assert [r["payload"]["from_round"] for r in ledger if r["kind"] == "resume"] == [1]

    # a second run touches nothing that is done and does not retry the failure
    before = {p: (out / "runs" / p / "ledger.jsonl").stat().st_mtime_ns for p in (s.point.slug for s in states[:4])}
    seen.clear()
    run_sweep(sw, out, on_point=lambda st, s: seen.append(st.point.label))
    assert seen == []
    assert before == {p: (out / "runs" / p / "ledger.jsonl").stat().st_mtime_ns for p in before}

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["status"] for r in rows] == ["done"] * 4 + ["failed"] * 2
    for r, st in zip(rows[:4], states[:4]):
        end = next(x for x in (json.loads(y) for y in (st.run_dir / "ledger.jsonl").read_text().splitlines())
                   if x["kind"] == "run_end")["payload"]
        if st.point.config.dp.mode == "off":
            assert r["epsilon"] == "" and r["target_epsilon"] == "inf"
        else:
            assert math.isclose(float(r["epsilon"]), max(end["final_epsilon"].values()))
        metrics = [json.loads(x) for x in (st.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert float(r["fid"]) == metrics[-1]["fid"] and float(r["fid_public_only"]) == metrics[0]["fid"]
        assert float(r["fid_lo"]) <= float(r["fid_hi"])
    res = json.loads((out / "results.json").read_text())
    groups = {g["label"]: g for g in res["groups"]}
    dp = groups["local,target_epsilon=4"]
    assert dp["seeds"] == 2 and dp["interval"].startswith("t-interval over 2 seeds")
    fids = [float(r["fid"]) for r in rows if r["variant"] == "local" and r["target_epsilon"] == "4.0"]
    assert math.isclose(dp["fid"], sum(fids) / 2, rel_tol=1e-9)
    assert dp["share"] is not None            # the non-private group of the same context exists
    # of the two local groups (one context), one is the best and the other is compared with it over both seeds
    pairs = [g["vs_best"] for g in res["groups"] if g["variant"] == "local"]
    assert sorted(p is None for p in pairs) == [False, True] and next(p for p in pairs if p)["pairs"] == 2
    html = (out / "summary.html").read_text()
    assert "vs best (paired)" in html
    assert html.count("data:image/png;base64,") >= 5 and "failed" in html
    for png in ("fid_by_group", "fid_vs_dp_target_epsilon", "fid_per_round", "epsilon_per_round"):
        with Image.open(out / "figures" / f"{png}.png") as im:
            assert im.size[0] > 300
    # every point measured FID with the one shared feature extractor, and the table says which
    ids = {r["fid_extractor"] for r in rows[:4]}
    assert ids == {sha256_path(states[0].run_dir / "cache" / "domain_classifier.safetensors")[:16]}
    assert "Different feature extractors" not in html
    # a run whose FIDs come from another extractor (an older run, another machine's cache) is flagged in the summary
    (states[1].run_dir / "cache" / "domain_classifier.safetensors").write_bytes(b"another extractor")
    write_results(sw, out, plan(sw, out))
    html = (out / "summary.html").read_text()
    warning = html.split("Different feature extractors")[1].split("</p>")[0]
    assert states[1].point.group_label in warning

    # a run written before a key with a default existed (here fed.ema_decay) still counts as its point
    old_cfg = out / "runs" / first.slug / "config.toml"
    text = old_cfg.read_text()
    assert "ema_decay = 0.0\n" in text
    old_cfg.write_text(text.replace("ema_decay = 0.0\n", ""))
    assert [s.status for s in plan(sw, out)][0] == "done"
    # an edited sweep file whose point now means another configuration is refused, naming the folder
    path.write_text(path.read_text().replace("batch_size = 16", "batch_size = 8"))
    assert main(["sweep", str(path), "--out", str(out)]) == 2


def test_infinite_epsilon_wins_over_a_variants_dp_mode(tmp_path):
    path = _write(tmp_path, TINY_BASE + """
    [grid]
    "dp.target_epsilon" = [4, "inf"]
    [[variant]]
    name = "dp-fedavg"
    "dp.mode" = "client"
    """)
    modes = {p.label: p.config.dp.mode for p in load_sweep(path).points}
    assert modes == {"dp-fedavg,target_epsilon=4": "client", "dp-fedavg,target_epsilon=inf": "off"}


def test_several_grids_share_their_common_point(tmp_path):
    path = _write(tmp_path, TINY_BASE + """
    [[grid]]
    "fed.clients" = [3, 4]
    [[grid]]
    "data.alpha" = [0.5, 5.0]
    """)
    points = load_sweep(path).points
    # (clients 3, α 0.5) is the base configuration reached from both grids: one run, on both axes
    assert len(points) == 3
    shared = points[0]
    assert shared.also == ["alpha=0.5"] and shared.settings == {"fed.clients": 3, "data.alpha": 0.5}


def test_shipped_example_files_are_valid():
    from pathlib import Path

    from privfed.config import RunConfig

    root = Path(__file__).resolve().parents[2] / "examples"
    files = sorted((root / "sweeps").glob("*.toml"))
    assert len(files) >= 5
    for f in files:
        assert load_sweep(f).points, f
    dist = RunConfig.from_toml(root / "distributed_dp.toml")
    assert dist.dp.effective_placement == "distributed" and dist.fed.batch_size == 512
    # the recipe the README's tables measured it as, whatever the defaults became since
    assert (dist.dp.public_subspace, dist.fed.min_timestep) == (0, 0)
    gpu = RunConfig.from_toml(root / "gpu_preset.toml")
    from privfed.models.unet import build_unet

    params = sum(p.numel() for p in build_unet(gpu.model, channels=1, image_size=28).parameters())
    assert 20e6 <= params <= 25e6 and gpu.fed.rounds == 300 and gpu.fed.local_epochs == 5
    assert gpu.fed.ema_decay == 0.95


def _group_row(group, seed, fid, public, dp_mode, **extra):
    """One finished point as group_rows sees it: FID ± 5, its round-0 FID `public`, in context "c"."""
    return {"status": "done", "fid": fid, "fid_lo": fid - 5, "fid_hi": fid + 5, "fid_public_only": public,
            "seed": seed, "dp_mode": dp_mode, "epsilon": 10.0 if dp_mode != "off" else None, "variant": group,
            "group_label": group, "placement": "local", "target_epsilon": 10.0, "dataset": "digits",
            "seconds": 1.0, "_context": "c", "_group": group, "point": f"{group}-{seed}", **extra}


def test_group_statistics_pair_the_gain_by_seed():
    """Three seeds of a DP group and a non-private group in one context: the mean FID and its t-interval, and the
    share of the non-private gain computed per seed against that seed's public start, then averaged."""
    from scipy import stats

    from privfed.sweep.results import group_rows

    row = _group_row
    public = {0: 300.0, 1: 320.0, 2: 280.0}
    dp = {0: 250.0, 1: 300.0, 2: 270.0}
    nonpriv = {0: 100.0, 1: 120.0, 2: 80.0}
    rows = [row("dp", s, dp[s], public[s], "sample") for s in public] + \
        [row("np", s, nonpriv[s], public[s], "off") for s in public]
    groups = {g["label"]: g for g in group_rows(rows)}
    shares = [(public[s] - dp[s]) / (public[s] - nonpriv[s]) for s in public]      # 0.25, 0.10, 0.05
    assert groups["dp"]["share"] == pytest.approx(sum(shares) / 3)
    half = stats.t.ppf(0.975, 2) * np.std(shares, ddof=1) / np.sqrt(3)
    assert groups["dp"]["share_lo"] == pytest.approx(sum(shares) / 3 - half)
    assert groups["dp"]["fid"] == pytest.approx(820 / 3)
    assert groups["np"]["best_in_context"] and not groups["dp"]["within_noise_of_best"]
    assert groups["np"]["share"] is None


def test_groups_are_compared_with_the_best_paired_by_seed():
    """A group that is worse in every seed by a steady margin differs from the best although the FID intervals
    across seeds overlap (the seeds' spread is shared): the paired difference, its interval and p match scipy's
    paired t-test; a group level with the best in the mean is inside the noise; one common seed gives no pairing."""
    from scipy import stats

    from privfed.sweep.results import group_rows

    row = _group_row
    best = {0: 200.0, 1: 260.0, 2: 320.0}
    steady = {0: 210.0, 1: 271.0, 2: 329.0}            # +10, +11, +9: intervals overlap, the pairing separates
    level = {0: 230.0, 1: 240.0, 2: 311.0}              # +30, −20, −9: inside the noise
    rows = [row("best", s, best[s], 400.0, "sample") for s in best] + \
        [row("steady", s, steady[s], 400.0, "sample") for s in best] + \
        [row("level", s, level[s], 400.0, "sample") for s in best] + \
        [row("lone", 5, 265.0, 400.0, "sample")]
    groups = {g["label"]: g for g in group_rows(rows)}
    assert groups["best"]["best_in_context"] and groups["best"]["vs_best"] is None
    d = groups["steady"]["vs_best"]
    ref = stats.ttest_rel([steady[s] for s in best], [best[s] for s in best])
    assert d["pairs"] == 3 and d["diff"] == pytest.approx(10.0) and d["p"] == pytest.approx(ref.pvalue)
    half = stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)
    assert (d["lo"], d["hi"]) == (pytest.approx(10.0 - half), pytest.approx(10.0 + half))
    assert groups["steady"]["fid_lo"] < groups["best"]["fid_hi"]        # the unpaired intervals overlap
    assert not groups["steady"]["within_noise_of_best"]
    assert groups["level"]["vs_best"]["lo"] < 0 < groups["level"]["vs_best"]["hi"]
    assert groups["level"]["within_noise_of_best"]
    assert groups["lone"]["vs_best"] is None and groups["lone"]["within_noise_of_best"]     # falls back: overlap


def test_round_zero_is_named_for_what_it_is():
    """Datasets without public pretraining (e.g. the pneumonia subset) start from an untrained model: the summary
    must not call that level 'public pretraining only'."""
    from privfed.sweep.results import start_label

    assert start_label([{"public_pretrain": "typeset-digits"}]) == "public pretraining only"
    assert start_label([{"public_pretrain": "none"}, {"public_pretrain": "none"}]) == "untrained model"
    assert "or" in start_label([{"public_pretrain": "none"}, {"public_pretrain": "typeset-digits"}])


def test_reuse_from_copies_verified_finished_runs_of_the_same_configuration(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRIVFED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "200")
    first = _write(tmp_path, TINY_BASE + """
    [sweep]
    name = "a"
    [grid]
    seed = [0, 1]
    [base.dp]
    mode = "off"
    """, name="a.toml")
    a = tmp_path / "a"
    run_sweep(load_sweep(first), a)
    # seed 1 of the first sweep is left interrupted: never reused, whatever its configuration
    ledger = a / "runs" / "seed=1" / "ledger.jsonl"
    ledger.write_text("".join(ledger.read_text().splitlines(keepends=True)[:-1]))
    second = _write(tmp_path, TINY_BASE + """
    [sweep]
    name = "b"
    [grid]
    seed = [0, 1, 2]
    [base.dp]
    mode = "off"
    """, name="b.toml")
    b = tmp_path / "b"
    # the dry run names what it would reuse and copies nothing
    assert main(["sweep", str(second), "--out", str(b), "--dry-run", "--reuse-from", str(a)]) == 0
    out = capsys.readouterr().out
    assert out.count("reuse ") == 1 and not (b / "runs").exists()
    ran = []
    assert main(["sweep", str(second), "--out", str(b), "--reuse-from", str(a)]) == 0
    states = run_sweep(load_sweep(second), b, on_point=lambda st, s: ran.append(st.point.slug))
    assert ran == []                                              # all three are done now
    copied, source = (d / "runs" / "seed=0" / "ledger.jsonl" for d in (b, a))
    assert copied.read_bytes() == source.read_bytes()
    assert [s.status for s in states] == ["done"] * 3
    # seed 1 was run again (its source was unfinished), not copied
    assert (b / "runs" / "seed=1" / "ledger.jsonl").read_bytes() != ledger.read_bytes()
    assert not list((b / "runs").glob(".*"))
    # the copied point says where it came from (its seconds were measured there); the others do not
    results = json.loads((b / "results.json").read_text())
    assert {p["point"]: p["reused_from"] for p in results["points"]} == {
        "seed=0": str(a / "runs" / "seed=0"), "seed=1": None, "seed=2": None}
    assert [g["reused"] for g in results["groups"]] == [1]
    assert "reused_from" in (b / "results.csv").read_text().splitlines()[0]
    page = (b / "summary.html").read_text()
    assert "† includes runs copied from another sweep" in page and str(a / "runs" / "seed=0") in page
    # deleted and run again here: no longer a copy
    shutil.rmtree(b / "runs" / "seed=0")
    run_sweep(load_sweep(second), b)
    results = json.loads((b / "results.json").read_text())
    assert all(p["reused_from"] is None for p in results["points"])
    assert "† includes" not in (b / "summary.html").read_text()


def test_reuse_from_refuses_a_run_that_does_not_verify(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVFED_CACHE", str(tmp_path / "cache"))
    body = TINY_BASE + """
    [grid]
    seed = [0]
    [base.dp]
    mode = "off"
    """
    path = _write(tmp_path, body)
    a = tmp_path / "a"
    run_sweep(load_sweep(path), a)
    metrics = a / "runs" / "seed=0" / "checkpoints" / "round_0001" / "privfed_state.json"
    metrics.write_text(metrics.read_text() + " ")                 # the checkpoint no longer has its ledger hash
    from privfed.sweep.run import reuse_runs

    with pytest.raises(ConfigError, match="does not verify"):
        reuse_runs(load_sweep(path), tmp_path / "b", [a])
    assert not list((tmp_path / "b" / "runs").iterdir())          # no half copy left behind
    with pytest.raises(ConfigError, match="not a sweep directory"):
        reuse_runs(load_sweep(path), tmp_path / "b", [tmp_path / "nowhere"])


def test_the_gain_is_measured_from_the_non_private_references_start(tmp_path):
    """A DP group that starts from another model (e.g. a narrower UNet, whose untrained round 0 scores worse) is
    not credited for its worse start: the share uses the non-private reference's round 0 of the same seed. The bar
    figure then marks each group's own round 0 instead of averaging different starts into one line."""
    from privfed.sweep.results import group_rows
    from privfed.sweep.summary import _groups_bar, common_start

    rows = [_group_row("narrow", s, 30.0, 95.0, "sample", public_pretrain="none") for s in (0, 1)] + \
        [_group_row("np", s, 20.0, 60.0, "off", public_pretrain="none") for s in (0, 1)]
    groups = group_rows(rows)
    narrow = next(g for g in groups if g["label"] == "narrow")
    assert narrow["share"] == pytest.approx((60 - 30) / (60 - 20))          # 0.75, not (95 − 30) / (95 − 20)
    assert common_start(groups) is None
    assert common_start([g for g in groups if g["label"] == "np"]) == 60.0
    _groups_bar(groups, tmp_path)
    assert (tmp_path / "figures" / "fid_by_group.png").stat().st_size > 1000


def test_only_selects_points_by_grid_key_config_key_and_variant(tmp_path):
    path = _write(tmp_path, TINY_BASE + """
    [[grid]]
    "fed.clients" = [3, 4]
    seed = [0, 1]
    [[grid]]
    "data.alpha" = [0.5, 5.0]
    seed = [0, 1]
    [[variant]]
    name = "a"
    [[variant]]
    name = "b b"
    "fed.local_epochs" = 2
    """)
    from privfed.sweep.spec import select_points

    sw = load_sweep(path)

    def labels(*clauses):
        return [p.label for p in select_points(sw, list(clauses))]

    assert labels("seed=1", "variant=a") == ["a,clients=3,seed=1", "a,clients=4,seed=1", "a,alpha=5.0,seed=1"]
    # the same key twice is "or"; a short name is the grid key's last part
    assert labels("clients=4", "seed=0", "variant=b b") == ["b b,clients=4,seed=0"]
    # a point of the other axis runs with 3 clients (the base) and is selected by clients=3 too
    assert labels("clients=4", "clients=3", "seed=0", "variant=b b") == ["b b,clients=3,seed=0",
                                                                          "b b,clients=4,seed=0",
                                                                          "b b,alpha=5.0,seed=0"]
    # a config key that is no grid key is compared with the resolved configuration: α = 0.5 is every point of the
    # clients axis too, and the shared point (clients 3, α 0.5) once
    assert labels("data.alpha=0.5", "seed=0", "variant=a") == ["a,clients=3,seed=0", "a,clients=4,seed=0"]
    assert labels("fed.local_epochs=2") == [p.label for p in sw.points if p.variant == "b b"]
    assert labels() == [p.label for p in sw.points]
    for clauses, match in ((["seed"], "write KEY=VALUE"), (["epochs=1"], "not a grid key"),
                           (["fed.nope=1"], "not a config key"), (["seed=7"], "no point")):
        with pytest.raises(ConfigError, match=match):
            select_points(sw, clauses)


def test_only_runs_the_selected_points_and_a_later_sweep_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRIVFED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "200")
    path = _write(tmp_path, TINY_BASE + """
    [grid]
    seed = [0, 1]
    [base.dp]
    mode = "off"
    """)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--only", "seed=nine"]) == 2
    assert capsys.readouterr().err.startswith("privfed: error: --only seed=nine: no point") and not out.exists()
    assert main(["sweep", str(path), "--out", str(out), "--only", "seed=1"]) == 0
    assert "1 of 2 points done (1 selected by --only)" in capsys.readouterr().out
    assert [s.status for s in plan(load_sweep(path), out)] == ["new", "done"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["seed"], r["status"]) for r in rows] == [("0", "new"), ("1", "done")]
    assert not (out / "runs" / "seed=0").exists()
    done = (out / "runs" / "seed=1" / "ledger.jsonl").read_bytes()
    ran = []
    run_sweep(load_sweep(path), out, on_point=lambda st, s: ran.append(st.point.slug))
    assert ran == ["seed=0"] and (out / "runs" / "seed=1" / "ledger.jsonl").read_bytes() == done
    # --reuse-from under --only copies only the selected points
    other = tmp_path / "other"
    assert main(["sweep", str(path), "--out", str(other), "--reuse-from", str(out), "--only", "seed=0"]) == 0
    assert sorted(d.name for d in (other / "runs").iterdir()) == ["seed=0"]


def test_fid_vs_epsilon_names_the_unit_and_goes_logarithmic_when_fids_span_decades(tmp_path, monkeypatch):
    """A sweep that mixes DP-SGD (ε per example) and DP-FedAvg (ε per site) says so on the axis, and FIDs from 100
    to 2,000 are drawn on a log axis so that the DP-SGD curve is not flattened against zero."""
    import privfed.sweep.summary as summary

    seen = {}
    monkeypatch.setattr(summary, "_save", lambda fig, out, name: seen.setdefault(name, fig) and "")

    def group(variant, mode, eps, fid):
        row = _group_row(variant, 0, fid, 300.0, mode) | {"set:dp.target_epsilon": eps}
        return {"label": f"{variant},{eps}", "variant": variant, "fid": fid, "fid_lo": fid - 5, "fid_hi": fid + 5,
                "fid_public_only": 300.0, "dp_mode": mode, "_rows": [row]}

    sgd = [group("DP-SGD", "sample", e, f) for e, f in ((1, 320.0), (4, 290.0), (16, 260.0))]
    avg = [group("DP-FedAvg", "client", e, f) for e, f in ((1, 2300.0), (4, 1900.0), (16, 1500.0))]
    avg[0]["fid_lo"] = 0.0                      # a t-interval clamped at 0 must not turn the log axis off
    summary._along(sgd + avg + [group("DP-SGD", "off", "inf", 100.0)], "dp.target_epsilon", tmp_path, log=True)
    ax = seen["fid_vs_dp_target_epsilon"].axes[0]
    assert ax.get_yscale() == "log" and ax.get_xscale() == "log"
    assert "per example for DP-SGD, per site for DP-FedAvg" in ax.get_xlabel()
    seen.clear()
    summary._along(sgd + [group("DP-SGD", "off", "inf", 100.0)], "dp.target_epsilon", tmp_path, log=True)
    ax = seen["fid_vs_dp_target_epsilon"].axes[0]
    assert ax.get_yscale() == "linear" and ax.get_xlabel() == "ε (per example, target)"
    assert summary.epsilon_axis_label(avg) == "ε (per site, target)"


def test_a_point_whose_run_fitted_its_clip_range_is_the_same_point(tmp_path):
    """Distributed noise fits an unset secure_agg.clip_range when the run starts (ε = 1 needs more than the
    schedule's 8): the sweep still recognises the run as its point, and one with another range as foreign."""
    from privfed.federation.runner import FederatedRun

    body = TINY_BASE.replace('mode = "off"', 'mode = "secagg"').replace("rounds = 1", "rounds = 2") + """
    [base.dp]
    mode = "sample"
    placement = "distributed"
    [grid]
    "dp.target_epsilon" = [1]
    """
    sw = load_sweep(_write(tmp_path, body))
    st = plan(sw, tmp_path / "out")[0]
    run = FederatedRun.create(st.point.config, st.run_dir)
    assert run.cfg.secure_agg.clip_range > st.point.config.secure_agg.clip_range == 8.0
    assert plan(sw, tmp_path / "out")[0].status == "partial"
    foreign = run.cfg.replace(secure_agg={"clip_range": run.cfg.secure_agg.clip_range * 2})
    (st.run_dir / "config.toml").write_text(foreign.to_toml())
    with pytest.raises(ConfigError, match="another configuration"):
        plan(sw, tmp_path / "out")
