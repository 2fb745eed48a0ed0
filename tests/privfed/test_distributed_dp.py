"""Distributed DP under secure aggregation (placement "distributed"), the server placement's 2C fix, bad input."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch

from audits.accounting import IndependentAccountant, parse_event
from audits.verify import verify_run
from dp import GaussianEvent, PrivacyAccountant
from privfed.config import RunConfig
from privfed.errors import ConfigError
from privfed.federation import privacy as P
from privfed.federation import site_privacy as SP
from privfed.federation.runner import FederatedRun, SilentReporter
from tests.privfed.cli_errors import assert_refused


def _records(run, kind):
    return [json.loads(line)["payload"] for line in (run / "ledger.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == kind]


def _distributed(tiny_config, **sa):
    return tiny_config.replace(dp={"mode": "client", "placement": "distributed", "target_epsilon": 8.0},
                               secure_agg={"mode": "secagg", "clip_range": 4.0, **sa})


def test_server_unmasks_a_noisy_sum_and_the_audit_recomputes_epsilon(tmp_path, tiny_config, monkeypatch):
    """What the server unmasks differs from the clean sum of the sites' inputs by noise of the accounted σ; the
    recorded typed events give the reported ε when recomputed by audits; the site receipts agree."""
    clean, unmasked = {}, []
    real_share = SP.SiteDistributedDP.add_noise_share

    def spy_share(self, update, *, weight_total, **kw):
        out = real_share(self, update, weight_total=weight_total, **kw)
        clean.setdefault(len(unmasked), []).append((np.array(update) * weight_total, self.plan, weight_total))
        return out

    real_post = P.ServerDistributedDP.post_aggregate

    def spy_post(self, total, total_weight, *, round_index):
        unmasked.append(total.numpy().copy())
        return real_post(self, total, total_weight, round_index=round_index)

    monkeypatch.setattr(SP.SiteDistributedDP, "add_noise_share", spy_share)
    monkeypatch.setattr(P.ServerDistributedDP, "post_aggregate", spy_post)
    run = tmp_path / "ddp"
    res = FederatedRun.create(_distributed(tiny_config), run).run()
    assert res.rounds_completed == 2 and len(unmasked) == 2
    for r, total in enumerate(unmasked):
        inputs = clean[r]
        n = len(inputs)
        plan, wt = inputs[0][1], inputs[0][2]
        noise = total - sum(x for x, _, _ in inputs)
        ev = plan.event(n, total.size)
        # every share: σ = z·Δ2/√h steps; all n survived, so the sum carries n shares (scaled back by wt)
        expected = math.sqrt(n) * ev.share_stddev * plan.step(n) * wt
        assert np.std(noise) == pytest.approx(expected, rel=0.03)
        # the honest shares alone meet the accounted σ = z·C (C = max_grad_norm, the update's L2 clip)
        assert math.sqrt(ev.honest_sites) * ev.share_stddev * plan.step(n) * wt >= plan.z * 1.0
        assert abs(np.mean(noise)) < 5 * expected / math.sqrt(total.size)
    events = _records(run, "dp_event")
    assert len(events) == 2 * 3 and {e["event"]["type"] for e in events} == {"distributed_discrete_gaussian"}
    final = _records(run, "run_end")[-1]["final_epsilon"]
    for cid, eps in final.items():
        acc = IndependentAccountant(accountant="rdp")
        for e in events:
            if e["client"] == cid:
                acc.compose(parse_event(e["event"]))
        assert acc.epsilon(delta=events[0]["delta"]) == pytest.approx(eps, rel=1e-9)
        assert 7.5 < eps <= 8.0
    report = verify_run(run)
    assert all(c.status == "consistent" for c in report.receipts)
    assert len(report.epsilon_checks) == 6


def test_sample_level_one_private_step_per_round(tmp_path, tiny_config, monkeypatch):
    """Sample level: each site sends minus the sum of its clipped per-example gradients of one Poisson batch plus its
    share; the server's unmasked total differs from the clean sum by the accounted noise; events carry each site's
    own q; ε recomputed by audits; receipts agree."""
    clean, unmasked = {}, []
    real_share = SP.SiteDistributedDP.add_noise_share

    def spy_share(self, update, *, weight_total, **kw):
        assert kw["setup"] == {"n": 3, "threshold": 3, "clip_range": 4.0, "modulus_bits": 32}
        clean.setdefault(len(unmasked), []).append((np.array(update) * weight_total, self, weight_total))
        return real_share(self, update, weight_total=weight_total, **kw)

    real_post = P.ServerDistributedDP.post_aggregate

    def spy_post(self, total, total_weight, *, round_index):
        unmasked.append(total.numpy().copy())
        return real_post(self, total, total_weight, round_index=round_index)

    monkeypatch.setattr(SP.SiteDistributedDP, "add_noise_share", spy_share)
    monkeypatch.setattr(P.ServerDistributedDP, "post_aggregate", spy_post)
    cfg = tiny_config.replace(dp={"mode": "sample", "placement": "distributed", "target_epsilon": 8.0},
                              secure_agg={"mode": "secagg", "clip_range": 4.0})
    run = tmp_path / "sdp"
    res = FederatedRun.create(cfg, run).run()
    assert res.rounds_completed == 2 and len(unmasked) == 2
    for r, total in enumerate(unmasked):
        inputs = clean[r]
        n, site = len(inputs), inputs[0][1]
        # each site's clean input: minus a sum of per-example gradients clipped to C = 1 (norm <= batch drawn)
        assert all(0 < np.linalg.norm(x) <= 60 for x, _, _ in inputs)
        noise = total - sum(x for x, _, _ in inputs)
        ev = site.plan.event(n, total.size)
        expected = math.sqrt(n) * ev.share_stddev * site.plan.step(n) * n
        assert np.std(noise) == pytest.approx(expected, rel=0.03)
    events = _records(run, "dp_event")
    assert len(events) == 6 and {e["unit"] for e in events} == {"example"}
    sizes = {e["client"]: e["event"]["sample_rate"] for e in events}
    assert all(0 < q < 0.1 for q in sizes.values())      # batch 16 of ~160 images: the site's own Poisson rate
    final = _records(run, "run_end")[-1]["final_epsilon"]
    for cid, eps in final.items():
        acc = IndependentAccountant(accountant="rdp")
        for e in events:
            if e["client"] == cid:
                acc.compose(parse_event(e["event"]))
        assert acc.epsilon(delta=events[0]["delta"]) == pytest.approx(eps, rel=1e-9)
        assert 0 < eps <= 8.0
    assert all(c.status == "consistent" for c in verify_run(run).receipts)


class _CrashIn(SilentReporter):
    def __init__(self, round_index):
        self.round_index = round_index

    def client_done(self, round_index, client_id, update):
        if round_index == self.round_index:
            raise KeyboardInterrupt


def test_resume_rebuilds_the_distributed_accountants(tmp_path, tiny_config):
    """Crash in round 2, resume: server and site accountants are rebuilt from the ledger and the receipts (typed
    distributed events), giving the ε of an uninterrupted run."""
    cfg = _distributed(tiny_config)
    with pytest.raises(KeyboardInterrupt):
        FederatedRun.create(cfg, tmp_path / "crash", reporter=_CrashIn(2)).run()
    res = FederatedRun.resume(tmp_path / "crash").run()
    assert res.rounds_completed == 2
    events = _records(tmp_path / "crash", "dp_event")
    acc = IndependentAccountant(accountant="rdp")
    for e in events:
        if e["client"] == "0":
            acc.compose(parse_event(e["event"]))
    assert len(acc.events) == 2
    final = _records(tmp_path / "crash", "run_end")[-1]["final_epsilon"]
    assert final["0"] == pytest.approx(acc.epsilon(delta=events[0]["delta"]), rel=1e-9)
    assert all(c.status == "consistent" for c in verify_run(tmp_path / "crash").receipts)


def test_noise_share_is_exact_integer_multiples_of_the_step(tiny_config):
    """The share enters the ring as whole quantization steps (what the accounting assumes)."""
    cfg = _distributed(tiny_config)
    site = SP.site_privacy(cfg, 40, delta=1e-5)
    stream = hashlib.shake_256(b"share").digest(1 << 20)
    pos = [0]

    def source(n):
        pos[0] += n
        return stream[pos[0] - n:pos[0]]
    site.noise_source = source
    x = np.zeros(500)
    y = site.add_noise_share(x, weight_total=3.0)
    k = y / site.plan.step(3)
    assert np.allclose(k, np.round(k), atol=1e-6) and np.std(k) > 1e6
    assert site.noise_share_event().honest_sites == cfg.secure_agg.threshold(3)


def test_a_stricter_pinned_colluder_bound_only_adds_noise_or_refuses(tiny_config):
    cfg = _distributed(tiny_config)
    site = SP.site_privacy(cfg, 40, delta=1e-5)
    with pytest.raises(SP.PolicyViolation, match="no honest"):
        site.add_noise_share(np.zeros(10), weight_total=3.0, max_colluders=3)
    n = 20_000
    base = site.add_noise_share(np.zeros(n), weight_total=3.0)
    strict = site.add_noise_share(np.zeros(n), weight_total=3.0, max_colluders=1)
    planned = site.plan.event(3, n)
    # one colluder more assumed: each share grows by √(3/2) so that the 2 honest shares alone carry the same noise
    assert np.std(strict) / np.std(base) == pytest.approx(math.sqrt(3 / 2), rel=0.03)
    assert site.noise_share_event() == planned        # the receipt keeps the run's (conservative) event


def test_a_server_that_misstates_the_round_gets_a_refusal_or_more_noise(tiny_config):
    """The share is sized from the secure-aggregation setup: a weight_total that disagrees with the setup's sites
    (e.g. inflated so each site would add less noise), a different clip range or ring is refused; a lower
    threshold than the run's gives more noise."""
    site = SP.site_privacy(_distributed(tiny_config), 40, delta=1e-5)
    setup = {"n": 3, "threshold": 3, "clip_range": 4.0, "modulus_bits": 32}
    for bad in ({"n": 30}, {"clip_range": 8.0}, {"modulus_bits": 16}):
        with pytest.raises(SP.PolicyViolation, match="setup"):
            site.add_noise_share(np.zeros(10), weight_total=3.0, setup={**setup, **bad})
    with pytest.raises(SP.PolicyViolation, match="setup"):
        site.add_noise_share(np.zeros(10), weight_total=30.0, setup=setup)
    n = 20_000
    base = site.add_noise_share(np.zeros(n), weight_total=3.0, setup=setup)
    lower = site.add_noise_share(np.zeros(n), weight_total=3.0, setup={**setup, "threshold": 2})
    assert np.std(lower) / np.std(base) == pytest.approx(math.sqrt(3 / 2), rel=0.03)


