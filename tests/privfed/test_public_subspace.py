"""Distributed DP-SGD's projection onto public gradients (dp.public_subspace): exact per-example public gradients,
an orthonormal basis of their span, what it keeps of signal and of noise, wiring into a run, bad input."""

import json
import math
import tomllib

import pytest
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from audits.verify import verify_run
from privfed.config import ModelConfig, RunConfig
from privfed.data.typeset import typeset_digits
from privfed.errors import ConfigError
from privfed.federation import privacy as P
from privfed.federation import public_subspace as PS
from privfed.federation.public_subspace import PublicSubspace
from privfed.federation.runner import FederatedRun
from privfed.models.unet import build_scheduler, build_unet, trainable_parameters
from tests.privfed.cli_errors import assert_refused


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    mc = ModelConfig(base_channels=8, num_train_timesteps=50)
    model = build_unet(mc, channels=1, image_size=8)
    public = typeset_digits(40, image_size=8, channels=1, seed=1)
    return model, build_scheduler(mc), public


def _reference_gradients(model, scheduler, public, k, seed, round_index, params):
    """One example at a time with plain autograd, drawing exactly what PublicSubspace documents it draws."""
    from privfed.federation.seeding import torch_generator

    gen = torch_generator(seed, "public-subspace", round_index)
    idx = torch.randperm(len(public), generator=gen)[:k]
    x = public.images[idx]
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x),), generator=gen)
    rows = []
    for i in range(k):
        xt = scheduler.add_noise(x[i:i + 1], noise[i:i + 1], t[i:i + 1])
        loss = (model(xt, t[i:i + 1]).sample - noise[i:i + 1]).pow(2).mean()
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.flatten() for g in grads]).double())
    return torch.stack(rows)


@pytest.mark.parametrize("which", ["all", "decoder"])
def test_public_gradients_match_one_example_at_a_time_autograd(setup, which):
    model, scheduler, public = setup
    params = trainable_parameters(model, which)
    ps = PublicSubspace(model, scheduler, public, k=6, params=params, seed=5)
    got = ps.gradients(round_index=2)
    ref = _reference_gradients(model, scheduler, public, 6, 5, 2, params)
    assert got.shape == (6, sum(p.numel() for p in params)) and got.dtype == torch.float32
    assert torch.allclose(got.double(), ref, rtol=1e-4, atol=1e-6), (got.double() - ref).abs().max()


@pytest.mark.parametrize("which", ["all", "decoder"])
def test_gradients_follow_the_servers_update_of_the_weights(which):
    # the server applies each round's step with vector_to_parameters, which gives every parameter a new .data
    # tensor: the gradients must be taken at those new weights, not at the weights the subspace was built with
    torch.manual_seed(1)
    mc = ModelConfig(base_channels=8, num_train_timesteps=50)
    model, scheduler = build_unet(mc, channels=1, image_size=8), build_scheduler(mc)
    public = typeset_digits(12, image_size=8, channels=1, seed=1)
    params = trainable_parameters(model, which)
    ps = PublicSubspace(model, scheduler, public, k=4, params=params, seed=5)
    before = ps.gradients(3).double()
    vec = parameters_to_vector(params)
    vector_to_parameters(vec + 0.05 * torch.randn_like(vec), params)
    after = ps.gradients(3).double()
    ref = _reference_gradients(model, scheduler, public, 4, 5, 3, params)
    assert torch.allclose(after, ref, rtol=1e-4, atol=1e-6), (after - ref).abs().max()
    assert (after - before).norm() > 1e-2 * before.norm()


def test_basis_is_orthonormal_spans_the_gradients_and_changes_with_the_round(setup):
    model, scheduler, public = setup
    ps = PublicSubspace(model, scheduler, public, k=8, params=list(model.parameters()), seed=5)
    q = ps.basis(1)
    assert q.shape[1] == 8 and q.dtype == torch.float64
    assert torch.allclose(q.T @ q, torch.eye(8, dtype=torch.float64), atol=1e-10)
    g = ps.gradients(1).double()
    residual = g.T - q @ (q.T @ g.T)
    assert residual.norm() <= 1e-9 * g.norm()
    assert torch.equal(ps.basis(1), q)                     # the same round draws the same basis (resume)
    other = ps.basis(2)
    assert (q.T @ other).norm() ** 2 < 8 - 0.5             # another round: other public draws, another span


