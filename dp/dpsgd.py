"""Sample-level DP-SGD through Opacus for diffusion UNets (privacy unit: one training example).

Usage (one client's local training)::

    unet = copy.deepcopy(global_unet).train()                       # diffusers UNet2DModel, forward(xt, t)
    opt = torch.optim.Adam(unet.parameters(), lr)
    pt = make_private(module=unet, optimizer=opt, dataset_size=len(x), batch_size=64,
                      noise_multiplier=1.1, max_grad_norm=1.0, generator=g)
    for x0 in pt.batches(x, epochs=1):                              # Poisson sampling, q = batch_size / n
        pt.optimizer.zero_grad()
        if len(x0):                                                 # empty draw: step() adds noise only
            pt.backward(per_example_diffusion_loss(pt.module, scheduler, x0, generator=g))   # loss shape (B,)
        pt.optimizer.step()                                         # clip, noise, count
    event = pt.event()                                              # GaussianEvent(σ, q, steps taken)

``pt.module(xt, t)`` returns what the wrapped module returns (``UNet2DOutput`` with ``.sample`` for a bare
``UNet2DModel``; a tensor for :class:`EpsilonModel`). Every optimizer step is counted (``pt.steps_taken``), also
steps with an empty Poisson draw, which still add N(0, σ²C²) noise (plain Opacus would step *without* noise there).

Grad-sample modes (tiny ``UNet2DModel`` with attention, float64, one-example-at-a-time reference,
tests/dp/test_dpsgd.py). All three are exact (max err ~1e-15) once convolution inputs are made contiguous
(:mod:`dp.conv_layout`, applied by default); without that fix Opacus' ``hooks`` per-sample gradients are wrong by
up to ~0.13 in the mid/up-block convs and ``ghost`` per-sample norms by ~10 % (the conv sampler's ``as_strided``
assumes NCHW-contiguous input; diffusers' attention emits a channels-last view).

* ``"ghost"`` (default): Opacus ghost clipping (per-sample gradient *norms* from activations/backprops, then a
  second backward of the clip-weighted loss); never materialises per-sample gradients. Needs the per-example loss:
  call :meth:`PrivateTraining.backward` (a plain ``loss.backward()`` would be unclipped — the optimizer refuses that
  step with :class:`UnclippedGradientError`).
* ``"hooks"``: Opacus' per-layer per-sample gradient samplers (materialises B × params).
* ``"functorch"``: per-layer ``torch.func`` vmap (materialises B × params; slowest on CPU).

Default = the fastest correct mode by ``benchmarks/bench_dp.py`` (see README table / benchmarks/results/dp.json).

The Opacus accountant is never used: the privacy spent is reported as :class:`~dp.events.GaussianEvent` s via
:meth:`PrivateTraining.event` and composed by :class:`dp.accountant.PrivacyAccountant`.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Iterator, Optional

import torch
from torch import nn

from dp.conv_layout import make_conv_inputs_contiguous
from dp.events import GaussianEvent

# the inputs of a UNet (noised images) never require grad; Opacus' full backward hooks warn about that each step
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")

GRAD_SAMPLE_MODES = ("ghost", "hooks", "functorch")
#: the default: fastest mode whose clipped gradients match the per-example reference (benchmarks/bench_dp.py)
DEFAULT_GRAD_SAMPLE_MODE = "ghost"
#: modes verified exact on UNet2DModel *with* contiguous conv inputs; without that fix only functorch is
VERIFIED_MODES = ("ghost", "hooks", "functorch")


class UnverifiedGradSampleMode(ValueError):
    """The grad-sample mode is known to give wrong per-sample gradients in this configuration."""


class UnclippedGradientError(RuntimeError):
    """A ghost-clipping optimizer step was attempted on gradients that did not go through per-example clipping."""


class EpsilonModel(nn.Module):
    """Wraps a diffusers ``UNet2DModel`` so that ``forward(xt, t)`` returns the predicted-noise tensor.

    Optional: :func:`make_private` also accepts a bare ``UNet2DModel`` (then ``module(xt, t).sample``).
    Both arguments are batched along dim 0 (``t`` of shape ``(B,)``), which is what Opacus needs.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(xt, t).sample


