"""Pixel distributions p(x | z): what a decoder's output means, one small module each.

Every distribution takes the decoder's output for z (`params`) and images x [B, C, H, W] in
[0, 1], and gives:

* ``loss(x, params)``: summed over pixels, [B]; -log p(x|z) in nats when ``likelihood``;
* ``log_prob(x, params)``: -loss, only for likelihoods (l1/l2 are distances and refuse);
* ``mean(params)``: E[x | z], only where ``closed_form_mean`` (not for pixelcnn);
* ``sample(params, generator)``: images drawn from p(x|z) (likelihoods only).

``bernoulli``: factorized Bernoulli pixels; ``l2``/``l1``: distances of sigmoid(params) to x;
``dlogistic``: discretized logistic 8-bit sub-pixels (the likelihood for colour images, in bits
per dimension); ``pixelcnn``: autoregressive Bernoulli pixels (each also sees the pixels before it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vaelab.distributions.base import PixelDistribution
from vaelab.distributions.bernoulli import Bernoulli, bernoulli_nll, entropy_floor
from vaelab.distributions.distance import L1Distance, L2Distance
from vaelab.distributions.logistic import DiscretizedLogistic, bits_per_dim
from vaelab.distributions.pixelcnn import PixelCNN

if TYPE_CHECKING:
    from vaelab.config import ModelConfig

FACTORIZED: dict[str, type[PixelDistribution]] = {
    "bernoulli": Bernoulli,
    "dlogistic": DiscretizedLogistic,
    "l2": L2Distance,
    "l1": L1Distance,
}

__all__ = [
    "FACTORIZED",
    "Bernoulli",
    "DiscretizedLogistic",
    "L1Distance",
    "L2Distance",
    "PixelCNN",
    "PixelDistribution",
    "bernoulli_nll",
    "bits_per_dim",
    "entropy_floor",
    "for_model",
    "param_channels",
]


def param_channels(config: ModelConfig) -> int:
    """Channels the decoder outputs for this config's pixel distribution: its parameter maps (one
    per image channel, two for dlogistic), or for pixelcnn `ar_channels` feature maps from a conv
    decoder (an mlp decoder gives it one map per image channel)."""
    if config.decoder == "pixelcnn":
        return config.image_channels if config.arch == "mlp" else config.ar_channels
    return FACTORIZED[config.loss](config.image_channels).param_channels


def for_model(config: ModelConfig) -> PixelDistribution:
    """The pixel distribution a model config names: its loss, or the pixelcnn decoder."""
    if config.decoder == "pixelcnn":
        return PixelCNN(config.image_channels, param_channels(config), config.ar_channels, config.ar_layers)
    return FACTORIZED[config.loss](config.image_channels)
