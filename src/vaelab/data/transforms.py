"""Pixel transforms applied to uint8 batches on the training device, and the coercion of arrays a
user passes in (numpy or torch, uint8 or [0, 1] floats) to one uint8 tensor."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vaelab.errors import VaelabError


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] in 0..255 -> float32 in [0, 1] (one kernel: the division promotes)."""
    return images / 255.0


def from_unit(images: torch.Tensor) -> torch.Tensor:
    """float images in [0, 1] -> uint8 0..255, each value clamped into range and rounded to the
    nearest of the 256 levels (the inverse of to_unit)."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8)


def binarize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw each pixel as 0/1 with probability equal to its intensity (float images in [0, 1])."""
    return torch.bernoulli(images, generator=generator)


def binarize_uint8(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One fixed binarization of a uint8 set, returned as uint8 0/255 (static binarization)."""
    return (binarize(to_unit(images), generator) * 255).to(torch.uint8)


def as_uint8_images(X: Any) -> torch.Tensor:
    """Images as a uint8 tensor [N, C, H, W]: uint8 arrays pass through, floats in [0, 1] are scaled."""
    images = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise VaelabError(f"expected images [N, C, H, W] (or [N, H, W]), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    if images.min() < 0 or images.max() > 1:
        raise VaelabError("float images must lie in [0, 1]; pass uint8 images or divide by 255")
    return from_unit(images)
