"""The plain autoencoder: x -> z = encoder(x) -> logits = decoder(z), trained on a pixel loss."""

from __future__ import annotations

import torch
from torch import nn

from vaelab.config import ModelConfig
from vaelab.likelihoods import PIXEL_LOSSES, mean_image
from vaelab.models.output import ModelOutput
from vaelab.nets import build_decoder, build_encoder


class AE(nn.Module):
    """Deterministic autoencoder. Images are [B, C, H, W] in [0, 1]; latents [B, latent_dim]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config, config.latent_dim)
        self.decoder = build_decoder(config)
        self.pixel_loss = PIXEL_LOSSES[config.loss]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latent code z of each image, [B, D]."""
        return self.encoder(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic embedding of each image (z itself for an AE), [B, D]."""
        return self.encoder(x)

    def logits(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Pixel logits for latents z, [B, C, H, W] (`target` is unused: kept so every model has
        the VAE's signature)."""
        return self.decoder(z)

    def reconstruction_loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The pixel loss of `target` given z, [B]."""
        return self.pixel_loss(self.decoder(z), target)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean image in [0, 1] for latents z."""
        return mean_image(self.decoder(z))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode n latents drawn from N(0, I). An AE has no prior, so expect poor images: that is the point."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        return self.decode(z)

    def forward(
        self,
        x: torch.Tensor,
        target: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        kl_weight: float | None = None,
    ) -> ModelOutput:
        """Encode x, decode, and score against `target` (x itself unless denoising).

        `generator` and `kl_weight` are accepted so every model has one signature; an AE draws
        nothing and has no KL.
        """
        z = self.encoder(x)
        logits = self.decoder(z)
        recon = self.pixel_loss(logits, x if target is None else target)
        kl = torch.zeros_like(recon)
        return ModelOutput(logits=logits, z=z, mu=None, log_var=None, recon=recon, kl=kl, loss=recon.mean())
