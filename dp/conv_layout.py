"""Make convolution inputs contiguous so Opacus' conv per-sample-gradient samplers are correct on diffusers UNets.

Root cause (measured, Opacus 1.6.0, diffusers 0.42.1): diffusers' attention processor returns
``hidden_states.transpose(-1, -2).reshape(B, C, H, W)``, a *view* with channels-last strides. The following
GroupNorm/SiLU keep that layout, so the next ``nn.Conv2d`` (mid-block and up-block resnets, the up-sampler conv)
receives a non-contiguous input. Opacus' ``unfold2d`` (used by the ``hooks`` per-sample gradient sampler and by the
ghost-clipping norm sampler) pads the activation and then calls ``as_strided`` with strides computed for a
*contiguous* NCHW tensor — on a channels-last tensor it reads the wrong elements. Result: per-sample gradients off
by up to ~0.13 (float64) in exactly those convs, and ghost-clipping per-sample norms off by ~10 %, while the
ordinary (summed) gradient is right, so nothing fails loudly.

Fix: a forward pre-hook on every convolution returning ``input.contiguous()`` (a no-op for already contiguous
inputs). The convolution's output is mathematically unchanged and Opacus captures the contiguous activation.
"""

from __future__ import annotations

from torch import nn
from torch.utils.hooks import RemovableHandle

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _contiguous_pre_hook(module: nn.Module, args: tuple):
    if args and hasattr(args[0], "is_contiguous") and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def make_conv_inputs_contiguous(module: nn.Module) -> list[RemovableHandle]:
    """Register the contiguity pre-hook on every convolution in ``module``; returns the hook handles.

    Idempotent: a convolution that already has the hook is skipped. Call it before wrapping the module in an
    Opacus ``GradSampleModule`` (:func:`dp.make_private` does).
    """
    handles = []
    for m in module.modules():
        if isinstance(m, _CONV_TYPES) and not getattr(m, "_privfed_contiguous_inputs", False):
            handles.append(m.register_forward_pre_hook(_contiguous_pre_hook))
            m._privfed_contiguous_inputs = True
    return handles
