"""The variational autoencoder (Kingma & Welling, 2014).

The encoder outputs the mean and log-variance of q(z|x); z = mu + sigma * eps keeps the sample
differentiable. Two objectives, both averaged over the batch:

* elbo: E_q[-log p(x|z)] + beta * KL(q(z|x) || N(0, I)). With free bits (Kingma et al., 2016)
  each latent dimension's batch-averaged KL below the floor costs nothing, so no unit collapses.
* iwae (Burda et al., 2015): -log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) with K draws per image,
  a tighter bound than the ELBO.

With config.decoder "pixelcnn" the decoder's feature maps feed an autoregressive head (see
vaelab.autoregressive): p(x|z) is then scored in one pass with the image as its own context, and
decoding draws pixels one at a time.
"""

from __future__ import annotations

import torch
from torch import nn

from vaelab.autoregressive import AutoregressiveHead
from vaelab.config import ModelConfig
from vaelab.gaussian import clamp_log_var, kl_to_standard_normal, log_normal, reparameterize
from vaelab.importance import log_mean_exp
from vaelab.likelihoods import PIXEL_LOSSES, mean_image
from vaelab.models.output import ModelOutput
from vaelab.nets import build_decoder, build_encoder, decoder_features

DECODE_DRAWS = 8  # images drawn from an autoregressive decoder to estimate its mean image


class VAE(nn.Module):
    """Gaussian-posterior VAE. Images are [B, C, H, W] in [0, 1]; latents [B, latent_dim]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config, 2 * config.latent_dim)  # mu and log sigma^2
        self.decoder = build_decoder(config)
        self.head = (
            AutoregressiveHead(
                config.image_channels, decoder_features(config), config.ar_channels, config.ar_layers
            )
            if config.decoder == "pixelcnn"
            else None
        )
        self.pixel_loss = PIXEL_LOSSES[config.loss]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior (mu, log_var) of each image, each [B, D]."""
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        return mu, clamp_log_var(log_var)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean of each image, [B, D]."""
        return self.encode(x)[0]

    def logits(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Pixel logits of `target` given latents z, [B, C, H, W] (an autoregressive head reads the
        pixels of `target` before each one; a factorized decoder ignores `target`)."""
        features = self.decoder(z)
        return features if self.head is None else self.head(target, features)

    def reconstruction_loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The pixel loss of `target` given z, [B]: -log p(x|z) in nats for bernoulli."""
        return self.pixel_loss(self.logits(z, target), target)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean image in [0, 1] for latents z. With an autoregressive head it has no closed form:
        the average of DECODE_DRAWS images drawn from p(x|z) (with a fixed seed, so repeatable)."""
        features = self.decoder(z)
        if self.head is None:
            return mean_image(features)
        generator = torch.Generator(features.device).manual_seed(0)
        drawn, _ = self.head.generate(features.repeat_interleave(DECODE_DRAWS, dim=0), generator)
        return drawn.view(len(z), DECODE_DRAWS, *drawn.shape[1:]).mean(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode n latents drawn from the prior N(0, I): new images (with an autoregressive head,
        pixels drawn from p(x|z), so 0/1 images)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        if self.head is None:
            return self.decode(z)
        return self.head.generate(self.decoder(z), generator)[0]

    def forward(
        self,
        x: torch.Tensor,
        target: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        kl_weight: float | None = None,
    ) -> ModelOutput:
        """The objective on x, scored against `target` (x itself unless denoising).

        `kl_weight` replaces beta for this call (KL warm-up); recon and kl are always reported
        unweighted, per image.
        """
        target = x if target is None else target
        mu, log_var = self.encode(x)
        kl_dims = kl_to_standard_normal(mu, log_var)  # [B, D]
        if self.config.objective == "iwae":
            k, (batch, dim) = self.config.iw_samples, mu.shape
            z = reparameterize(
                mu.unsqueeze(1).expand(batch, k, dim), log_var.unsqueeze(1).expand(batch, k, dim), generator
            )
            targets = target.repeat_interleave(k, dim=0)  # [B*K, C, H, W]
            logits = self.logits(z.reshape(batch * k, dim), targets)
            log_px_z = -self.pixel_loss(logits, targets).view(batch, k)
            log_w = log_px_z + log_normal(z) - log_normal(z, mu.unsqueeze(1), log_var.unsqueeze(1))  # [B, K]
            loss = -log_mean_exp(log_w).mean()
            recon, logits, z = -log_px_z.mean(1), logits.view(batch, k, *logits.shape[1:])[:, 0], z[:, 0]
        else:
            z = reparameterize(mu, log_var, generator)
            logits = self.logits(z, target)
            recon = self.pixel_loss(logits, target)
            weight = self.config.beta if kl_weight is None else kl_weight
            if self.config.free_bits > 0:
                kl_term = kl_dims.mean(0).clamp_min(self.config.free_bits).sum()
            else:
                kl_term = kl_dims.sum(1).mean()
            loss = recon.mean() + weight * kl_term
        kl = kl_dims.sum(1)
        return ModelOutput(logits=logits, z=z, mu=mu, log_var=log_var, recon=recon, kl=kl, loss=loss)
