"""Sample-level DP-SGD through Opacus for diffusion UNets (privacy unit: one training example).

Usage (one client's local training)::

    net = EpsilonModel(copy.deepcopy(global_unet)).train()          # forward(xt, t) -> predicted noise
    opt = torch.optim.Adam(net.parameters(), lr)
    pt = make_private(module=net, optimizer=opt, dataset_size=len(x), batch_size=32,
                      noise_multiplier=1.1, max_grad_norm=1.0, generator=g)
    for x0 in pt.batches(x, epochs=1):                              # Poisson sampling, q = batch_size / n
        if len(x0) == 0:
            pt.noise_only_step(); continue                          # an empty draw is still a noisy step
        pt.optimizer.zero_grad(set_to_none=True)
        loss = per_example_diffusion_loss(pt.module, scheduler, x0, generator=g)   # shape (B,)
        pt.backward(loss)
        pt.optimizer.step()
    ledger.add(pt.event(pt.steps_taken))                            # GaussianEvent(σ, q, steps); ε is recomputed

Grad-sample modes (measured on a tiny ``UNet2DModel`` with attention, float64, see tests/dp/test_dpsgd.py):

* ``"functorch"`` (default): per-layer ``torch.func`` vmap; per-sample gradients exact (max err ~1e-15).
* ``"hooks"``: Opacus' hand-written per-layer samplers. **Wrong** on diffusers UNets (max abs err ~0.1 in the
  mid/up-block conv weights vs one-example-at-a-time autograd). Refused unless ``allow_unverified_mode=True``.
* ``"ghost"``: Opacus ghost/fast gradient clipping (``GradSampleModuleFastGradientClipping`` +
  ``DPOptimizerFastGradientClipping``, two backward passes: per-sample norms, then the re-weighted loss), built with
  ``force_functorch=True``. With Opacus' hand-written (hooks) norm samplers it was **wrong** like ``"hooks"``
  (max abs err 3.7e-4 on a clipped mean gradient of size 5e-3); with the functorch norm path the clipped mean
  gradient matches the reference to ~1e-16. The per-example loss is passed to :meth:`PrivateTraining.backward`
  (Opacus' criterion wrapper is bypassed: our loss is already per-example).

Default = ``"functorch"``: the fastest mode that is correct. ``benchmarks/bench_dp.py --quick`` (CPU, 2 threads,
UNet2DModel (32, 64) with attention, batch 32): functorch 3.97× the non-private step time / 2.97× peak memory;
ghost 4.12× / 1.81× (pick it when memory binds); hooks 2.43× but wrong. The 1.5× goal is not reached on CPU.

The Opacus accountant is never used: the privacy spent is reported as :class:`~dp.events.GaussianEvent` s via
:meth:`PrivateTraining.event` and composed by :class:`dp.accountant.PrivacyAccountant`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from dp.events import GaussianEvent

GRAD_SAMPLE_MODES = ("functorch", "hooks", "ghost")
#: modes whose clipped gradients matched the one-example-at-a-time reference on UNet2DModel (tests/dp)
VERIFIED_MODES = ("functorch", "ghost")


class UnverifiedGradSampleMode(ValueError):
    """The grad-sample mode gave wrong per-sample gradients on diffusers UNets; pass allow_unverified_mode=True."""


class EpsilonModel(nn.Module):
    """Wraps a diffusers ``UNet2DModel`` so that ``forward(xt, t)`` returns the predicted noise tensor.

    Both arguments are batched along dim 0 (``t`` of shape ``(B,)``), which is what Opacus needs to split the
    batch into examples.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(xt, t).sample