def test_too_few_sites_round_no_longer_understates_epsilon():
    """Issue 14: q = 0.5, σ = 1.30, 3 rounds: a draw below min_clients (2) releases noise only, so one site moves
    the release by up to 2C. The event now carries σ/2 (ε 11.0 with PLD), not σ (ε 4.00 before)."""
    cfg = RunConfig.from_dict({"fed": {"clients": 10, "fraction": 0.5, "rounds": 3, "min_clients": 2},
                               "dp": {"mode": "client", "noise_multiplier": 1.3}, "secure_agg": {"mode": "off"}})
    sp = P.server_privacy(cfg, [100] * 10)
    assert sp.sensitivity_factor == 2 and sp.sigma == 1.3       # the noise added is still σ·C
    charged = [sp.charges(r, {})[0] for r in (1, 2, 3)]
    assert charged[-1]["event"]["noise_multiplier"] == pytest.approx(0.65)
    old = PrivacyAccountant(kind="pld")
    old.add_event(GaussianEvent(noise_multiplier=1.3, sample_rate=0.5, steps=3))
    assert old.epsilon(delta=sp.delta) == pytest.approx(4.00, abs=0.01)
    assert charged[-1]["epsilon"] > 8.0                          # ≥ the true worst case with 2 sites
    # calibrated runs keep their target: σ is doubled, the accounted σ/2 meets it
    cal = P.server_privacy(cfg.replace(dp={"noise_multiplier": None, "target_epsilon": 4.0}), [100] * 10)
    acc = PrivacyAccountant(kind="pld")
    acc.add_event(cal._event(0))
    acc.add_event(GaussianEvent(noise_multiplier=cal._event(0).noise_multiplier, sample_rate=0.5, steps=2))
    assert acc.epsilon(delta=cal.delta) <= 4.0 + 1e-6
    # ε without amplification (participation known): σ at sensitivity C for each round the site took part in
    sp.participants(1, [0, 1])
    sp.participants(2, [0])
    ref = PrivacyAccountant(kind="pld")
    ref.add_event(GaussianEvent(noise_multiplier=1.3, sample_rate=1.0, steps=2))
    line = sp.statement_lines()[-1]
    assert line.startswith("Without site-sampling amplification")
    assert f"0: ε = {ref.epsilon(delta=sp.delta):.2f}" in line
    # a resumed server rebuilds it from the signed round_start records
    again = P.server_privacy(cfg, [100] * 10)
    again.restore([{"kind": "round_start", "payload": {"round": 1, "selected": ["0", "1"]}},
                   {"kind": "round_start", "payload": {"round": 2, "selected": ["0"]}}])
    again.charges(1, {})
    assert again.statement_lines()[-1] == sp.statement_lines()[-1]
    # every site every round: no noise-only rounds, factor 1
    assert P.too_few_sites_factor(cfg.replace(fed={"fraction": 1.0})) == 1
    # with secure aggregation the smallest round is its min_clients; with dropouts, an abort below t
    sec = cfg.replace(secure_agg={"mode": "secagg+"}, fed={"clients": 20})
    assert P.too_few_sites_factor(sec) == 3
    assert P.too_few_sites_factor(sec.replace(secure_agg={"dropout_rate": 0.2})) == sec.secure_agg.threshold(20)


