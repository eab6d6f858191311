"""vaelab: train and use autoencoders and variational autoencoders on images.

The public API, mirroring the `vaelab` command one to one::

    import vaelab
    vaelab.train("runs/vae2", model="vae", latent_dim=2, epochs=20)
    model = vaelab.load("runs/vae2")                 # eval mode, weights from safetensors
    images, labels = vaelab.load_dataset("mnist-mini", split="test")
    vaelab.sample("runs/vae2", n=64, out="samples.png")
"""

from vaelab.apps.anomaly import anomaly_fit, anomaly_score, load_detector
from vaelab.apps.anomaly_benchmark import anomaly_benchmark
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
