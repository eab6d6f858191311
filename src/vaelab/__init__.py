"""vaelab: train and use autoencoders and variational autoencoders on images.

The public API, mirroring the `vaelab` command one to one::

    import vaelab
    vaelab.train("runs/vae2", model="vae", latent_dim=2, epochs=20)
    model = vaelab.load("runs/vae2")                 # eval mode, weights from safetensors
    images, labels = vaelab.load_dataset("mnist-mini", split="test")
    vaelab.sample("runs/vae2", n=64, out="samples.png")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vaelab.apps.anomaly import anomaly_fit, anomaly_score, load_detector
    from vaelab.apps.anomaly_benchmark import anomaly_benchmark
    from vaelab.apps.caches import cache_clear, cache_list
    from vaelab.apps.cluster import cluster
    from vaelab.apps.compress import compress, decompress
    from vaelab.apps.demo import demo
    from vaelab.apps.denoise import denoise
    from vaelab.apps.embed import embed
    from vaelab.apps.measure import evaluate
    from vaelab.apps.run_report import report
    from vaelab.apps.serve import create_app, serve
    from vaelab.apps.steer import attribute, edit, traverse
    from vaelab.apps.visualize import interpolate, latent_grid, latent_plot, reconstruct, sample
    from vaelab.checkpoint import load
    from vaelab.config import ModelConfig, TrainConfig
    from vaelab.data import load_dataset, load_images
    from vaelab.errors import VaelabError
    from vaelab.estimators import AnomalyDetector, LatentEncoder
    from vaelab.models import AE, VAE, ModelOutput, build_model
    from vaelab.training import TrainingDivergedError, train

_EXPORTS = {  # name -> the module that defines it, imported on first use
    "AE": "vaelab.models",
    "VAE": "vaelab.models",
    "AnomalyDetector": "vaelab.estimators",
    "LatentEncoder": "vaelab.estimators",
    "ModelConfig": "vaelab.config",
    "ModelOutput": "vaelab.models",
    "TrainConfig": "vaelab.config",
    "TrainingDivergedError": "vaelab.training",
    "VaelabError": "vaelab.errors",
    "anomaly_benchmark": "vaelab.apps.anomaly_benchmark",
    "anomaly_fit": "vaelab.apps.anomaly",
    "anomaly_score": "vaelab.apps.anomaly",
    "attribute": "vaelab.apps.steer",
    "build_model": "vaelab.models",
    "cache_clear": "vaelab.apps.caches",
    "cache_list": "vaelab.apps.caches",
    "cluster": "vaelab.apps.cluster",
    "compress": "vaelab.apps.compress",
    "create_app": "vaelab.apps.serve",
    "decompress": "vaelab.apps.compress",
    "demo": "vaelab.apps.demo",
    "denoise": "vaelab.apps.denoise",
    "edit": "vaelab.apps.steer",
    "embed": "vaelab.apps.embed",
    "evaluate": "vaelab.apps.measure",
    "interpolate": "vaelab.apps.visualize",
    "latent_grid": "vaelab.apps.visualize",
    "latent_plot": "vaelab.apps.visualize",
    "load": "vaelab.checkpoint",
    "load_dataset": "vaelab.data",
    "load_detector": "vaelab.apps.anomaly",
    "load_images": "vaelab.data",
    "reconstruct": "vaelab.apps.visualize",
    "report": "vaelab.apps.run_report",
    "sample": "vaelab.apps.visualize",
    "serve": "vaelab.apps.serve",
    "train": "vaelab.training",
    "traverse": "vaelab.apps.steer",
}

__all__ = [
    "AE",
    "VAE",
    "AnomalyDetector",
    "LatentEncoder",
    "ModelConfig",
    "ModelOutput",
    "TrainConfig",
    "TrainingDivergedError",
    "VaelabError",
    "anomaly_benchmark",
    "anomaly_fit",
    "anomaly_score",
    "attribute",
    "build_model",
    "cache_clear",
    "cache_list",
    "cluster",
    "compress",
    "create_app",
    "decompress",
    "demo",
    "denoise",
    "edit",
    "embed",
    "evaluate",
    "interpolate",
    "latent_grid",
    "latent_plot",
    "load",
    "load_dataset",
    "load_detector",
    "load_images",
    "reconstruct",
    "report",
    "sample",
    "serve",
    "train",
    "traverse",
]


def __getattr__(name: str) -> Any:
    """Each name is imported from its module when first used, so that `import vaelab` (and every
    `vaelab` command) loads only what it needs: `vaelab sample` never imports scikit-learn."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vaelab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