def per_example_diffusion_loss(model: nn.Module, scheduler: Any, x0: torch.Tensor, *,
                               generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM ε-prediction loss per example, shape ``(B,)``: mean over pixels of (model(x_t, t) − noise)².

    Noise and timesteps are drawn on the CPU from ``generator`` (so one seeded generator serves CPU and CUDA).
    """
    n = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    t = torch.randint(0, int(scheduler.config.num_train_timesteps), (n,), generator=generator).to(x0.device)
    xt = scheduler.add_noise(x0, noise, t)
    pred = model(xt, t)
    if hasattr(pred, "sample"):
        pred = pred.sample
    return (pred - noise).pow(2).flatten(1).mean(1)


def _safe_optimizer(base_cls):
    """DPOptimizer subclass: counts noisy steps; an optimizer step without a backward adds noise only."""

    class _Safe(base_cls):
        privfed_steps = 0
        _privfed_ghost_clipped = False
        #: optional callable(params): may add to each ``p.summed_grad`` (the sum of clipped per-example
        #: gradients) before the noise; the empirical audit inserts gradient canaries here
        privfed_before_noise = None

        def add_noise(self):
            if self.privfed_before_noise is not None:
                self.privfed_before_noise(self.params)
            super().add_noise()

        def pre_step(self, closure=None):
            ghost = hasattr(base_cls, "accumulate")
            if ghost:
                if not self._privfed_ghost_clipped:
                    for p in self.params:
                        if p.grad is not None and bool(torch.any(p.grad != 0)):
                            raise UnclippedGradientError(
                                "ghost clipping: gradients were not produced by PrivateTraining.backward(per_example_"
                                "loss); a plain loss.backward() is not clipped per example. Step refused.")
                        if p.grad is None:
                            p.grad = torch.zeros_like(p)
            elif all(p.grad_sample is None for p in self.params):
                for p in self.params:  # no backward since zero_grad(): an empty Poisson batch
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            ok = super().pre_step(closure)
            self._privfed_ghost_clipped = False
            if ok:
                self.privfed_steps += 1
            return ok

    _Safe.__name__ = f"Counting{base_cls.__name__}"
    return _Safe


class PrivateTraining:
    """What :func:`make_private` returns; unpacks as ``module, optimizer, data_loader``.

    Attributes: ``module`` (Opacus grad-sample wrapper), ``optimizer`` (DP optimizer: clip + noise, counts steps),
    ``data_loader`` (Opacus ``DPDataLoader`` when one was given, else None; use :meth:`batches` for tensors),
    ``noise_multiplier`` σ, ``max_grad_norm`` C (L2, per example), ``sample_rate`` q (Poisson, per step).
    """

    def __init__(self, *, module, optimizer, dataset_size: int, batch_size: int, noise_multiplier: float,
                 max_grad_norm: float, grad_sample_mode: str, generator: Optional[torch.Generator],
                 data_loader=None) -> None:
        self.module, self.optimizer, self.data_loader = module, optimizer, data_loader
        self.dataset_size, self.batch_size = dataset_size, batch_size
        self.noise_multiplier, self.max_grad_norm = noise_multiplier, max_grad_norm
        self.grad_sample_mode, self.generator = grad_sample_mode, generator

    def __iter__(self):
        return iter((self.module, self.optimizer, self.data_loader))

    @property
    def sample_rate(self) -> float:
        """Poisson inclusion probability per step, q = batch_size / dataset_size."""
        return self.batch_size / self.dataset_size

    @property
    def steps_per_epoch(self) -> int:
        """Steps per pass: ``dataset_size // batch_size`` (at least 1)."""
        return max(1, self.dataset_size // self.batch_size)

    @property
    def steps_taken(self) -> int:
        """Noisy optimizer steps taken so far (empty-batch steps included): the event's ``steps``."""
        return self.optimizer.privfed_steps

    def batches(self, data: torch.Tensor, epochs: int) -> Iterator[torch.Tensor]:
        """Poisson-sampled batches of ``data`` rows: each row is included independently with probability q.

        ``epochs * steps_per_epoch`` batches; a batch may be empty (shape ``(0, ...)``): still call
        ``optimizer.zero_grad(); optimizer.step()`` (noise-only step) so it is released and counted.
        """
        if data.shape[0] != self.dataset_size:
            raise ValueError(f"data has {data.shape[0]} rows but make_private was told dataset_size="
                             f"{self.dataset_size}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
        for _ in range(epochs * self.steps_per_epoch):
            mask = torch.rand(self.dataset_size, generator=self.generator) < self.sample_rate
            yield data[mask.to(data.device)]

    def backward(self, per_example_loss: torch.Tensor, *, multiplicity: int = 1) -> None:
        """Backward of the mean of ``per_example_loss`` (shape ``(B,)``) as the grad-sample mode needs.

        ghost: two passes (norms, then the clip-weighted loss); hooks/functorch: ``mean().backward()``.

        ``multiplicity`` K > 1 (noise multiplicity, Dockhorn et al. 2022): the loss has K·B rows, row ``k·B + i``
        being the k-th (noise, timestep) draw for example i. The K per-row gradients of one example are averaged
        *before* clipping, so the clip — and hence the sensitivity and the accounting — stays per example while
        the clipped gradient has less diffusion-loss variance. Needs per-sample gradients (hooks or functorch):
        ghost clipping only sees per-row norms, which cannot be grouped.
        """
        if not torch.is_tensor(per_example_loss) or per_example_loss.dim() != 1:
            raise ValueError(f"per_example_loss must be a tensor of shape (B,), got "
                             f"{tuple(getattr(per_example_loss, 'shape', ()))}")
        if isinstance(multiplicity, bool) or not isinstance(multiplicity, int) or multiplicity < 1:
            raise ValueError(f"multiplicity must be an int >= 1, got {multiplicity!r}")
        if multiplicity > 1:
            if self.grad_sample_mode == "ghost":
                raise ValueError("noise multiplicity needs per-sample gradients: use grad_sample_mode hooks or "
                                 "functorch (ghost clipping cannot group the K rows of one example)")
            rows = per_example_loss.shape[0]
            if rows % multiplicity:
                raise ValueError(f"per_example_loss has {rows} rows, not a multiple of multiplicity={multiplicity}")
            per_example_loss.mean().backward()
            b = rows // multiplicity
            for p in self.module.parameters():
                gs = getattr(p, "grad_sample", None)
                if gs is not None:
                    # loss_reduction="mean": each row already holds its own row's gradient (Opacus rescales)
                    p.grad_sample = gs.view(multiplicity, b, *gs.shape[1:]).mean(0)
            return
        if self.grad_sample_mode == "ghost":
            from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

            DPTensorFastGradientClipping(self.module, self.optimizer, per_example_loss, "mean").backward()
            self.optimizer._privfed_ghost_clipped = True
        else:
            per_example_loss.mean().backward()

    def step(self) -> None:
        """``optimizer.step()`` (kept for symmetry; the optimizer counts its own steps)."""
        self.optimizer.step()

    def noise_only_step(self) -> None:
        """The step of an empty Poisson draw: update with N(0, σ²C²)/expected_batch_size only; counted."""
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer.step()

    def event(self, steps: int | None = None, *, round: int | None = None) -> GaussianEvent:
        """The DP event: ``steps`` (default: steps taken) Poisson(q)-subsampled Gaussian(σ) steps."""
        return GaussianEvent(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                             steps=self.steps_taken if steps is None else int(steps), round=round)


def make_private(*, module: nn.Module, optimizer: torch.optim.Optimizer, noise_multiplier: float,
                 max_grad_norm: float, dataset_size: int | None = None, batch_size: int | None = None,
                 data_loader=None, grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
                 poisson_sampling: bool = True, generator: torch.Generator | None = None,
                 noise_generator: torch.Generator | None = None, secure_mode: bool = False,
                 contiguous_conv_inputs: bool = True, allow_unverified_mode: bool = False) -> PrivateTraining:
    """Wrap ``module``/``optimizer`` for DP-SGD: per-example L2 clip ``max_grad_norm`` (C), noise σ·C per step.

    Give either ``dataset_size`` and ``batch_size`` (then iterate :meth:`PrivateTraining.batches`) or a
    ``data_loader`` (then ``PrivateTraining.data_loader`` is an Opacus ``DPDataLoader`` over the same dataset).
    q = batch_size / dataset_size (Poisson, per step). ``module``: a diffusers ``UNet2DModel`` (or any module
    whose inputs and outputs are batched along dim 0); ``optimizer`` over ``module.parameters()``.
    ``generator`` seeds Poisson sampling and the noise (reproducible experiments; not a CSPRNG);
    ``noise_generator`` seeds only the noise. ``secure_mode=True``: Opacus' floating-point-attack-resistant noise
    (sum of four Gaussians) and a private generator for sampling and noise seeded with 64 bits from the OS CSPRNG
    (seeded generators are then refused; the global torch RNG is never used for noise).
    ``poisson_sampling=False`` is refused: the recorded events assume Poisson sampling.
    ``contiguous_conv_inputs=False`` disables the conv-layout fix (tests only: hooks/ghost are then wrong).
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {grad_sample_mode!r}")
    if not contiguous_conv_inputs and grad_sample_mode != "functorch" and not allow_unverified_mode:
        raise UnverifiedGradSampleMode(
            f"grad_sample_mode={grad_sample_mode!r} without contiguous conv inputs gives wrong per-sample gradients "
            f"on diffusers UNet2DModel (dp/conv_layout.py); pass allow_unverified_mode=True for experiments")
    if not poisson_sampling:
        raise ValueError("poisson_sampling=False is not supported: DP events are accounted as Poisson sampling")
    if data_loader is not None:
        if dataset_size is not None or batch_size is not None:
            raise ValueError("give either data_loader or dataset_size/batch_size, not both")
        dataset_size, batch_size = len(data_loader.dataset), data_loader.batch_size
        if batch_size is None:
            raise ValueError("data_loader must have a fixed batch_size (it sets the expected batch size)")
    for name, v in (("dataset_size", dataset_size), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if batch_size > dataset_size:
        raise ValueError(f"batch_size={batch_size} > dataset_size={dataset_size} (sample rate would exceed 1)")
    if not (noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier (σ = noise std / max_grad_norm) must be >= 0, got {noise_multiplier}")
    if not (max_grad_norm > 0):
        raise ValueError(f"max_grad_norm (L2 clip per example) must be > 0, got {max_grad_norm}")
    params = set(module.parameters())
    if any(p not in params for g in optimizer.param_groups for p in g["params"]):
        raise ValueError("optimizer parameters are not the module's parameters")
    if secure_mode:
        if generator is not None or noise_generator is not None:
            raise ValueError("secure_mode=True draws seeds from the OS CSPRNG; do not pass seeded generators")
        generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))
    if contiguous_conv_inputs:
        make_conv_inputs_contiguous(module)
    if grad_sample_mode == "ghost":
        from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizerFastGradientClipping

        gsm = GradSampleModuleFastGradientClipping(module, batch_first=True, loss_reduction="mean",
                                                   force_functorch=not contiguous_conv_inputs,
                                                   max_grad_norm=float(max_grad_norm), use_ghost_clipping=True)
        opt_cls = _safe_optimizer(DPOptimizerFastGradientClipping)
    else:
        gsm = GradSampleModule(module, batch_first=True, loss_reduction="mean",
                               force_functorch=(grad_sample_mode == "functorch"))
        opt_cls = _safe_optimizer(DPOptimizer)
    gsm.forbid_grad_accumulation()  # Poisson sampling: one batch per step
    noise_gen = noise_generator if noise_generator is not None else generator
    dpo = opt_cls(optimizer, noise_multiplier=float(noise_multiplier), max_grad_norm=float(max_grad_norm),
                  expected_batch_size=batch_size, loss_reduction="mean",
                  generator=noise_gen, secure_mode=secure_mode)
    dp_loader = None
    if data_loader is not None:
        from opacus.data_loader import DPDataLoader

        dp_loader = DPDataLoader(data_loader.dataset, sample_rate=batch_size / dataset_size,
                                 collate_fn=data_loader.collate_fn, generator=generator)
        dp_loader.batch_sampler.steps = max(1, dataset_size // batch_size)
    return PrivateTraining(module=gsm, optimizer=dpo, dataset_size=dataset_size, batch_size=batch_size,
                           noise_multiplier=float(noise_multiplier), max_grad_norm=float(max_grad_norm),
                           grad_sample_mode=grad_sample_mode, generator=generator, data_loader=dp_loader)
