"""Generate images with DDPM (all training steps) or DDIM (few steps) from a trained UNet."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel


@torch.no_grad()
def sample_images(model: UNet2DModel, train_scheduler: DDPMScheduler, *, num_images: int, sampler: str = "ddim",
                  steps: int = 50, generator: torch.Generator | None = None, batch_size: int = 512) -> torch.Tensor:
    """Return `num_images` samples in [-1, 1], shape N×C×H×W, on the model's device."""
    if sampler == "ddim":
        sched = DDIMScheduler.from_config(train_scheduler.config)
        sched.set_timesteps(steps)
    else:
        sched = DDPMScheduler.from_config(train_scheduler.config)
        sched.set_timesteps(train_scheduler.config.num_train_timesteps)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    c, s = model.config.in_channels, model.config.sample_size
    out = []
    for start in range(0, num_images, batch_size):
        n = min(batch_size, num_images - start)
        x = torch.randn((n, c, s, s), generator=generator).to(device)
        for t in sched.timesteps:
            eps = model(x, t).sample
            kwargs = {"eta": 0.0} if sampler == "ddim" else {}
            x = sched.step(eps, t, x, generator=generator, **kwargs).prev_sample
        out.append(x.clamp(-1, 1))
    model.train(was_training)
    return torch.cat(out)
