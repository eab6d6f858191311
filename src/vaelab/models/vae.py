"""The variational autoencoder (Kingma & Welling, 2014).

The encoder outputs the mean and log-variance of q(z|x); z = mu + sigma * eps keeps the sample
differentiable. The decoder maps z to the parameters of a pixel distribution p(x|z)
(vaelab.distributions). Two objectives, both averaged over the batch:

* elbo: E_q[-log p(x|z)] + beta * KL(q(z|x) || N(0, I)). With free bits (Kingma et al., 2016)
  each latent dimension's batch-averaged KL below the floor costs nothing, so no unit collapses.
* iwae (Burda et al., 2015): -log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) with K draws per image,
  a tighter bound than the ELBO (the same estimator vaelab.evaluation uses for the NLL).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from vaelab import distributions
from vaelab.config import ModelConfig
from vaelab.device import model_device
from vaelab.errors import VaelabError
from vaelab.gaussian import clamp_log_var, kl_to_standard_normal, reparameterize
from vaelab.importance import importance_log_weights, log_mean_exp
from vaelab.models.checks import check_image_values, check_images, check_latents
from vaelab.models.output import ModelOutput
from vaelab.nets import build_decoder, build_encoder


class VAE(nn.Module):
    """Gaussian-posterior VAE. Images are [B, C, H, W] in [0, 1]; latents [B, latent_dim]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config, 2 * config.latent_dim)  # mu and log sigma^2
        # The decoder is built (and registered) before the pixel distribution: weight initialization
        # draws, and saved optimizer state follows, in that order (as in vaelab 0.1.0).
        self.decoder = build_decoder(config, distributions.param_channels(config))
        self.pixels = distributions.for_model(config)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior (mu, log_var) of each image, each [B, D]."""
        check_images(self.config, x)
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        return mu, clamp_log_var(log_var)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean of each image, [B, D]. Values outside [0, 1] are refused (8-bit or
        normalized images would embed silently wrong)."""
        mu = self.encode(x)[0]
        check_image_values(x)
        return mu

    def logits(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Pixel logits given latents z, [B, C, H, W], for Bernoulli pixels. A pixelcnn decoder
        predicts each pixel of `x` from the pixels before it, so it needs x; a factorized one not."""
        if not hasattr(self.pixels, "logits"):
            raise VaelabError(f"the {self.pixels.name} loss has no pixel logits; use decode for images")
        return self.pixels.logits(x, self.decoder(z))

    def reconstruction_loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The pixel loss of `target` given z, [B]: -log p(x|z) in nats for bernoulli and pixelcnn."""
        return self.pixels.loss(target, self.decoder(z))

    def decode(
        self, z: torch.Tensor, draws: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The mean image E[x|z] in [0, 1] for latents z.

        A pixelcnn decoder has no closed form: pass `draws` to estimate the mean as the average of
        that many images drawn with `generator` (each costs one network pass per pixel).
        """
        check_latents(self.config, z)
        params = self.decoder(z)
        if self.pixels.closed_form_mean:
            return self.pixels.mean(params)
        if draws is None or draws < 1:
            raise VaelabError(
                f"a {self.pixels.name} decoder has no closed-form mean image: pass draws=N (and a generator) "
                "to average N drawn images, or call sample"
            )
        drawn = self.pixels.sample(params.repeat_interleave(draws, dim=0), generator)
        return drawn.view(len(z), draws, *drawn.shape[1:]).mean(1)

    def sample(
        self, n: int, generator: torch.Generator | None = None, draw: bool | None = None
    ) -> torch.Tensor:
        """n new images from latents drawn from the prior N(0, I).

        draw=False: the mean image of each p(x|z) (smooth; needs a closed-form mean); draw=True:
        pixels drawn from p(x|z) (0/1 images for Bernoulli pixels). None: the mean where it has a
        closed form, else drawn (pixelcnn: one pass per pixel).
        """
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=model_device(self))
        return self.generate(z, generator, draw)

    def generate(
        self, z: torch.Tensor, generator: torch.Generator | None = None, draw: bool | None = None
    ) -> torch.Tensor:
        """Images for latents z, as in `sample` (the mean image, or pixels drawn from p(x|z))."""
        check_latents(self.config, z)
        params = self.decoder(z)
        if draw is None:
            draw = not self.pixels.closed_form_mean
        return self.pixels.sample(params, generator) if draw else self.pixels.mean(params)

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
        kl = kl_dims.sum(1)  # [B]
        mean_image = None
        if self.config.objective == "iwae":
            k = self.config.iw_samples
            log_w, log_px_z, z = importance_log_weights(
                target, mu, log_var, lambda xs, zs: -self.reconstruction_loss(zs, xs), k, generator
            )
            loss = -log_mean_exp(log_w).mean()
            recon = -log_px_z.mean(1)
        else:
            z = reparameterize(mu, log_var, generator)
            params = self.decoder(z)
            recon = self.pixels.loss(target, params)
            weight = self.config.beta if kl_weight is None else kl_weight
            if self.config.free_bits > 0:
                kl_term = kl_dims.mean(0).clamp_min(self.config.free_bits).sum()
            else:
                kl_term = kl.mean()
            loss = recon.mean() + weight * kl_term
            if self.pixels.closed_form_mean:
                mean_image = functools.partial(self.pixels.mean, params.detach())
        return ModelOutput(
            z=z,
            mu=mu,
            log_var=log_var,
            recon=recon,
            kl=kl,
            loss=loss,
            mean_image=mean_image,
        )
