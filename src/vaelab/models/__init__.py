"""Models: one file each, built from a ModelConfig."""

from __future__ import annotations

from vaelab.config import ModelConfig
from vaelab.models.ae import AE
from vaelab.models.output import ModelOutput
from vaelab.models.vae import VAE

MODEL_CLASSES: dict[str, type[AE] | type[VAE]] = {"ae": AE, "vae": VAE}

__all__ = ["AE", "MODEL_CLASSES", "VAE", "ModelOutput", "build_model"]


def build_model(config: ModelConfig) -> AE | VAE:
    """Build the network a config describes, untrained. "auto" settings resolve as for greyscale
    images (ModelConfig.resolved); the model keeps that resolved copy, `config` is not changed."""
    resolved = config.resolved()
    return MODEL_CLASSES[resolved.model](resolved)