def test_placement_labels_and_round_trip(tiny_config):
    cfg = _distributed(tiny_config)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg and 'placement = "distributed"' in cfg.to_toml()
    assert RunConfig().dp.effective_placement == "distributed"              # the default on the digits
    assert RunConfig().replace(secure_agg={"mode": "off"}).dp.effective_placement == "local"
    server = tiny_config.replace(dp={"mode": "client", "noise_multiplier": 1.0})
    assert server.dp.effective_placement == "server"
    sp = P.server_privacy(server, [50, 50, 50])
    sp.charges(1, {})
    assert "trusts the server" in sp.notes()[0] and "trusts the server" in sp.statement_lines()[1]


BAD = [
    (["--secure-agg", "off"], [], "secure aggregation"),
    (["--secure-agg", "ckks"], [], "pairwise-mask"),
    ([], ["[secure_agg]", "clip_range = 0.25"], "clip_range >= "),        # a range set too small is not refitted
    ([], ["[secure_agg]", "clip_range = 1e9"], "too coarse"),             # 32-bit steps too coarse for the share
    ([], ["[secure_agg]", "max_colluders = 9"], "colluding"),             # t − n_C leaves no honest share
    (["--fraction", "0.5"], [], "fraction = 1"),
    (["--dp", "off"], [], "not available"),
]


