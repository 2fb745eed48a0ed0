"""The global model's diffusion loss on the declared evaluation split: what the report's loss curve shows instead of
the sites' training loss, which is a plain mean over private batches and no accounted release (issue 15)."""

from __future__ import annotations

import torch

from privfed.models.loss import diffusion_loss

EVAL_LOSS_IMAGES = 512     # at most this many evaluation images (the first ones), one fixed (noise, timestep) each


@torch.no_grad()
def eval_loss(model: torch.nn.Module, scheduler, images: torch.Tensor, *, seed: int,
              batch_size: int = 256) -> float:
    """Mean ε-prediction loss of ``model`` on ``images`` (the evaluation split, in [-1, 1]) with (noise, timestep)
    draws fixed by ``seed``, so the values of different rounds are comparable."""
    x = images[:EVAL_LOSS_IMAGES]
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        total = 0.0
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            total += float(diffusion_loss(model, scheduler, xb, generator=g, reduction="none").sum())
    finally:
        model.train(was_training)
    return total / max(len(x), 1)
