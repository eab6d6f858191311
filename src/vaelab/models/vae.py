"""The variational autoencoder (Kingma & Welling, 2014).

The encoder outputs the mean and log-variance of q(z|x); z = mu + sigma * eps keeps the sample
differentiable; the loss is the negative ELBO with a weight beta on the KL to the prior N(0, I):
    loss = E_q[-log p(x|z)] + beta * KL(q(z|x) || N(0, I)),  averaged over the batch.
"""

from __future__ import annotations

import torch
from torch import nn

from vaelab.config import ModelConfig
from vaelab.gaussian import clamp_log_var, kl_to_standard_normal, reparameterize
from vaelab.likelihoods import PIXEL_LOSSES, mean_image
from vaelab.models.output import ModelOutput
from vaelab.nets import build_decoder, build_encoder


class VAE(nn.Module):
    """Gaussian-posterior VAE. Images are [B, C, H, W] in [0, 1]; latents [B, latent_dim]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config, 2 * config.latent_dim)  # mu and log sigma^2
        self.decoder = build_decoder(config)
        self.pixel_loss = PIXEL_LOSSES[config.loss]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior (mu, log_var) of each image, each [B, D]."""
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        return mu, clamp_log_var(log_var)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean of each image, [B, D]."""
        return self.encode(x)[0]

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel logits for latents z, [B, C, H, W]."""
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean image in [0, 1] for latents z."""
        return mean_image(self.decoder(z))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode n latents drawn from the prior N(0, I): new images."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        return self.decode(z)

    def forward(
        self, x: torch.Tensor, target: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> ModelOutput:
        """One-sample ELBO of x, scored against `target` (x itself unless denoising)."""
        mu, log_var = self.encode(x)
        z = reparameterize(mu, log_var, generator)
        logits = self.decoder(z)
        recon = self.pixel_loss(logits, x if target is None else target)
        kl = kl_to_standard_normal(mu, log_var).sum(1)
        loss = (recon + self.config.beta * kl).mean()
        return ModelOutput(logits=logits, z=z, mu=mu, log_var=log_var, recon=recon, kl=kl, loss=loss)