@pytest.mark.parametrize("flags,toml,match", BAD)
def test_bad_distributed_input_one_line_nothing_written(tmp_path, capsys, flags, toml, match):
    out = tmp_path / "run"
    args = ["run", "--out", str(out), "--dp", "client", "--dp-placement", "distributed", *flags]
    if toml:
        conf = tmp_path / "c.toml"
        conf.write_text("\n".join(toml) + "\n")
        args += ["--config", str(conf)]
    assert_refused(capsys, args, match=match, nothing_at=out)


def test_config_rejects_unknown_placement():
    with pytest.raises(ConfigError, match="placement"):
        RunConfig.from_dict({"dp": {"placement": "cloud"}})


def test_replace_one_for_distributed_events_is_an_upper_bound():
    """audits' replace-one ε for distributed events: Δ doubled, amplification given up (q → 1); never below the
    add/remove ε, and for q = 1 exactly the doubled-sensitivity mechanism."""
    from audits.accounting import replace_one_epsilon
    from dp.distributed import DistributedAccountant, DistributedGaussianEvent

    kw = dict(share_stddev=3e7, honest_sites=3, l2_sensitivity=6e7, l1_sensitivity=1e10, dimension=40_000, steps=1)
    for q in (0.05, 1.0):
        ev = DistributedGaussianEvent(sample_rate=q, **kw)
        events = [parse_event(ev.to_payload())] * 3
        add_remove = IndependentAccountant(accountant="rdp")
        for e in events:
            add_remove.compose(e)
        doubled = DistributedAccountant()
        for _ in range(3):
            doubled.add_event(DistributedGaussianEvent(sample_rate=1.0, **{**kw, "l2_sensitivity": 1.2e8,
                                                                         "l1_sensitivity": 2e10}))
        r1 = replace_one_epsilon(events, delta=1e-5)
        assert r1 >= add_remove.epsilon(delta=1e-5)
        assert r1 == pytest.approx(doubled.epsilon(delta=1e-5), rel=1e-9)


