"""`vaelab anomaly fit` and `vaelab anomaly score`: fit an AnomalyDetector (vaelab.estimators) on
normal images, save it as JSON bound to the run's weights, and score new images with it.

An input whose reconstruction loss (or negative ELBO, or importance-sampled NLL) is far above what
the model sees on normal data is an anomaly; see AnomalyDetector for the scores and the floor
subtracted from bernoulli losses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from vaelab import checkpoint, plots
from vaelab.data.transforms import to_unit
from vaelab.device import resolve_device
from vaelab.errors import VaelabError
from vaelab.estimators import SCORES, AnomalyDetector

__all__ = ["AnomalyDetector", "anomaly_fit", "anomaly_score", "load_detector"]
from vaelab.fileio import write_csv, write_json, write_result_record
from vaelab.options import Choices, DataDir, Dataset, Device, Inputs, Out, Positional, Run, Seed, Split
from vaelab.runs import open_run, select_images, weights_hash, weights_identity


def anomaly_fit(
    run: Run,
    out: Annotated[Out, "detector file to write"] = "detector.json",
    score: Annotated[
        str,
        Choices(SCORES),
        "reconstruction loss, negative ELBO (VAE), importance-sampled NLL, distance to the nearest "
        "normal latents, reconstruction loss plus that distance (each in standard deviations), 1 - SSIM "
        "of the reconstruction, or 1 - SSIM plus the latent distance (best on one-class digits)",
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
    """Fit a detector on normal images (default: the run's training split, only the classes it
    was trained on when it was given some) and save it as JSON."""
    model, config = open_run(run, device)
    images = select_images(model, config, dataset, data_dir, split, inputs)
    # A run trained on some classes (one-class detection) calls those normal, not the others.
    classes = config.class_list(images.class_names) if dataset is None and not inputs else None
    if classes is not None and images.labels is not None:
        keep = torch.isin(images.labels, torch.tensor(classes))
        images.images, images.labels = images.images[keep], images.labels[keep]
        if images.paths is not None:
            images.paths = [path for path, kept in zip(images.paths, keep.tolist()) if kept]
    detector = AnomalyDetector(
        run, score=score, contamination=contamination, k=k, device=device, seed=seed
    ).fit(images.images)
    saved = {
        **{k: v for k, v in detector.get_params().items() if k != "device"},
        "run": str(Path(run).resolve()),
        "model_sha256": weights_hash(run),
        "offset": detector.offset_,
        "n_fit_images": len(images),
        **_learned_state(detector),
    }
    write_json(out, saved)
    return {
        "out": str(out),
        "output": str(out),
        "offset": detector.offset_,
        "score": score,
        "contamination": contamination,
        "n_images": len(images),
        "classes": classes,
    }


def format_summary(result: dict[str, Any]) -> str:
    """One line each for `anomaly fit` and `anomaly score`: what was fitted or found."""
    if "n_anomalies" in result:  # score
        share = result["n_anomalies"] / max(1, result["n_images"])
        return (
            f"{result['n_anomalies']:,} of {result['n_images']:,} images ({share:.1%}) are anomalies, scoring "
            f"below the threshold {result['threshold']:.4g} (higher = more normal): flag -1 in {result['out']}; "
            f"the extremes in {result['grid']}"
        )
    return (
        f"fitted a {result['score']} detector on {result['n_images']:,} normal images into {result['out']}: "
        f"the {result['contamination']:.0%} of them that score lowest (higher = more normal) fall below its "
        f"threshold {result['offset']:.4g}"
    )


def _learned_state(detector: AnomalyDetector) -> dict[str, Any]:
    """What a knn score learned from the normal images, as JSON lists."""
    if "knn" not in detector.score:
        return {}
    state = {"latents": detector.latents_.tolist(), "latent_scale": detector.latent_scale_.tolist()}
    if hasattr(detector, "standardize_"):
        state["standardize"] = [part.tolist() for part in detector.standardize_]
    return state


def load_detector(path: str | Path, device: str = "auto") -> AnomalyDetector:
    """A fitted AnomalyDetector from the JSON that anomaly_fit wrote (its run must be unchanged)."""
    try:
        saved = json.loads(Path(path).read_text())
        detector = AnomalyDetector(
            saved["run"], score=saved["score"], contamination=saved["contamination"], k=saved["k"],
            device=device, seed=saved["seed"],
        )  # fmt: skip
        offset, expected_hash = float(saved["offset"]), saved["model_sha256"]
        if "knn" in detector.score:
            detector.latents_ = np.asarray(saved["latents"], dtype=np.float64)
            detector.latent_scale_ = np.asarray(saved["latent_scale"], dtype=np.float64)
            if "+" in detector.score:
                detector.standardize_ = tuple(
                    np.asarray(part, dtype=np.float64) for part in saved["standardize"]
                )
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
    if Path(out).suffix.lower() != ".csv":  # the picture goes beside it, under the same name + .png
        raise VaelabError(f"-o {out}: choose a file ending in .csv (the picture goes beside it as .png)")
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
    result = {
        "out": str(out),
        "output": str(out),
        "grid": str(grid),
        "n_images": len(scores),
        "n_anomalies": int((flags == -1).sum()),
        "threshold": fitted.offset_,
        "score": fitted.score,
    }
    result["record"] = str(
        write_result_record(out, "anomaly score", {**result, **weights_identity(fitted.run)})
    )
    return result
