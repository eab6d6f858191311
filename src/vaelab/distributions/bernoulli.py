"""Factorized Bernoulli pixels: p(x | z) = prod_i p_i^x_i (1 - p_i)^(1 - x_i), p = sigmoid(logits).

The exact likelihood of 0/1 images. On greyscale images the same cross-entropy is still used (as
in most VAE code) but it is not a normalized density: its least value is the image's own entropy
(`entropy_floor`), not 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vaelab.distributions.base import PixelDistribution


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits summed over pixels: -log p(x|z) in nats, [B]."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def entropy_floor(x: torch.Tensor) -> torch.Tensor:
    """The least Bernoulli loss any logits reach on images x, [B]: their own entropy sum_i H(x_i),
    0 for 0/1 images but growing with every grey pixel of a greyscale one."""
    x = x.clamp(0, 1)
    return -(torch.special.xlogy(x, x) + torch.special.xlogy(1 - x, 1 - x)).flatten(1).sum(1)


class Bernoulli(PixelDistribution):
    """Independent Bernoulli pixels; params are their logits [B, C, H, W]."""

    name = "bernoulli"

    def logits(self, x: torch.Tensor | None, params: torch.Tensor) -> torch.Tensor:
        """The logit of every pixel (x is not needed: each pixel depends on z alone)."""
        return params

    def loss(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return bernoulli_nll(params, x)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(params), generator=generator)
