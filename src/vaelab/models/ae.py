"""The plain autoencoder: x -> z = encoder(x) -> decoder(z), trained on a pixel loss."""

from __future__ import annotations

import functools

import torch
from torch import nn

from vaelab import distributions
from vaelab.config import ModelConfig
from vaelab.device import model_device
from vaelab.errors import VaelabError
from vaelab.models.checks import check_image_values, check_images, check_latents
from vaelab.models.output import ModelOutput
from vaelab.nets import build_decoder, build_encoder


class AE(nn.Module):
    """Deterministic autoencoder. Images are [B, C, H, W] in [0, 1]; latents [B, latent_dim]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config, config.latent_dim)
        # The decoder is built (and registered) before the pixel distribution: weight initialization
        # draws, and saved optimizer state follows, in that order (as in vaelab 0.1.0).
        self.decoder = build_decoder(config, distributions.param_channels(config))
        self.pixels = distributions.for_model(config)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latent code z of each image, [B, D]."""
        check_images(self.config, x)
        return self.encoder(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic embedding of each image (z itself for an AE), [B, D]. Values outside
        [0, 1] are refused (8-bit or normalized images would embed silently wrong)."""
        z = self.encode(x)
        check_image_values(x)
        return z

    def logits(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Pixel logits for latents z, [B, C, H, W] (Bernoulli pixels; x is not needed)."""
        if not hasattr(self.pixels, "logits"):
            raise VaelabError(f"the {self.pixels.name} loss has no pixel logits; use decode for images")
        return self.pixels.logits(x, self.decoder(z))

    def reconstruction_loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The pixel loss of `target` given z, [B]."""
        return self.pixels.loss(target, self.decoder(z))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean image in [0, 1] for latents z."""
        check_latents(self.config, z)
        return self.pixels.mean(self.decoder(z))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode n latents drawn from N(0, I). An AE has no prior, so expect poor images: that is the point."""
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=model_device(self))
        return self.decode(z)

    def generate(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images for latents z: their mean images (an AE's decoder draws nothing; `generator` is
        accepted so that AEs and VAEs are called alike)."""
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
        z = self.encode(x)
        params = self.decoder(z)
        recon = self.pixels.loss(x if target is None else target, params)
        return ModelOutput(
            z=z, mu=None, log_var=None, recon=recon, kl=torch.zeros_like(recon), loss=recon.mean(),
            mean_image=functools.partial(self.pixels.mean, params.detach()),
        )  # fmt: skip
