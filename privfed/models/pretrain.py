"""Public pretraining: non-private training of the global model on public data before any site takes part.

Pretraining on public (here: synthetic, typeset) images is standard practice in DP generative modelling
(Ghalebikesabi et al. 2023; Dockhorn et al. 2022): it spends no privacy budget, and the private rounds only have
to adapt the model to the sites' data, which a DP-SGD update with its noise can do far better than learning
from scratch. It happens on the server, seeded, so an auditor can reproduce the initial weights.
"""

from __future__ import annotations

from typing import Callable

import torch

from privfed.data.dataset import ImageDataset
from privfed.models.loss import diffusion_loss

PUBLIC_SOURCES = ("typeset-digits",)


def public_pretrain(model: torch.nn.Module, scheduler, data: ImageDataset, *, steps: int, lr: float,
                    batch_size: int, generator: torch.Generator,
                    progress: Callable[[int, int], None] | None = None) -> float:
    """Train `model` in place for `steps` Adam steps (learning rate `lr`) on minibatches of public `data`.

    Returns the mean ε-prediction loss of the last 10 % of steps. `progress(done, total)` is called per step.
    """
    if steps < 1:
        raise ValueError(f"pretraining steps must be >= 1; got {steps}")
    device = next(model.parameters()).device
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    tail, tail_n = 0.0, 0
    n = len(data)
    for i in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=generator)
        loss = diffusion_loss(model, scheduler, data.images[idx].to(device), generator=generator)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= steps - max(1, steps // 10):
            tail += float(loss.detach())
            tail_n += 1
        if progress is not None:
            progress(i + 1, steps)
    return tail / tail_n