def per_example_diffusion_loss(model: nn.Module, scheduler: Any, x0: torch.Tensor, *,
                               generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM ε-prediction loss per example, shape ``(B,)``: mean over pixels of (model(x_t, t) − noise)²."""
    n = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    t = torch.randint(0, int(scheduler.config.num_train_timesteps), (n,), generator=generator, device=x0.device)
    xt = scheduler.add_noise(x0, noise, t)
    pred = model(xt, t)
    if hasattr(pred, "sample"):
        pred = pred.sample
    return (pred - noise).pow(2).flatten(1).mean(1)


@dataclass
class PrivateTraining:
    """What :func:`make_private` returns: the wrapped module, the DP optimizer, Poisson batches, the event."""

    module: nn.Module
    optimizer: Any
    dataset_size: int
    batch_size: int
    noise_multiplier: float
    max_grad_norm: float
    grad_sample_mode: str
    generator: torch.Generator | None = None
    steps_taken: int = field(default=0)

    @property
    def sample_rate(self) -> float:
        """Poisson inclusion probability per step, q = batch_size / dataset_size."""
        return self.batch_size / self.dataset_size

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.dataset_size // self.batch_size)

    def batches(self, data: torch.Tensor, epochs: int) -> Iterator[torch.Tensor]:
        """Poisson-sampled batches: each step includes every row of ``data`` independently with prob. q.

        ``epochs * (n // batch_size)`` steps; a batch may be empty (shape ``(0, ...)``) — call
        :meth:`noise_only_step` for it: the step is still noisy and still counted.
        """
        if data.shape[0] != self.dataset_size:
            raise ValueError(f"data has {data.shape[0]} rows but make_private was told dataset_size="
                             f"{self.dataset_size}")
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        for _ in range(epochs * self.steps_per_epoch):
            mask = torch.rand(self.dataset_size, generator=self.generator) < self.sample_rate
            yield data[mask.to(data.device)]

    def backward(self, per_example_loss: torch.Tensor) -> None:
        """Backward of the mean per-example loss (shape ``(B,)``) in the way the grad-sample mode needs."""
        if per_example_loss.dim() != 1:
            raise ValueError(f"per_example_loss must have shape (B,), got {tuple(per_example_loss.shape)}")
        if self.grad_sample_mode == "ghost":
            from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

            DPTensorFastGradientClipping(self.module, self.optimizer, per_example_loss, "mean").backward()
        else:
            per_example_loss.mean().backward()

    def step(self) -> None:
        """``optimizer.step()`` and count the step."""
        self.optimizer.step()
        self.steps_taken += 1

    def noise_only_step(self) -> None:
        """Step for an empty Poisson draw: gradient = N(0, σ²C²) / expected_batch_size, as Opacus would add."""
        opt = self.optimizer
        for p in opt.params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)  # one (empty) iteration
            p.summed_grad = torch.zeros_like(p)
        opt.add_noise()
        opt.scale_grad()
        opt.original_optimizer.step()
        for p in opt.params:
            p.grad_sample = None
            p.summed_grad = None
            p.grad = None
        self.steps_taken += 1

    def event(self, steps: int | None = None) -> GaussianEvent:
        """The DP event of ``steps`` Poisson-subsampled Gaussian steps (default: steps taken so far)."""
        return GaussianEvent(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                             steps=self.steps_taken if steps is None else int(steps))


def make_private(*, module: nn.Module, optimizer: torch.optim.Optimizer, dataset_size: int, batch_size: int,
                 noise_multiplier: float, max_grad_norm: float, grad_sample_mode: str = "functorch",
                 generator: torch.Generator | None = None, secure_mode: bool = False,
                 allow_unverified_mode: bool = False) -> PrivateTraining:
    """Wrap ``module`` and ``optimizer`` for DP-SGD (per-example L2 clip ``max_grad_norm``, noise σ·C per step).

    ``module`` must take batched inputs along dim 0 and return per-example outputs (wrap a diffusers UNet in
    :class:`EpsilonModel`; a bare ``UNet2DModel`` is wrapped automatically). ``optimizer`` must be over
    ``module.parameters()``. ``generator`` seeds both the Poisson sampling and the noise (reproducible
    experiments); ``secure_mode=True`` uses Opacus' secure RNG (needs ``torchcsprng``) and draws the sampling
    seed from the OS CSPRNG.
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {grad_sample_mode!r}")
    if grad_sample_mode not in VERIFIED_MODES and not allow_unverified_mode:
        raise UnverifiedGradSampleMode(
            f"grad_sample_mode={grad_sample_mode!r} gave wrong per-sample gradients on diffusers UNet2DModel "
            f"(see dp/dpsgd.py); use 'functorch' or pass allow_unverified_mode=True for experiments")
    for name, v in (("dataset_size", dataset_size), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if batch_size > dataset_size:
        raise ValueError(f"batch_size={batch_size} > dataset_size={dataset_size} (sample rate would exceed 1)")
    if not (noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if not (max_grad_norm > 0):
        raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
    if type(module).__name__ == "UNet2DModel":
        module = EpsilonModel(module)
    if secure_mode:
        seed = int.from_bytes(os.urandom(8), "little")
        generator = torch.Generator().manual_seed(seed)
    if grad_sample_mode == "ghost":
        from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizerFastGradientClipping

        gsm = GradSampleModuleFastGradientClipping(module, batch_first=True, loss_reduction="mean",
                                                   force_functorch=True,
                                                   max_grad_norm=max_grad_norm, use_ghost_clipping=True)
        opt_cls = DPOptimizerFastGradientClipping
    else:
        gsm = GradSampleModule(module, batch_first=True, loss_reduction="mean",
                               force_functorch=(grad_sample_mode == "functorch"))
        opt_cls = DPOptimizer
    dpo = opt_cls(optimizer, noise_multiplier=float(noise_multiplier), max_grad_norm=float(max_grad_norm),
                  expected_batch_size=batch_size, loss_reduction="mean",
                  generator=None if secure_mode else generator, secure_mode=secure_mode)
    return PrivateTraining(module=gsm, optimizer=dpo, dataset_size=dataset_size, batch_size=batch_size,
                           noise_multiplier=float(noise_multiplier), max_grad_norm=float(max_grad_norm),
                           grad_sample_mode=grad_sample_mode, generator=generator)
