"""Pixel losses between decoder logits and target images in [0, 1], summed over pixels: [B].

Every decoder outputs logits; the mean image is sigmoid(logits) for every loss, so decoded images
always lie in [0, 1]. Only ``bernoulli`` is a normalized likelihood (its loss is -log p(x|z) in
nats); ``l2`` and ``l1`` are distances.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def bernoulli(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits, summed over pixels: -log p(x|z) in nats, [B]."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)


def l2(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences between the mean image and the target, [B]."""
    return (torch.sigmoid(logits) - target).pow(2).flatten(1).sum(1)


def l1(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of absolute differences between the mean image and the target, [B]."""
    return (torch.sigmoid(logits) - target).abs().flatten(1).sum(1)


PIXEL_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bernoulli": bernoulli,
    "l2": l2,
    "l1": l1,
}


def bernoulli_floor(target: torch.Tensor) -> torch.Tensor:
    """The least bernoulli loss any logits reach on `target`, [B]: its own entropy sum_i H(x_i),
    which is 0 for 0/1 images but grows with every grey pixel of a greyscale one."""
    x = target.clamp(0, 1)
    return -(torch.special.xlogy(x, x) + torch.special.xlogy(1 - x, 1 - x)).flatten(1).sum(1)


def mean_image(logits: torch.Tensor) -> torch.Tensor:
    """The decoder's mean image in [0, 1]."""
    return torch.sigmoid(logits)
