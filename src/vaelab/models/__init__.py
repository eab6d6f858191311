"""Models: one file each, built from a ModelConfig."""

from __future__ import annotations

from vaelab.config import ModelConfig
from vaelab.models.ae import AE
from vaelab.models.output import ModelOutput
from vaelab.models.vae import VAE
from vaelab.nets import default_conv_channels

MODEL_CLASSES: dict[str, type[AE] | type[VAE]] = {"ae": AE, "vae": VAE}

__all__ = ["AE", "MODEL_CLASSES", "VAE", "ModelOutput", "build_model"]


def build_model(config: ModelConfig) -> AE | VAE:
    """Build the network a config describes (filling in conv channels from the image size)."""
    if config.arch in ("conv", "resnet") and not config.conv_channels:
        config.conv_channels = default_conv_channels(config.image_height, config.image_width)
    return MODEL_CLASSES[config.model](config)
