"""The diffusion model: a diffusers UNet2DModel with a DDPM noise schedule."""

from privfed.models.unet import build_unet, build_scheduler, load_unet, parameter_count, trainable_parameters, \
    unet_config
from privfed.models.sampling import sample_images
from privfed.models.loss import diffusion_loss

__all__ = ["build_unet", "build_scheduler", "load_unet", "parameter_count", "trainable_parameters", "unet_config",
           "sample_images", "diffusion_loss"]