def test_resume_continues_the_servers_adam_state(tmp_path, tiny_config, monkeypatch):
    """Sample-level distributed DP-SGD steps with Adam on the server: the moments saved with the round-1 checkpoint
    are the ones a resumed run continues from (bias correction at step 2, not a fresh step 1)."""
    cfg = tiny_config.replace(dp={"mode": "sample", "placement": "distributed", "target_epsilon": 8.0},
                              secure_agg={"mode": "secagg", "clip_range": 4.0})
    saved = {}
    real_state = P.ServerDistributedDP.optimizer_state

    def spy_state(self):
        state = real_state(self)
        if state is not None:                  # round 0 (public pretraining) has no optimizer state yet
            saved[int(state["adam_t"][0])] = {k: v.clone() for k, v in state.items()}
        return state

    monkeypatch.setattr(P.ServerDistributedDP, "optimizer_state", spy_state)
    with pytest.raises(KeyboardInterrupt):
        FederatedRun.create(cfg, tmp_path / "r", reporter=_CrashIn(2)).run()
    assert sorted(saved) == [1]
    ckpt = tmp_path / "r" / "checkpoints" / "round_0001" / "server_optimizer.safetensors"
    assert ckpt.is_file()
    loaded = []
    real_load = P.ServerDistributedDP.load_optimizer_state
    monkeypatch.setattr(P.ServerDistributedDP, "load_optimizer_state",
                        lambda self, st: (loaded.append({k: v.clone() for k, v in st.items()}), real_load(self, st)))
    run = FederatedRun.resume(tmp_path / "r")
    assert run.run().rounds_completed == 2
    assert len(loaded) == 1 and all(torch.equal(loaded[0][k], saved[1][k]) for k in saved[1])
    assert run.privacy._adam["t"] == 2 and sorted(saved) == [1, 2]
    assert all(c.status == "consistent" for c in verify_run(tmp_path / "r").receipts)