def test_projection_keeps_the_span_and_about_k_over_d_of_isotropic_noise(setup):
    model, scheduler, public = setup
    k = 16
    ps = PublicSubspace(model, scheduler, public, k=k, params=list(model.parameters()), seed=5)
    q = ps.basis(0)
    d = q.shape[0]
    inside = q @ torch.randn(k, dtype=torch.float64)
    assert torch.allclose(ps.project(inside, 0), inside, atol=1e-10)
    assert ps.project(inside.float(), 0).dtype == torch.float32
    noise = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kept = ps.project(noise, 0).norm() ** 2 / noise.norm() ** 2
    # ||Qᵀn||² / ||n||² for Gaussian n ~ Beta(k/2, (d−k)/2): mean k/d, sd ≈ √(2k)/d
    assert abs(float(kept) - k / d) < 6 * math.sqrt(2 * k) / d


def test_shrinking_keeps_strong_directions_and_drops_most_of_the_noise(setup):
    """dp.public_subspace_shrink: a coefficient far above the noise τ is kept whole, pure noise mostly dropped
    (positive-part James-Stein keeps E[(1 − τ²/a²)₊² a²] ≈ 0.2·τ² per direction instead of τ²), and the weights are
    those of the principal directions of the public gradients."""
    model, scheduler, public = setup
    k = 32
    ps = PublicSubspace(model, scheduler, public, k=k, params=list(model.parameters()), seed=5)
    _, s, vh = torch.linalg.svd(ps.gradients(0).double(), full_matrices=False)
    d, tau = vh.shape[1], 0.01
    strong = 100 * tau * vh[0]
    assert torch.allclose(ps.project(strong, 0, noise_std=tau), strong * (1 - 1e-4), atol=1e-9)
    gen = torch.Generator().manual_seed(1)
    kept_whole, kept_shrunk = 0.0, 0.0
    for _ in range(20):
        noise = tau * torch.randn(d, generator=gen, dtype=torch.float64)
        kept_whole += float(ps.project(noise, 0).norm() ** 2)
        kept_shrunk += float(ps.project(noise, 0, noise_std=tau).norm() ** 2)
    assert kept_whole == pytest.approx(20 * k * tau ** 2, rel=0.15)
    assert 0.1 < kept_shrunk / kept_whole < 0.35
    mixed = strong + tau * torch.randn(d, generator=gen, dtype=torch.float64)
    out = ps.project(mixed, 0, noise_std=tau)
    assert (out - strong).norm() < (ps.project(mixed, 0) - strong).norm()


@pytest.mark.parametrize("shape", [(5, 3), (7, 1000)])
def test_blockwise_float64_products_match_dense_ones(monkeypatch, shape):
    """The shrunk projection's products with the float32 gradients G, in float64 column blocks (several blocks
    here), equal the dense float64 products."""
    monkeypatch.setattr(PS, "BLOCK_ELEMENTS", 64)
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(shape, generator=gen)
    v, c = torch.randn(shape[1], generator=gen, dtype=torch.float64), torch.randn(shape[0], generator=gen,
                                                                                     dtype=torch.float64)
    dense = G.double()
    assert torch.allclose(PS.gram(G), dense @ dense.T, rtol=1e-12, atol=1e-12)
    assert torch.allclose(PS.matvec(G, v), dense @ v, rtol=1e-12, atol=1e-12)
    assert torch.allclose(PS.rmatvec(G, c), dense.T @ c, rtol=1e-12, atol=1e-12)


def _default_subspace_config(tiny_config, **dp):
    return tiny_config.replace(dp={"mode": "sample", "placement": "distributed", "target_epsilon": 8.0, **dp},
                               secure_agg={"mode": "secagg", "clip_range": 4.0},
                               model={"public_pretrain": "typeset-digits", "pretrain_set_size": 64})


