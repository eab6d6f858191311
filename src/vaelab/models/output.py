"""The one return type of every model's forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelOutput:
    """What a forward pass computed; per-image terms are in nats (bernoulli, pixelcnn) or pixel-sum
    units (l1, l2)."""

    z: torch.Tensor  # the latent that was decoded, [B, D] (iwae: the first of the K draws)
    mu: torch.Tensor | None  # posterior mean (VAE), [B, D]
    log_var: torch.Tensor | None  # posterior log sigma^2 (VAE), [B, D]
    recon: torch.Tensor  # reconstruction loss per image, summed over pixels, [B]
    kl: torch.Tensor  # KL(q(z|x) || N(0, I)) per image (zeros for an AE), [B]
    loss: torch.Tensor  # scalar objective: mean over the batch of recon + beta * kl (or the iwae bound)
    reconstruction: torch.Tensor | None  # mean image E[x|z] in [0, 1] where it has a closed form, else None
