"""The one return type of every model's forward pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class ModelOutput:
    """What a forward pass computed; per-image terms are in nats (bernoulli, pixelcnn) or pixel-sum
    units (l1, l2). The mean image is computed when first asked for (`reconstruction`): a training
    step never asks, and spares its kernels."""

    z: torch.Tensor  # the latent that was decoded, [B, D] (iwae: the first of the K draws)
    mu: torch.Tensor | None  # posterior mean (VAE), [B, D]
    log_var: torch.Tensor | None  # posterior log sigma^2 (VAE), [B, D]
    recon: torch.Tensor  # reconstruction loss per image, summed over pixels, [B]
    kl: torch.Tensor  # KL(q(z|x) || N(0, I)) per image (zeros for an AE), [B]
    loss: torch.Tensor  # scalar objective: mean over the batch of recon + beta * kl (or the iwae bound)
    mean_image: Callable[[], torch.Tensor] | None = field(default=None, repr=False)  # computes E[x|z]
    _reconstruction: torch.Tensor | None = field(default=None, init=False, repr=False)

    @property
    def reconstruction(self) -> torch.Tensor | None:
        """The mean image E[x|z] in [0, 1], [B, C, H, W], where it has a closed form, else None."""
        if self._reconstruction is None and self.mean_image is not None:
            self._reconstruction = self.mean_image()
        return self._reconstruction