def test_the_noise_plan_is_checked_at_the_real_model_size():
    """Issue 14/18: at ε = 1 with 10 sites the range check needs clip_range ≈ 38, which the rounding check refused
    when it assumed a 2^24-parameter model; checked at the default UNet's size (164 k) the named value is accepted.
    The run and the sites give the plan the model's parameter count."""
    from privfed.federation.distributed_noise import DIM_BOUND, DistributedNoise
    from privfed.models import build_unet, parameter_count

    cfg = RunConfig()
    d = parameter_count(cfg.model, channels=1, image_size=16)
    assert d == sum(p.numel() for p in build_unet(cfg.model, channels=1, image_size=16).parameters())
    raw = {"dp": {"mode": "sample", "placement": "distributed", "target_epsilon": 1.0},
           "secure_agg": {"mode": "secagg+", "clip_range": 8.0}, "fed": {"rounds": 30, "batch_size": 512}}
    with pytest.raises(ConfigError, match=r"clip_range >= ([0-9.]+)") as e:
        DistributedNoise(RunConfig.from_dict(raw), delta=1e-5, dimension=d)
    need = math.ceil(float(e.value.args[0].split("clip_range >= ")[1].split()[0]))
    fitted = RunConfig.from_dict({**raw, "secure_agg": {"mode": "secagg+", "clip_range": float(need)}})
    plan = DistributedNoise(fitted, delta=1e-5, dimension=d)
    assert plan.dimension == d
    for n in range(3, 11):
        assert plan.clip_probability(n, d) <= 1e-9
    for c in (need, 50.0):           # assumed 2^24 parameters: the range check or the rounding check refuses
        with pytest.raises(ConfigError, match="does not fit|too coarse"):
            DistributedNoise(fitted.replace(secure_agg={"mode": "secagg+", "clip_range": float(c)}), delta=1e-5)
    assert DistributedNoise(RunConfig.from_dict({**raw, "dp": {**raw["dp"], "target_epsilon": 10.0}}),
                            delta=1e-5).dimension == DIM_BOUND
    with pytest.raises(ConfigError, match="dimension"):
        DistributedNoise(fitted, delta=1e-5, dimension=0)


@pytest.mark.parametrize("mode,eps", [("client", 8.0), ("client", 2.0), ("sample", 1.0)])
def test_an_unset_clip_range_is_fitted_to_the_noise_and_written(tmp_path, tiny_config, mode, eps):
    """The schedule's range (0.25 site level, 8 sample level) cannot hold the noise of every ε: left unset, it is
    raised to the smallest 3-digit value the round sizes need, written to config.toml (resume and every site read
    it), and the noise then fits; a slightly smaller range would be refused; a range the user sets is kept."""
    from privfed.federation.distributed_noise import DistributedNoise

    cfg = tiny_config.replace(dp={"mode": mode, "placement": "distributed", "target_epsilon": eps},
                              secure_agg={"mode": "secagg"})
    schedule = cfg.secure_agg.clip_range
    assert cfg.was_unset("secure_agg", "clip_range")
    run = FederatedRun.create(cfg, tmp_path / "run")
    fitted = run.cfg.secure_agg.clip_range
    plan = run.privacy.plan
    need = plan.required_range()
    assert fitted >= schedule and fitted >= need and (fitted == schedule or fitted <= need * 1.01)
    assert plan.clip_range == fitted and all(sp.plan.clip_range == fitted for sp in run.site_privacy)
    assert plan.clip_probability(3, plan.dimension) <= 1e-9
    assert RunConfig.from_toml(tmp_path / "run" / "config.toml").secure_agg.clip_range == fitted
    assert FederatedRun.resume(tmp_path / "run").cfg.secure_agg.clip_range == fitted
    if fitted > schedule:
        smaller = run.cfg.replace(secure_agg={"clip_range": need * 0.97})
        with pytest.raises(ConfigError, match="does not fit"):
            DistributedNoise(smaller, delta=run.privacy.delta, dimension=plan.dimension)
    given = cfg.replace(secure_agg={"clip_range": 0.25})
    if need > 0.25:
        with pytest.raises(ConfigError, match=f"clip_range >= {need:.3g}"):
            FederatedRun.create(given, tmp_path / "given")
        assert not (tmp_path / "given").exists()


def test_run_and_site_size_the_plan_by_the_model_and_refuse_a_longer_update(tmp_path, tiny_config):
    from privfed.models import parameter_count

    run = FederatedRun.create(_distributed(tiny_config), tmp_path / "ddp")
    train = run.splits.train
    d = parameter_count(tiny_config.model, channels=train.channels, image_size=train.size)
    assert run.privacy.plan.dimension == d
    assert all(sp.plan.dimension == d for sp in run.site_privacy)
    site = run.site_privacy[0]
    site.add_noise_share(np.zeros(d), weight_total=3.0)
    with pytest.raises(SP.PolicyViolation, match="larger than the model"):
        site.add_noise_share(np.zeros(d + 1), weight_total=3.0)
