"""White-box gradient canaries reach the client update exactly as one more (clipped) example would."""

import numpy as np
import pytest
import torch

from privfed.data import load_dataset
from privfed.federation.canaries import GradientCanaries
from privfed.federation.client import LocalTrainer
from privfed.federation.privacy import run_delta
from privfed.federation.site_privacy import site_privacy
from privfed.federation.seeding import torch_generator
from privfed.models import build_scheduler, build_unet


def _setup(cfg, n=24):
    splits = load_dataset(cfg.data, seed=cfg.seed)
    data = splits.train.subset(np.arange(n))
    torch.manual_seed(0)
    model = build_unet(cfg.model, channels=data.channels, image_size=data.size)
    return data, model, build_scheduler(cfg.model)


def _canaries(model, included, *, norm, clients=1):
    n_params = sum(p.numel() for p in model.parameters())
    return GradientCanaries.draw(np.asarray(included), n_params=n_params, n_clients=clients, norm=norm, seed=11)


def _delta(trainer, model, data, canaries):
    trainer.canaries = canaries
    return trainer.train(model, data, client_id=0, round_index=1, generator=torch_generator(5, "t")).delta.double()


@pytest.mark.parametrize("private", [False, True])
def test_canary_gradient_enters_the_update_as_one_example(tiny_config, private):
    n = 24
    # batch = n: q = 1, one step, so each included canary is sampled and the SGD step is linear in its gradient
    cfg = tiny_config.replace(fed={"batch_size": n, "local_epochs": 1})
    if private:
        cfg = cfg.replace(dp={"mode": "sample", "target_epsilon": 8.0, "max_grad_norm": 0.5,
                               "secure_rng": False})   # the same seeded noise in both calls
    data, model, scheduler = _setup(cfg, n)
    if private:
        trainer = site_privacy(cfg, n, delta=run_delta(cfg, [n])[0]).trainer(cfg.fed, scheduler)
    else:
        trainer = LocalTrainer(cfg.fed, scheduler)
    trainer.make_optimizer = lambda m: torch.optim.SGD(m.parameters(), lr=1.0)
    norm = 0.5 if private else 2.0
    can = _canaries(model, [1, 1, -1, 1, -1], norm=norm)
    base = _delta(trainer, model, data, None)
    with_c = _delta(trainer, model, data, can)       # same generator: same batch, timesteps and DP noise
    diff = with_c - base
    expected = torch.zeros_like(diff)
    inc = can.included > 0
    # DP: C·s added to the clipped sum, then /expected batch; plain: one more term of the mean over the batch
    expected[torch.as_tensor(can.coords[inc])] = torch.as_tensor(-can.signs[inc] * norm / n, dtype=torch.float64)
    assert torch.allclose(diff, expected, atol=1e-6), (diff[torch.as_tensor(can.coords)], expected[can.coords])
    # the audit score is positive exactly for the included canaries (no other training signal here)
    scores = can.scores(torch.zeros_like(diff), diff)
    assert np.all((scores > 0) == inc)


def test_canaries_are_poisson_sampled_per_step_and_owned_by_one_client(tiny_config):
    model = build_unet(tiny_config.model, channels=1, image_size=28)
    can = _canaries(model, np.ones(200, dtype=np.int8), norm=1.0, clients=4)
    assert len(set(can.coords.tolist())) == 200 and set(can.owners.tolist()) <= {0, 1, 2, 3}
    params = [torch.zeros_like(p) for p in model.parameters()]
    for p in params:
        p.grad = torch.zeros_like(p)
    inject = can.injector(2, round_index=1, sample_rate=0.25)
    hits = sum(inject(params, "grad", 1.0) for _ in range(200))
    mine = int(np.sum(can.owners == 2))
    assert abs(hits / (200 * mine) - 0.25) < 0.05      # each canary ~ Bernoulli(q) per step
    flat = torch.cat([p.grad.flatten() for p in params])
    touched = set(torch.nonzero(flat).flatten().tolist())
    assert touched <= set(can.coords[can.owners == 2].tolist()) and touched
    # excluded canaries are never injected; a client without canaries gets no injector
    none_in = GradientCanaries.draw(-np.ones(10, dtype=np.int8), n_params=flat.numel(), n_clients=1, norm=1.0,
                                    seed=1)
    assert none_in.injector(0, 1, sample_rate=1.0) is None


def test_canary_draw_rejects_bad_arguments():
    with pytest.raises(ValueError, match="distinct coordinates"):
        GradientCanaries.draw(np.ones(10, dtype=np.int8), n_params=5, n_clients=1, norm=1.0, seed=0)
    with pytest.raises(ValueError, match="norm"):
        GradientCanaries.draw(np.ones(3, dtype=np.int8), n_params=5, n_clients=1, norm=0.0, seed=0)
