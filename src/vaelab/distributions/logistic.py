"""Discretized logistic sub-pixels (Salimans et al., 2017, PixelCNN++; also NVAE): a likelihood for
8-bit images, colour or grey.

Each sub-pixel value k in {0, ..., 255} (x = k / 255) gets the mass a logistic with location mu and
scale s puts on its bin [x - 1/510, x + 1/510]; the two end bins take the tails, so the 256
probabilities sum to exactly 1:

    P(k) = sigmoid((x + 1/510 - mu) / s) - sigmoid((x - 1/510 - mu) / s),  0 < k < 255
    P(0) = sigmoid((1/510 - mu) / s),   P(255) = 1 - sigmoid((1 - 1/510 - mu) / s)

The decoder outputs mu and log s for every sub-pixel (2 maps per image channel). Losses are nats
per image; divide by C * H * W * ln 2 for bits per dimension.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vaelab.distributions.base import PixelDistribution

LEVELS = 256
HALF_BIN = 0.5 / (LEVELS - 1)  # half a bin, in [0, 1] units
MIN_LOG_SCALE = -9.0  # s >= 1.2e-4: far narrower than one bin (3.9e-3), so no bound on quality
# log s = decoder output + LOG_SCALE_OFFSET: an untrained decoder (outputs near 0) starts at
# s = 0.05, about 13 levels, where its gradients are informative, instead of s = 1 (a flat density).
LOG_SCALE_OFFSET = -3.0


def log_sigmoid_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(a) - sigmoid(b)) for a > b, stable everywhere: on the side where both sigmoids
    are near 1 it uses sigmoid(a) - sigmoid(b) = sigmoid(-b) - sigmoid(-a)."""
    flip = (a + b) > 0
    hi, lo = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi, log_lo = F.logsigmoid(hi), F.logsigmoid(lo)
    return log_hi + torch.log(-torch.expm1((log_lo - log_hi).clamp_max(-1e-12)))


class DiscretizedLogistic(PixelDistribution):
    """Independent discretized logistic sub-pixels; params are [B, 2C, H, W]: the C location maps
    (in [0, 1] pixel units, unconstrained) then the C log-scale maps (offset by LOG_SCALE_OFFSET)."""

    name = "dlogistic"

    def __init__(self, image_channels: int) -> None:
        super().__init__(image_channels)
        # When set (the trainer's --mean-scale), `loss` keeps its value while its gradient teaches
        # the means as if every sub-pixel's scale were this (in [0, 1] pixel units).
        self.mean_scale: float | None = None

    @property
    def param_channels(self) -> int:
        return 2 * self.image_channels

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log_scale), each [B, C, H, W]."""
        mu, log_scale = params.chunk(2, dim=1)
        return mu, (log_scale + LOG_SCALE_OFFSET).clamp_min(MIN_LOG_SCALE)

    def log_prob_per_subpixel(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log P(x) of every sub-pixel, [B, C, H, W]; x is rounded to the nearest of the 256 levels."""
        return self._log_prob(x, *self.split(params))

    def _log_prob(self, x: torch.Tensor, mu: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        inv_scale = torch.exp(-log_scale)
        x = torch.round(x.clamp(0, 1) * (LEVELS - 1)) / (LEVELS - 1)
        upper = (x + HALF_BIN - mu) * inv_scale
        lower = (x - HALF_BIN - mu) * inv_scale
        inner = log_sigmoid_difference(upper, lower)
        first = F.logsigmoid(upper)  # P(0): everything below the first bin's upper edge
        last = F.logsigmoid(-lower)  # P(255): everything above the last bin's lower edge
        return torch.where(x < HALF_BIN, first, torch.where(x > 1 - HALF_BIN, last, inner))

    def loss(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        if not (self.mean_scale and torch.is_grad_enabled()):
            return -self.log_prob_per_subpixel(x, params).flatten(1).sum(1)
        # Learned scales give a sub-pixel the model is unsure of (a shape's outline) a wide scale,
        # and so a weak gradient for its mean: the means there learn slowly and the mean image is
        # a blur (the effect Seitzer et al., 2022, describe for Gaussians). Here the value is the
        # true -log p(x|z); its gradient reaches the scales through the true term (means held)
        # and the means through a term with every scale at mean_scale, whose value is cancelled.
        mu, log_scale = self.split(params)
        true = -self._log_prob(x, mu.detach(), log_scale).flatten(1).sum(1)
        held = torch.full_like(log_scale, math.log(self.mean_scale))
        fixed = -self._log_prob(x, mu, held).flatten(1).sum(1)
        return true + (fixed - fixed.detach())

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x] of each sub-pixel, in closed form: the mean of the logistic clamped to [0, 1],
        1 - s * (softplus((1 - mu) / s) - softplus(-mu / s)), which the 256 bins match to within a
        bin's width. Where the model is unsure (large s) it lies between mu and 1/2, as it should."""
        mu, log_scale = self.split(params)
        scale = torch.exp(log_scale)
        return (1 - scale * (F.softplus((1 - mu) / scale) - F.softplus(-mu / scale))).clamp(0, 1)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mu, log_scale = self.split(params)
        u = torch.rand(mu.shape, generator=generator, device=mu.device).clamp(1e-6, 1 - 1e-6)
        x = mu + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))  # logistic draw
        return torch.round(x.clamp(0, 1) * (LEVELS - 1)) / (LEVELS - 1)


def bits_per_dim(nats_per_image: float, dims: int) -> float:
    """Nats per image to bits per sub-pixel: the unit of image likelihoods (CIFAR-10, ImageNet)."""
    return nats_per_image / (dims * math.log(2))
