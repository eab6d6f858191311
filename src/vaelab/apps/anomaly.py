"""Anomaly detection with a trained autoencoder, following scikit-learn's outlier-detector API.

An input whose reconstruction loss (or negative ELBO, or importance-sampled NLL) is far above what
the model sees on normal data is an anomaly. With the bernoulli loss every score is the loss above
its floor for that image (its own pixel entropy, zero for 0/1 images): on greyscale images the raw
cross-entropy also counts each grey edge pixel, so an image with more stroke would look more
abnormal however well it is rebuilt. `score_samples` is higher for normal points (the
negated loss), `offset_` is the `contamination` quantile of the training scores,
`decision_function = score_samples - offset_`, and `predict` gives +1 (normal) or -1 (anomaly).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from vaelab import checkpoint, plots
from vaelab.data.transforms import as_uint8_images, to_unit
from vaelab.device import map_batches, model_device, resolve_device
from vaelab.distributions import entropy_floor
from vaelab.errors import VaelabError
from vaelab.evaluation import evaluate_images
from vaelab.fileio import write_csv, write_json
from vaelab.models import VAE
from vaelab.options import Choices, DataDir, Dataset, Device, Inputs, Out, Positional, Run, Seed, Split
from vaelab.runs import open_run, select_images, weights_hash

SCORES = ("recon", "elbo", "nll")


class AnomalyDetector(OutlierMixin, BaseEstimator):
    """Flags images a trained model reconstructs much worse than normal data.

    Parameters
    ----------
    run : path of a vaelab run folder.
    score : "recon" (reconstruction loss at the latent mean), "elbo" (negative ELBO, VAE) or
        "nll" (importance-sampled negative log-likelihood, a VAE with the bernoulli loss).
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
        if self.score != "recon" and not isinstance(model, VAE):
            raise VaelabError(
                f"score {self.score!r} needs a VAE; {self.run} holds a plain autoencoder (use recon)"
            )
        if self.score == "nll" and model.config.loss != "bernoulli":
            raise VaelabError(
                f"score 'nll' needs the bernoulli loss; {self.run} uses {model.config.loss} (use recon)"
            )
        self.model_ = model
        scores = self.score_samples(X)
        self.offset_ = float(np.quantile(scores, self.contamination))
        self.n_features_in_ = int(np.prod(as_uint8_images(X).shape[1:]))
        return self

    def score_samples(self, X: Any) -> np.ndarray:
        """Normality of each image: the negated loss in nats per image (lower = more abnormal)."""
        check_is_fitted(self, "model_")
        images = as_uint8_images(X)
        c = self.model_.config
        if tuple(images.shape[1:]) != (c.image_channels, c.image_height, c.image_width):
            raise VaelabError(
                f"images of shape {tuple(images.shape[1:])} given; the model expects "
                f"{(c.image_channels, c.image_height, c.image_width)}"
            )
        if self.score == "recon":
            loss = self._recon_at_mean(images)
        else:
            evaluation = evaluate_images(
                self.model_, images, self.k if self.score == "nll" else 1, seed=self.seed
            )
            loss = (evaluation.nll if self.score == "nll" else evaluation.neg_elbo).numpy()
        if c.loss == "bernoulli":
            loss = loss - entropy_floor(to_unit(images)).double().numpy()
        return -loss

    def _recon_at_mean(self, images: torch.Tensor) -> np.ndarray:
        model = self.model_
        losses = map_batches(
            lambda x: model.reconstruction_loss(model.embed(x), x), images, model_device(model)
        )
        return losses.double().numpy()

    def decision_function(self, X: Any) -> np.ndarray:
        """score_samples - offset_: negative for anomalies."""
        check_is_fitted(self, "offset_")
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """+1 for normal images, -1 for anomalies."""
        return np.where(self.decision_function(X) >= 0, 1, -1)


