"""The one return type of every model's forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelOutput:
    """What a forward pass computed; per-image terms are in nats (bernoulli) or pixel-sum units."""

    logits: (
        torch.Tensor
    )  # pixel logits the loss scored, [B, C, H, W] (pixelcnn: each given the true pixels before it)
    z: torch.Tensor  # the latent that was decoded, [B, D]
    mu: torch.Tensor | None  # posterior mean (VAE), [B, D]
    log_var: torch.Tensor | None  # posterior log sigma^2 (VAE), [B, D]
    recon: torch.Tensor  # reconstruction loss per image, summed over pixels, [B]
    kl: torch.Tensor  # KL(q(z|x) || N(0, I)) per image (zeros for an AE), [B]
    loss: torch.Tensor  # scalar objective: mean over the batch of recon + beta * kl

    @property
    def reconstruction(self) -> torch.Tensor:
        """sigmoid(logits) in [0, 1], [B, C, H, W]: the mean reconstruction of a factorized decoder
        (for pixelcnn, next-pixel predictions given the true image; use model.decode for images)."""
        return torch.sigmoid(self.logits)
