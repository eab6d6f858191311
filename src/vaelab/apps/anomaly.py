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
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from vaelab import checkpoint, plots
from vaelab.config import PLAIN_TRAINING
from vaelab.data.transforms import to_unit
from vaelab.device import map_batches, model_device, resolve_device
from vaelab.distributions import entropy_floor
from vaelab.errors import VaelabError
from vaelab.evaluate import evaluate_images
from vaelab.fileio import write_csv, write_json
from vaelab.models import VAE
from vaelab.runs import open_run, select_images, weights_hash

SCORES = ("recon", "elbo", "nll")


def as_uint8_images(X: Any) -> torch.Tensor:
    """Images as a uint8 tensor [N, C, H, W]: uint8 arrays pass through, floats in [0, 1] are scaled."""
    images = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise VaelabError(f"expected images [N, C, H, W] (or [N, H, W]), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    if images.min() < 0 or images.max() > 1:
        raise VaelabError("float images must lie in [0, 1]; pass uint8 images or divide by 255")
    return (images.float() * 255).round().to(torch.uint8)


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
    run: str | Path,
    out: str | Path = "detector.json",
    score: str = "recon",
    contamination: float = 0.05,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str = "train",
    inputs: list[str | Path] | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Fit a detector on normal images (default: the run's training split) and save it as JSON."""
    model, config = open_run(run, device)
    images = select_images(model, config, dataset, data_dir, split, inputs)
    detector = AnomalyDetector(run, score=score, contamination=contamination, device=device).fit(
        images.images
    )
    saved = {
        **{k: v for k, v in detector.get_params().items() if k != "device"},
        "run": str(Path(run).resolve()),
        "model_sha256": weights_hash(run),
        "offset": detector.offset_,
        "n_fit_images": len(images),
    }
    write_json(out, saved)
    return {"output": str(out), "offset": detector.offset_, "score": score, "n_images": len(images)}


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
    detector_path: str | Path,
    out: str | Path = "scores.csv",
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    inputs: list[str | Path] | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Score images with a saved detector: a CSV of name, score, flag, and a PNG beside it with the
    most anomalous images (top rows) and the most normal ones (bottom rows)."""
    detector = load_detector(detector_path, device)
    config = checkpoint.read_train_config(detector.run)
    images = select_images(detector.model_, config, dataset, data_dir, split, inputs)
    scores = detector.score_samples(images.images)
    flags = np.where(scores - detector.offset_ >= 0, 1, -1)
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
        f"{detector.score} score; threshold {detector.offset_:.1f}",
    )
    return {
        "output": str(out),
        "grid": str(grid),
        "n_images": len(scores),
        "n_anomalies": int((flags == -1).sum()),
        "threshold": detector.offset_,
    }


PROTOCOLS = ("held-out", "one-class")
METHODS = ("ae", "vae", "vae_recon", "pca", "iforest")  # vae: -ELBO; vae_recon: loss at the mean


def benchmark(
    dataset: str = "mnist-mini",
    protocol: str = "held-out",
    classes: list[int] | None = None,
    steps: int = 1000,
    arch: str = "conv",
    latent_dim: int = 16,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """AUROC and AUPRC of AE, VAE, PCA and IsolationForest anomaly scores, one class at a time.

    held-out: train on every class but one; that class is the anomaly in the test split.
    one-class: train on one class (Ruff et al., 2018); every other class is the anomaly.
    The AE scores by reconstruction loss, the VAE by negative ELBO (vae) and by the reconstruction
    loss at its posterior mean (vae_recon); PCA (as many components as
    the latent) by reconstruction error, IsolationForest on raw pixels by its anomaly score. Every
    model gets `steps` optimizer steps of 128 images, whatever the size of its normal set.
    """
    import tempfile

    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import average_precision_score, roc_auc_score

    from vaelab.data import load_images
    from vaelab.train import train

    if protocol not in PROTOCOLS:
        raise VaelabError(f"--protocol {protocol!r} is not one of: {', '.join(PROTOCOLS)}")
    if steps < 1:
        raise VaelabError(f"--steps must be at least 1, got {steps}")
    train_set, test_set = load_images(dataset, "train"), load_images(dataset, "test")
    if train_set.labels is None or test_set.labels is None:
        raise VaelabError(f"{dataset} has no class labels; the benchmark needs them")
    all_classes = sorted(set(train_set.labels.tolist()))
    classes = all_classes if classes is None else classes
    unknown = sorted(set(classes) - set(all_classes))
    if unknown:
        raise VaelabError(f"classes {unknown} are not in {dataset}; it has {all_classes}")
    test_pixels = test_set.images.flatten(1).double().numpy() / 255
    auroc: dict[str, dict[str, float]] = {m: {} for m in METHODS}
    auprc: dict[str, dict[str, float]] = {m: {} for m in METHODS}
    for cls in classes:
        normal_classes = [c for c in all_classes if c != cls] if protocol == "held-out" else [cls]
        is_anomaly = ~torch.isin(test_set.labels, torch.tensor(normal_classes))
        normal = train_set.images[torch.isin(train_set.labels, torch.tensor(normal_classes))]
        epochs = max(1, round(steps * 128 / (0.9 * len(normal))))
        anomaly_scores = {}
        with tempfile.TemporaryDirectory() as tmp:
            for model in ("ae", "vae"):
                run = Path(tmp) / model
                settings = {
                    **PLAIN_TRAINING,
                    "arch": arch,
                }  # pinned: figures comparable whatever the defaults
                train(run, model=model, latent_dim=latent_dim, dataset=dataset, epochs=epochs, seed=seed,
                      classes=",".join(map(str, normal_classes)), device=device, progress=progress,
                      **settings)  # fmt: skip
                scores = {"ae": "recon"} if model == "ae" else {"vae": "elbo", "vae_recon": "recon"}
                for method, score in scores.items():
                    detector = AnomalyDetector(run, score=score, device=device, seed=seed)
                    anomaly_scores[method] = -detector.fit(normal[:256]).score_samples(test_set.images)
        normal_pixels = normal.flatten(1).double().numpy() / 255
        pca = PCA(n_components=latent_dim, random_state=seed).fit(normal_pixels)
        rebuilt = pca.inverse_transform(pca.transform(test_pixels))
        anomaly_scores["pca"] = ((test_pixels - rebuilt) ** 2).sum(1)
        forest = IsolationForest(n_estimators=200, random_state=seed).fit(normal_pixels)
        anomaly_scores["iforest"] = -forest.score_samples(test_pixels)
        truth = is_anomaly.numpy()
        for method, values in anomaly_scores.items():
            auroc[method][str(cls)] = float(roc_auc_score(truth, values))
            auprc[method][str(cls)] = float(average_precision_score(truth, values))
    return {
        "dataset": dataset,
        "protocol": protocol,
        "steps": steps,
        "auroc": auroc,
        "auprc": auprc,
        "mean_auroc": {m: float(np.mean(list(v.values()))) for m, v in auroc.items()},
        "mean_auprc": {m: float(np.mean(list(v.values()))) for m, v in auprc.items()},
    }


def format_benchmark(result: dict[str, Any]) -> str:
    """AUROC per class and method as a terminal table (AUPRC means on the last line)."""
    classes = list(next(iter(result["auroc"].values())))
    lines = [f"{result['protocol']} protocol on {result['dataset']}: AUROC per anomalous class"
             if result["protocol"] == "held-out" else
             f"{result['protocol']} protocol on {result['dataset']}: AUROC per normal class"]  # fmt: skip
    lines.append(f"{'class':<8}" + "".join(f"{m:>9}" for m in METHODS))
    for cls in classes:
        lines.append(f"{cls:<8}" + "".join(f"{result['auroc'][m][cls]:>9.3f}" for m in METHODS))
    lines.append(f"{'mean':<8}" + "".join(f"{result['mean_auroc'][m]:>9.3f}" for m in METHODS))
    lines.append(f"{'AUPRC':<8}" + "".join(f"{result['mean_auprc'][m]:>9.3f}" for m in METHODS))
    return "\n".join(lines)
