"""What the models are given, checked before any layer sees it: a wrong shape or type named with
its fix, where the layers would fail with a matrix-size or dtype error several frames deep. The
checks read shapes and types only, so they cost no device synchronisation; only `embed`, the way
out for embeddings, also reads the values (one synchronisation per batch)."""

from __future__ import annotations

import torch

from vaelab.config import ModelConfig
from vaelab.errors import VaelabError


def check_images(config: ModelConfig, x: torch.Tensor) -> None:
    """Raise VaelabError unless `x` is a float batch [B, C, H, W] of the model's image shape."""
    shape = (config.image_channels, config.image_height, config.image_width)
    expected = "x".join(map(str, shape))
    if not isinstance(x, torch.Tensor):
        raise VaelabError(
            f"images must be a torch.Tensor [B, C, H, W] of floats in [0, 1], got {type(x).__name__}; "
            "pass torch.from_numpy(array).float() / 255 for 8-bit images"
        )
    if not x.is_floating_point():
        raise VaelabError(
            f"images must be floats in [0, 1], got {str(x.dtype).removeprefix('torch.')}; "
            "pass images.float() / 255 for 8-bit images"
        )
    if x.dim() != 4 or tuple(x.shape[1:]) != shape:
        if tuple(x.shape) == shape:
            fix = "add a batch dimension (x[None])"
        elif x.dim() == 4 and x.shape[1] != shape[0]:
            fix = f"convert them to {'grey' if shape[0] == 1 else 'RGB'}, {shape[0]} channel(s)"
        else:
            fix = (
                "resize them (vaelab.load_dataset(..., image_size=N) or vaelab.data.resize_uint8), or "
                "train a model on images of this size"
            )
        raise VaelabError(
            f"this model takes a batch of {expected} images [B, C, H, W], got shape {list(x.shape)}; {fix}"
        )


VALUE_SLACK = 1e-3  # rounding past 0 or 1 that is not a mistake


def check_image_values(x: torch.Tensor) -> None:
    """Raise VaelabError unless every value of `x` is in [0, 1]: 8-bit values (0-255) or normalized
    ones (ImageNet's mean and std, [-1, 1]) encode to latents far from any image's, silently."""
    if x.numel() == 0:
        return
    low, high = (float(v) for v in torch.aminmax(x.detach()))
    if not (low >= -VALUE_SLACK and high <= 1 + VALUE_SLACK):  # NaN fails too
        raise VaelabError(
            f"images must be floats in [0, 1], got values from {low:.4g} to {high:.4g}; divide 8-bit "
            "images by 255 and undo any normalization"
        )


def check_latents(config: ModelConfig, z: torch.Tensor) -> None:
    """Raise VaelabError unless `z` is a float batch of latents [B, latent_dim]."""
    if not z.is_floating_point():
        raise VaelabError(f"latents must be floats, got {str(z.dtype).removeprefix('torch.')}")
    if z.dim() != 2 or z.shape[1] != config.latent_dim:
        fix = (
            "add a batch dimension (z[None])"
            if tuple(z.shape) == (config.latent_dim,)
            else "pass one row per image"
        )
        raise VaelabError(
            f"this model's latent has {config.latent_dim} numbers, so z must be [B, {config.latent_dim}], "
            f"got shape {list(z.shape)}; {fix}"
        )
