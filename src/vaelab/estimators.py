"""scikit-learn estimators over a trained run, so its latent space drops into Pipelines, grid
searches and anything else that takes a transformer.

`LatentEncoder(run).fit().transform(X)` gives the latent mean of every image (z for an AE), as
float32 [N, D]; images X are uint8 or [0, 1] float arrays [N, C, H, W] (or [N, H, W]). Clustering
the latents is then plain scikit-learn::

    from sklearn.cluster import KMeans
    from sklearn.pipeline import make_pipeline
    clusters = make_pipeline(LatentEncoder("runs/vae16"), KMeans(10, n_init=10)).fit_predict(images)

`AnomalyDetector(run).fit(normal_images)` flags images the model reconstructs much worse than
normal data, as scikit-learn's outlier detectors do (score_samples higher for normal images,
offset_ from `contamination`, predict +1 / -1). Every estimator here stores only its parameters
in __init__, ends learned state in _, and raises NotFittedError before fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from vaelab import checkpoint, latent
from vaelab.data.transforms import as_uint8_images
from vaelab.device import map_batches, model_device, resolve_device
from vaelab.errors import VaelabError
from vaelab.evaluation import above_floor, evaluate_images, reconstruction_scores, structural_similarity
from vaelab.models import VAE
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


SCORES = ("recon", "elbo", "nll", "knn", "recon+knn", "ssim", "ssim+knn")
KNN_NEIGHBORS = 5


class AnomalyDetector(OutlierMixin, BaseEstimator):
    """Flags images a trained model reconstructs much worse than normal data.

    Parameters
    ----------
    run : path of a vaelab run folder.
    score : "recon" (reconstruction loss at the latent mean), "ssim" (1 - SSIM of the mean
        reconstruction: structure, not pixel sums, as in Bergmann et al., 2019), "elbo" (negative
        ELBO, VAE), "nll" (importance-sampled negative log-likelihood, a VAE with the bernoulli
        loss), "knn" (mean distance of the latent mean, an AE's code, to its KNN_NEIGHBORS nearest
        latents of the fit images, each dimension scaled by its spread there), or "recon+knn" /
        "ssim+knn" (the sum of the two, each standardized by its mean and spread on the fit images).
    contamination : expected share of anomalies in the data given to `fit`; sets `offset_`.
    k : importance samples per image for score="nll".
    device : "auto", "cpu", "cuda" or "mps".
    seed : seed of the posterior samples (elbo, nll).
    """

    def __init__(
        self, run: str | Path, score: str = "recon", contamination: float = 0.05, k: int = 100,
        device: str = "auto", seed: int = 0,
    ) -> None:  # fmt: skip
        self.run = run
        self.score = score
        self.contamination = contamination
        self.k = k
        self.device = device
        self.seed = seed

    def fit(self, X: Any, y: Any = None) -> AnomalyDetector:
        """Load the model, score X (normal data), and set offset_ from `contamination`."""
        if self.score not in SCORES:
            raise VaelabError(f"score {self.score!r} is not one of: {', '.join(SCORES)}")
        if not 0 < self.contamination < 0.5:
            raise VaelabError(f"contamination must be in (0, 0.5), got {self.contamination}")
        model = checkpoint.load(self.run, resolve_device(self.device))
        if self.score in ("elbo", "nll") and not isinstance(model, VAE):
            raise VaelabError(
                f"score {self.score!r} needs a VAE; {self.run} holds a plain autoencoder "
                "(use recon, ssim, knn, recon+knn or ssim+knn)"
            )
        if "ssim" in self.score and isinstance(model, VAE) and not model.pixels.closed_form_mean:
            raise VaelabError(
                f"score {self.score!r} compares the mean reconstruction, which a {model.pixels.name} decoder "
                "does not have; use recon or recon+knn"
            )
        if self.score == "nll" and model.config.loss != "bernoulli":
            raise VaelabError(
                f"score 'nll' needs the bernoulli loss; {self.run} uses {model.config.loss} (use recon)"
            )
        self.model_ = model
        images = self._images(X)
        if "knn" in self.score:
            codes = latent.embed_images(model, images).double().numpy()
            if len(codes) <= KNN_NEIGHBORS:
                raise VaelabError(
                    f"score {self.score!r} needs more than {KNN_NEIGHBORS} normal images to fit"
                )
            self.latent_scale_ = codes.std(0) + 1e-8
            self.latents_ = codes / self.latent_scale_
            distance = self._knn_distance(codes, exclude_self=True)  # a fit image is not its own neighbour
            loss = None
            if "+" in self.score:
                loss = self._reconstruction(images)
                parts = np.stack([loss, distance])
                self.standardize_ = (parts.mean(1), parts.std(1) + 1e-12)
            scores = self._combine(loss, distance)
        else:
            scores = self._scores(images)
        self.offset_ = float(np.quantile(scores, self.contamination))
        self.n_features_in_ = int(np.prod(images.shape[1:]))
        return self

    def score_samples(self, X: Any) -> np.ndarray:
        """Normality of each image (lower = more abnormal): the negated loss in nats per image, or
        SSIM - 1, or the negated latent distance, or the negated sum of two in standard deviations."""
        check_is_fitted(self, "model_")
        return self._scores(self._images(X))

    def _images(self, X: Any) -> torch.Tensor:
        """X as uint8 images [N, C, H, W], checked against the model's image shape."""
        images = as_uint8_images(X)
        c = self.model_.config
        if tuple(images.shape[1:]) != (c.image_channels, c.image_height, c.image_width):
            raise VaelabError(
                f"images of shape {tuple(images.shape[1:])} given; the model expects "
                f"{(c.image_channels, c.image_height, c.image_width)}"
            )
        return images

    def _combine(self, loss: np.ndarray | None, distance: np.ndarray) -> np.ndarray:
        """The knn scores from their parts: the negated distance, or the negated sum of the
        reconstruction part and the distance, each standardized on the fit images."""
        if loss is None:
            return -distance
        (mean_loss, mean_distance), (sd_loss, sd_distance) = self.standardize_
        return -((loss - mean_loss) / sd_loss + (distance - mean_distance) / sd_distance)

    def _scores(self, images: torch.Tensor) -> np.ndarray:
        if "knn" in self.score:
            distance = self._knn_distance(latent.embed_images(self.model_, images).double().numpy())
            return self._combine(self._reconstruction(images) if "+" in self.score else None, distance)
        if self.score in ("recon", "ssim"):
            return -self._reconstruction(images)
        evaluation = evaluate_images(
            self.model_, images, self.k if self.score == "nll" else 1, seed=self.seed
        )
        loss = evaluation.nll if self.score == "nll" else evaluation.neg_elbo
        return -above_floor(self.model_, loss.double(), images).numpy()

    def _reconstruction(self, images: torch.Tensor) -> np.ndarray:
        """How badly each image is rebuilt from its latent mean: the loss above its floor, or
        1 - SSIM of the mean reconstruction."""
        model = self.model_
        if "ssim" in self.score:
            dissimilarity = map_batches(
                lambda x: 1 - structural_similarity(model.decode(model.embed(x)), x),
                images,
                model_device(model),
            )
            return dissimilarity.double().numpy()
        return reconstruction_scores(model, images).numpy()

    def _knn_distance(self, codes: np.ndarray, exclude_self: bool = False) -> np.ndarray:
        """Mean scaled distance of each code to its nearest fit latents (when scoring the fit
        images themselves, each one's own latent is left out)."""
        from sklearn.neighbors import NearestNeighbors

        index = NearestNeighbors(n_neighbors=KNN_NEIGHBORS + exclude_self).fit(self.latents_)
        distances = index.kneighbors(codes / self.latent_scale_)[0]
        return distances[:, int(exclude_self) :].mean(1)

    def decision_function(self, X: Any) -> np.ndarray:
        """score_samples - offset_: negative for anomalies."""
        check_is_fitted(self, "offset_")
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """+1 for normal images, -1 for anomalies."""
        return np.where(self.decision_function(X) >= 0, 1, -1)