def test_an_unset_rank_is_lowered_to_fit_memory_and_written(tmp_path, tiny_config, monkeypatch):
    """The default k (min(512, public images) = 64 here) is lowered when its public gradients would exceed
    DEFAULT_MEMORY_BYTES, written to config.toml explicitly with the shrinkage kept on, and the run uses that k."""
    cfg = _default_subspace_config(tiny_config)
    assert cfg.dp.public_subspace == 64 and cfg.dp.public_subspace_shrink and cfg.was_unset("dp", "public_subspace")
    probe = FederatedRun(cfg, tmp_path / "probe")
    probe._load_data()
    probe._build_privacy()
    dim = probe.update_dim
    assert probe.cfg.dp.public_subspace == 64                       # fits in 2 GiB: unchanged
    monkeypatch.setattr(PS, "DEFAULT_MEMORY_BYTES", 10 * 4 * dim + 3)  # room for 10 rows of float32 gradients
    written = FederatedRun.written_config(cfg)
    assert (written.dp.public_subspace, written.dp.public_subspace_shrink) == (10, True)
    ranks = []
    monkeypatch.setattr(PublicSubspace, "gradients",
                        lambda self, r, real=PublicSubspace.gradients: ranks.append(self.k) or real(self, r))
    run = tmp_path / "fit"
    FederatedRun.create(cfg.replace(fed={"rounds": 1}), run).run()
    on_disk = RunConfig.from_toml(run / "config.toml")
    assert (on_disk.dp.public_subspace, on_disk.dp.public_subspace_shrink) == (10, True)
    assert not on_disk.was_unset("dp", "public_subspace") and ranks == [10]
    # an explicit k is the user's: never lowered to the default budget
    assert FederatedRun.written_config(_default_subspace_config(
        tiny_config, public_subspace=64, public_subspace_shrink=True)).dp.public_subspace == 64


def test_an_explicit_rank_beyond_the_devices_memory_is_refused(tmp_path, capsys, monkeypatch):
    """k whose public gradients would take more than half the device's memory: one error line naming the largest
    k that fits, exit 2, no run directory."""
    monkeypatch.setattr(PS, "device_memory_bytes", lambda device: 2 * 4 * 1000 * 200)   # half: 200 rows of d=1000
    cfg = RunConfig.from_dict({"dp": {"mode": "sample", "placement": "distributed", "public_subspace": 300,
                                      "public_subspace_shrink": True}, "secure_agg": {"clip_range": 8.0}})
    with pytest.raises(ConfigError, match="choose --public-subspace 200 or less"):
        PS.fit_public_subspace(cfg, dimension=1000)
    assert PS.fit_public_subspace(cfg.replace(dp={"public_subspace": 200}), dimension=1000).dp.public_subspace == 200
    out = tmp_path / "run"
    monkeypatch.setattr(PS, "device_memory_bytes", lambda device: 1 << 20)
    assert_refused(capsys, ["run", "--out", str(out), "--dp", "sample", "--dp-placement", "distributed",
                            "--public-subspace", "64", "--public-subspace-shrink"],
                   match="GB for its public gradients", nothing_at=out)


def test_rank_must_fit_the_public_images(setup):
    model, scheduler, public = setup
    with pytest.raises(ValueError, match="k must be in"):
        PublicSubspace(model, scheduler, public, k=41, params=list(model.parameters()), seed=0)


def test_a_run_projects_the_noisy_step_before_the_server_adam(tmp_path, tiny_config, monkeypatch):
    """The server's noisy mean gradient goes through the projection each round (once, before Adam); ε and the
    ledger's verification are those of distributed DP-SGD (post-processing); the report names the projection."""
    seen = []
    real = PublicSubspace.project

    def spy(self, g, round_index, **kw):
        assert kw == {"noise_std": None}
        out = real(self, g, round_index, **kw)
        seen.append((round_index, g.clone(), out.clone(), self.basis(round_index)))
        return out

    monkeypatch.setattr(PublicSubspace, "project", spy)
    steps = []
    real_post = P.ServerDistributedDP.post_aggregate

    def spy_post(self, total, total_weight, *, round_index):
        out = real_post(self, total, total_weight, round_index=round_index)
        steps.append((round_index, -total.double() / self.union_batch))
        return out

    monkeypatch.setattr(P.ServerDistributedDP, "post_aggregate", spy_post)
    cfg = tiny_config.replace(dp={"mode": "sample", "placement": "distributed", "target_epsilon": 8.0,
                                  "public_subspace": 4},
                              secure_agg={"mode": "secagg", "clip_range": 4.0},
                              model={"public_pretrain": "typeset-digits"})
    run = tmp_path / "ps"
    res = FederatedRun.create(cfg, run).run()
    assert res.rounds_completed == 2
    assert [r for r, *_ in seen] == [1, 2] and [r for r, _ in steps] == [1, 2]
    for (r, g, out, q), (_, mean_grad) in zip(seen, steps):
        assert torch.allclose(g, mean_grad)                # what is projected is the noisy mean gradient
        assert q.shape[1] <= 4
        assert torch.allclose(out, q @ (q.T @ g), atol=1e-12)
        assert out.norm() < g.norm()
    assert tomllib.loads((run / "config.toml").read_text())["dp"]["public_subspace"] == 4
    assert all(c.status == "consistent" for c in verify_run(run).receipts)   # raises on a bad ledger or ε
    from audits.report import build_report
    paths = build_report(run)
    statement = json.loads(paths.json.read_text())["sections"]["privacy_statement"]["text"]
    assert "span of 4 public per-example gradients" in statement and "changes no ε" in statement


