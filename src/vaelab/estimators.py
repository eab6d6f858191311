"""scikit-learn estimators over a trained run, so its latent space drops into Pipelines, grid
searches and anything else that takes a transformer.

`LatentEncoder(run).fit().transform(X)` gives the latent mean of every image (z for an AE), as
float32 [N, D]; images X are uint8 or [0, 1] float arrays [N, C, H, W] (or [N, H, W]). Clustering
the latents is then plain scikit-learn::

    from sklearn.cluster import KMeans
    from sklearn.pipeline import make_pipeline
    clusters = make_pipeline(LatentEncoder("runs/vae16"), KMeans(10, n_init=10)).fit_predict(images)

(the anomaly detector, vaelab.AnomalyDetector, follows the same rules: parameters stored by
__init__, learned state ending in _, NotFittedError before fit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from vaelab import checkpoint, latent
from vaelab.data.transforms import as_uint8_images
from vaelab.device import resolve_device
from vaelab.runs import check_shape


class LatentEncoder(TransformerMixin, BaseEstimator):
    """Images -> latent means of a trained run.

    Parameters
    ----------
    run : path of a vaelab run folder.
    device : "auto", "cpu", "cuda" or "mps".
    """

    def __init__(self, run: str | Path, device: str = "auto") -> None:
        self.run = run
        self.device = device

    def fit(self, X: Any = None, y: Any = None) -> LatentEncoder:
        """Load the run's model (nothing is learned from X: the encoder is already trained)."""
        self.model_ = checkpoint.load(self.run, resolve_device(self.device))
        self.latent_dim_ = self.model_.config.latent_dim
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Latent means [N, D] (float32) of images X."""
        check_is_fitted(self, "model_")
        images = as_uint8_images(X)
        check_shape(self.model_, images, "X")
        return latent.embed_images(self.model_, images).numpy().astype(np.float32)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """z0 ... z{D-1}."""
        check_is_fitted(self, "model_")
        return np.asarray([f"z{d}" for d in range(self.latent_dim_)], dtype=object)
