"""The standard DDPM ε-prediction loss (Ho et al. 2020), reduced per example."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, UNet2DModel


def diffusion_loss(model: UNet2DModel, scheduler: DDPMScheduler, x0: torch.Tensor, *,
                   generator: torch.Generator | None = None, reduction: str = "mean",
                   min_timestep: int = 0) -> torch.Tensor:
    """Mean squared error between the added noise and the UNet's prediction at a random timestep, drawn uniformly
    from [min_timestep, T) (T = num_train_timesteps; 0 is the standard DDPM objective).

    `reduction="none"` returns one loss per example (shape N), as ghost clipping needs.
    """
    n = x0.shape[0]
    # drawn on the CPU so one seeded CPU generator serves CPU and CUDA runs alike
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    t = torch.randint(min_timestep, scheduler.config.num_train_timesteps, (n,), generator=generator).to(x0.device)
    xt = scheduler.add_noise(x0, noise, t)
    pred = model(xt, t).sample
    per_example = (pred - noise).pow(2).flatten(1).mean(1)
    return per_example if reduction == "none" else per_example.mean()