def test_the_server_knows_the_noise_it_shrinks_against(tmp_path, tiny_config, monkeypatch):
    """With dp.public_subspace_shrink the server passes τ (noise std per coordinate of the noisy mean gradient, from
    the noise plan); outside the public span the tiny run's step is almost pure noise, so its per-coordinate
    spread there measures τ."""
    seen = []
    real = PublicSubspace.project

    def spy(self, g, round_index, **kw):
        seen.append((g.clone(), kw["noise_std"], self.basis(round_index)))
        return real(self, g, round_index, **kw)

    monkeypatch.setattr(PublicSubspace, "project", spy)
    cfg = tiny_config.replace(dp={"mode": "sample", "placement": "distributed", "target_epsilon": 8.0,
                                  "public_subspace": 4, "public_subspace_shrink": True},
                              secure_agg={"mode": "secagg", "clip_range": 4.0},
                              model={"public_pretrain": "typeset-digits"}, fed={"rounds": 1})
    run = tmp_path / "ps"
    assert FederatedRun.create(cfg, run).run().rounds_completed == 1
    (g, tau, q), = seen
    outside = g - q @ (q.T @ g)
    measured = float(outside.norm()) / math.sqrt(g.numel() - q.shape[1])
    assert tau == pytest.approx(measured, rel=0.03)
    # post-processing: the ledger and ε verify as for any distributed DP-SGD run (raises on a bad ledger or ε)
    assert all(c.status == "consistent" for c in verify_run(run).receipts)
    from audits.report import build_report
    sections = json.loads(build_report(run).json.read_text())["sections"]
    statement = sections["privacy_statement"]["text"]
    assert "estimated signal share" in statement and "changes no ε" in statement
    hazards = {h["hazard"]: h["detail"] for h in sections["dp_implementation"]["hazards"]}
    assert hazards["Floating-point noise"].startswith("Not for the noise: each site's share is drawn exactly")


BAD = [
    (["--dp", "sample", "--dp-placement", "local", "--public-subspace", "64"],  # local placement: no server step
     "distributed DP-SGD"),
    (["--dp", "client", "--dp-placement", "distributed", "--public-subspace", "64"], "distributed DP-SGD"),
    (["--dp", "sample", "--dp-placement", "distributed", "--dataset", "npz", "--data", "x.npz",
      "--public-subspace", "64"], "public images"),                             # no public look-alike of npz data
    (["--dp", "sample", "--dp-placement", "distributed", "--public-subspace", "5000"], "[0, 4096]"),
    (["--public-subspace", "0", "--public-subspace-shrink"], "needs dp public_subspace > 0"),  # nothing to weight
    (["--dp", "sample", "--dp-placement", "local", "--public-subspace-shrink"], "needs dp public_subspace > 0"),
]


@pytest.mark.parametrize("flags,match", BAD)
def test_bad_public_subspace_one_line_nothing_written(tmp_path, capsys, flags, match):
    out = tmp_path / "run"
    conf = tmp_path / "c.toml"
    conf.write_text("[secure_agg]\nclip_range = 8.0\n")
    assert_refused(capsys, ["run", "--out", str(out), "--config", str(conf), *flags], match=match, nothing_at=out)


def test_rank_above_the_public_set_is_refused():
    with pytest.raises(ConfigError, match="pretrain_set_size"):
        RunConfig.from_dict({"dp": {"placement": "distributed", "public_subspace": 600},
                             "secure_agg": {"clip_range": 8.0}, "model": {"pretrain_set_size": 500}})
