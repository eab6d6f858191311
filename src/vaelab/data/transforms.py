"""Pixel transforms applied to uint8 batches on the training device."""

from __future__ import annotations

import torch


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] in 0..255 -> float32 in [0, 1]."""
    return images.float().div_(255.0)


def binarize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw each pixel as 0/1 with probability equal to its intensity (float images in [0, 1])."""
    return torch.bernoulli(images, generator=generator)


def binarize_uint8(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One fixed binarization of a uint8 set, returned as uint8 0/255 (static binarization)."""
    return (binarize(to_unit(images), generator) * 255).to(torch.uint8)
