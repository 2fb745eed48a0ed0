"""fed.min_timestep: the sites' training loss draws its diffusion timesteps from [min_timestep, T) — in plain
local training and in the distributed DP-SGD trainer alike — while evaluation keeps every timestep."""

import torch

from privfed.config import RunConfig
from privfed.federation.client import LocalTrainer
from privfed.federation.site_privacy import ClippedGradientSumTrainer
from privfed.metrics.eval_loss import eval_loss
from privfed.models.unet import build_scheduler, build_unet


class _RecordingUNet(torch.nn.Module):
    """A real UNet that remembers the timesteps it was called with."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.seen = unet, []

    def forward(self, xt, t):
        self.seen.append(t.detach().clone().reshape(-1))
        return self.unet(xt, t)


def _parts(t_min, **dp):
    cfg = RunConfig.from_dict({"model": {"base_channels": 8, "num_train_timesteps": 50},
                               "fed": {"min_timestep": t_min, "batch_size": 64}, "dp": dp or {"mode": "off"}})
    scheduler = build_scheduler(cfg.model)
    torch.manual_seed(0)
    return cfg, scheduler, _RecordingUNet(build_unet(cfg.model, channels=1, image_size=8))


def test_local_training_draws_only_the_allowed_timesteps():
    cfg, scheduler, model = _parts(30)
    x0 = torch.rand(400, 1, 8, 8) * 2 - 1
    loss = LocalTrainer(cfg.fed, scheduler).per_example_loss(model, x0, torch.Generator().manual_seed(1))
    t = torch.cat(model.seen)
    assert loss.shape == (400,) and len(t) == 400
    # uniform on [30, 50): every value taken, none below
    assert int(t.min()) == 30 and int(t.max()) == 49 and len(set(t.tolist())) == 20
    # the same trainer with the key at 0 covers [0, 50)
    cfg0, _, model0 = _parts(0)
    LocalTrainer(cfg0.fed, scheduler).per_example_loss(model0, x0, torch.Generator().manual_seed(1))
    assert int(torch.cat(model0.seen).min()) < 30


def test_the_distributed_dp_sgd_trainer_and_evaluation():
    cfg, scheduler, model = _parts(40, mode="sample", placement="distributed")
    trainer = ClippedGradientSumTrainer(cfg.fed, scheduler, dp=cfg.dp)
    x0 = torch.rand(200, 1, 8, 8) * 2 - 1
    trainer.per_example_loss(model, x0, torch.Generator().manual_seed(2))
    assert int(torch.cat(model.seen).min()) >= 40
    # evaluation measures the model on every timestep whatever the sites train on
    model.seen.clear()
    eval_loss(model, scheduler, x0, seed=0, batch_size=200)
    assert int(torch.cat(model.seen).min()) < 40


def test_the_run_description_says_which_timesteps_the_sites_train(tiny_config):
    from privfed.federation.privacy import server_privacy

    cfg = tiny_config.replace(dp={"mode": "sample", "placement": "distributed", "target_epsilon": 8.0},
                              secure_agg={"mode": "secagg", "clip_range": 4.0})
    # the default projection's T / 5 of this model's T = 50; a named value; 0, which the note leaves out
    assert "draws each one's diffusion timestep from [10, 50)" in server_privacy(cfg, [50, 50, 50]).notes()[0]
    note = server_privacy(cfg.replace(fed={"min_timestep": 20}), [50, 50, 50]).notes()[0]
    assert "draws each one's diffusion timestep from [20, 50)" in note
    assert "diffusion timestep" not in server_privacy(cfg.replace(fed={"min_timestep": 0}), [50, 50, 50]).notes()[0]
