"""Build a diffusers UNet2DModel and DDPMScheduler sized for small medical/handwriting images."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel

from privfed.config import ModelConfig
from privfed.errors import ConfigError


def unet_config(cfg: ModelConfig, *, channels: int, image_size: int) -> dict[str, Any]:
    """UNet2DModel kwargs: two resolution levels for ≤ 16 px, three above (28 px → 14 → 7)."""
    c = cfg.base_channels
    if image_size % 2:
        raise ConfigError(f"image size must be even for the UNet; got {image_size}")
    if image_size <= 16:
        widths, down, up = (c, 2 * c), ["DownBlock2D", "AttnDownBlock2D"], ["AttnUpBlock2D", "UpBlock2D"]
    else:
        if image_size % 4:
            raise ConfigError(f"image sizes above 16 px must be divisible by 4; got {image_size}")
        widths = (c, 2 * c, 2 * c)
        down = ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"]
        up = ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]
    if not cfg.attention:
        down = [b.replace("Attn", "") for b in down]
        up = [b.replace("Attn", "") for b in up]
    return dict(sample_size=image_size, in_channels=channels, out_channels=channels,
                block_out_channels=widths, layers_per_block=cfg.layers_per_block,
                down_block_types=tuple(down), up_block_types=tuple(up),
                norm_num_groups=min(8, c), attention_head_dim=None if not cfg.attention else max(8, c // 4))


def build_unet(cfg: ModelConfig, *, channels: int, image_size: int) -> UNet2DModel:
    """A freshly initialised UNet2DModel (weights drawn from torch's global RNG; seed it first)."""
    return UNet2DModel(**unet_config(cfg, channels=channels, image_size=image_size))


_DECODER = ("up_blocks.", "conv_norm_out.", "conv_out.")


def trainable_parameters(model: torch.nn.Module, which: str) -> list[torch.nn.Parameter]:
    """The parameters federated training changes (``model.trainable``), in ``model.parameters()`` order: the
    update vector is their concatenation. ``all``; ``decoder``: the up blocks and the output norm and conv;
    ``norms_biases``: the weights of normalisation layers and every bias (fine-tuning few coordinates after public
    pretraining, so that DP noise is spread over fewer of them)."""
    if which == "all":
        return list(model.parameters())
    if which == "decoder":
        keep = {id(p) for n, p in model.named_parameters() if n.startswith(_DECODER)}
    elif which == "norms_biases":
        norms = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)
        keep = {id(p) for m in model.modules() if isinstance(m, norms) for p in m.parameters(recurse=False)}
        keep |= {id(p) for n, p in model.named_parameters() if n.endswith(".bias")}
    else:
        raise ConfigError(f"model.trainable must be all, decoder or norms_biases; got {which!r}")
    return [p for p in model.parameters() if id(p) in keep]


def parameter_count(cfg: ModelConfig, *, channels: int, image_size: int) -> int:
    """Length of an update vector: the number of :func:`trainable_parameters` of :func:`build_unet`'s model,
    counted on the meta device (no memory, no RNG draws)."""
    with torch.device("meta"):
        model = build_unet(cfg, channels=channels, image_size=image_size)
    return int(sum(p.numel() for p in trainable_parameters(model, cfg.trainable)))


def build_scheduler(cfg: ModelConfig) -> DDPMScheduler:
    """The DDPM training schedule (ε-prediction)."""
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type="epsilon", clip_sample=True)


def load_unet(path) -> UNet2DModel:
    """Load a checkpoint written by ``save_pretrained`` (a folder with config.json and safetensors), on the CPU."""
    # low_cpu_mem_usage=False: otherwise diffusers warns on every load that `accelerate` is missing; that path only
    # matters for models far larger than ours
    return UNet2DModel.from_pretrained(path, low_cpu_mem_usage=False)