def anomaly_fit(
    run: Run,
    out: Annotated[Out, "detector file to write"] = "detector.json",
    score: Annotated[
        str, Choices(SCORES), "reconstruction loss, negative ELBO (VAE) or importance-sampled NLL"
    ] = "recon",
    contamination: Annotated[float, "expected share of anomalies in the normal images"] = 0.05,
    k: Annotated[int, "importance samples per image for the nll score"] = 100,
    dataset: Dataset = None,
    data_dir: DataDir = None,
    split: Split = "train",
    inputs: Inputs = None,
    seed: Annotated[Seed, "seed of the posterior samples (elbo, nll)"] = 0,
    device: Device = "auto",
) -> dict[str, Any]:
    """Fit a detector on normal images (default: the run's training split) and save it as JSON."""
    model, config = open_run(run, device)
    images = select_images(model, config, dataset, data_dir, split, inputs)
    detector = AnomalyDetector(
        run, score=score, contamination=contamination, k=k, device=device, seed=seed
    ).fit(images.images)
    saved = {
        **{k: v for k, v in detector.get_params().items() if k != "device"},
        "run": str(Path(run).resolve()),
        "model_sha256": weights_hash(run),
        "offset": detector.offset_,
        "n_fit_images": len(images),
    }
    write_json(out, saved)
    return {
        "out": str(out),
        "output": str(out),
        "offset": detector.offset_,
        "score": score,
        "n_images": len(images),
    }


def load_detector(path: str | Path, device: str = "auto") -> AnomalyDetector:
    """A fitted AnomalyDetector from the JSON that anomaly_fit wrote (its run must be unchanged)."""
    try:
        saved = json.loads(Path(path).read_text())
        detector = AnomalyDetector(
            saved["run"], score=saved["score"], contamination=saved["contamination"], k=saved["k"],
            device=device, seed=saved["seed"],
        )  # fmt: skip
        offset, expected_hash = float(saved["offset"]), saved["model_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise VaelabError(f"{path} is not a detector saved by `vaelab anomaly fit` ({error})") from None
    if weights_hash(detector.run) != expected_hash:
        raise VaelabError(f"the weights of {detector.run} changed since {path} was fitted; fit it again")
    detector.model_ = checkpoint.load(detector.run, resolve_device(device))
    detector.offset_ = offset
    return detector


def anomaly_score(
    detector: Annotated[str | Path, Positional("DETECTOR"), "file written by anomaly_fit"],
    out: Annotated[Out, "CSV to write; a PNG of the extremes goes beside it"] = "scores.csv",
    dataset: Dataset = None,
    data_dir: DataDir = None,
    split: Split = "test",
    inputs: Inputs = None,
    device: Device = "auto",
) -> dict[str, Any]:
    """Score images with a saved detector: a CSV of name, score, flag, and a PNG beside it with the
    most anomalous images (top rows) and the most normal ones (bottom rows)."""
    fitted = load_detector(detector, device)
    config = checkpoint.read_train_config(fitted.run)
    images = select_images(fitted.model_, config, dataset, data_dir, split, inputs)
    scores = fitted.score_samples(images.images)
    flags = np.where(scores - fitted.offset_ >= 0, 1, -1)
    names = images.paths or [str(i) for i in range(len(scores))]
    rows = ([name, f"{value:.4f}", int(flag)] for name, value, flag in zip(names, scores, flags))
    write_csv(out, ["name", "score", "flag"], rows)
    order = np.argsort(scores)
    show = min(12, max(1, len(order) // 2))
    grid = Path(out).with_suffix(".png")
    plots.save_labelled_rows(
        [
            ("most anomalous", to_unit(images.images[order[:show]])),
            ("most normal", to_unit(images.images[order[-show:]])),
        ],
        grid,
        f"{fitted.score} score; threshold {fitted.offset_:.1f}",
    )
    return {
        "out": str(out),
        "output": str(out),
        "grid": str(grid),
        "n_images": len(scores),
        "n_anomalies": int((flags == -1).sum()),
        "threshold": fitted.offset_,
    }
