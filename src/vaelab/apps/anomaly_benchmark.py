"""`vaelab anomaly benchmark`: how well AE and VAE anomaly scores separate one class from the rest,
beside PCA reconstruction error and IsolationForest on the same pixels (AUROC and AUPRC per class).

It trains its own small models with the pinned PLAIN_TRAINING settings, so its figures stay
comparable whatever `vaelab train` defaults to.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score

from vaelab.config import ARCHS, PLAIN_TRAINING
from vaelab.data import load_images
from vaelab.errors import VaelabError
from vaelab.estimators import AnomalyDetector
from vaelab.evaluation import structural_similarity
from vaelab.options import Choices, Device, Progress, Seed
from vaelab.training import train

PROTOCOLS = ("held-out", "one-class")
# vae: -ELBO; vae_recon: loss at the mean; vae_knn: distance to the nearest normal latents;
# vae_recon_knn: both, standardized on the normal images; *_ssim: 1 - SSIM of the mean reconstruction;
# pca_best: PCA at the best of PCA_COMPONENTS (pca_ssim_best: the same scored by 1 - SSIM)
METHODS = ("ae", "vae", "vae_recon", "vae_knn", "vae_recon_knn", "pca", "pca_best", "iforest",
           "ae_ssim", "vae_ssim", "vae_ssim_knn", "pca_ssim_best")  # fmt: skip
PCA_COMPONENTS = (8, 16, 32, 64)
PCA_SCORES = ("pca_best", "pca_ssim_best")
# the AnomalyDetector score behind each method of a trained model
MODEL_SCORES = {
    "ae": {"ae": "recon", "ae_ssim": "ssim"},
    "vae": {"vae": "elbo", "vae_recon": "recon", "vae_knn": "knn", "vae_recon_knn": "recon+knn",
            "vae_ssim": "ssim", "vae_ssim_knn": "ssim+knn"},
}  # fmt: skip


def anomaly_benchmark(
    dataset: Annotated[str, "a labelled dataset"] = "mnist-mini",
    protocol: Annotated[
        str, Choices(PROTOCOLS), "held-out: train on all classes but one; one-class: train on one"
    ] = "held-out",
    classes: Annotated[list[int] | None, "the classes to run, comma-separated (default: all)"] = None,
    steps: Annotated[int, "optimizer steps per model"] = 1000,
    arch: Annotated[str, Choices(ARCHS), "network of the AE and VAE"] = "conv",
    latent_dim: Annotated[int, "latent size; also PCA's number of components"] = 16,
    seed: Seed = 0,
    device: Device = "auto",
    progress: Progress = True,
) -> dict[str, Any]:
    """AUROC and AUPRC of AE, VAE, PCA and IsolationForest anomaly scores, one class at a time.

    held-out: train on every class but one; that class is the anomaly in the test split.
    one-class: train on one class (Ruff et al., 2018); every other class is the anomaly.
    The AE scores by reconstruction loss, the VAE by negative ELBO (vae), by the reconstruction
    loss at its posterior mean (vae_recon), by the distance of its latent mean to the five nearest
    latents of the normal training images (vae_knn), and by the sum of the last two, each
    standardized on the normal images (vae_recon_knn); ae_ssim, vae_ssim and vae_ssim_knn put
    1 - SSIM of the mean reconstruction in place of the loss. PCA scores by reconstruction error
    with as many components as the latent (pca) and with the number among PCA_COMPONENTS whose
    mean AUROC is highest (pca_best: chosen on the test labels, so it flatters PCA), and by
    1 - SSIM of its reconstruction (clipped to [0, 1]) at its own best number (pca_ssim_best);
    IsolationForest on raw pixels by its anomaly score. Every model gets `steps` optimizer steps
    of 128 images, whatever the size of its normal set.
    """
    if protocol not in PROTOCOLS:
        raise VaelabError(f"protocol {protocol!r} is not one of: {', '.join(PROTOCOLS)}")
    if steps < 1:
        raise VaelabError(f"steps must be at least 1, got {steps}")
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
    pca_auroc: dict[str, dict[int, dict[str, float]]] = {
        m: {k: {} for k in PCA_COMPONENTS} for m in PCA_SCORES
    }
    pca_auprc: dict[str, dict[int, dict[str, float]]] = {
        m: {k: {} for k in PCA_COMPONENTS} for m in PCA_SCORES
    }
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
                for method, score in MODEL_SCORES[model].items():
                    detector = AnomalyDetector(run, score=score, device=device, seed=seed)
                    fit_on = normal if "knn" in score else normal[:256]  # neighbours: every normal image
                    anomaly_scores[method] = -detector.fit(fit_on).score_samples(test_set.images)
        normal_pixels = normal.flatten(1).double().numpy() / 255
        truth = is_anomaly.numpy()
        for components in sorted({latent_dim, *PCA_COMPONENTS}):
            pca = PCA(n_components=components, random_state=seed).fit(normal_pixels)
            rebuilt = pca.inverse_transform(pca.transform(test_pixels))
            error = ((test_pixels - rebuilt) ** 2).sum(1)
            if components == latent_dim:
                anomaly_scores["pca"] = error
            if components in PCA_COMPONENTS:
                dissimilarity = 1 - structural_similarity(
                    torch.from_numpy(rebuilt.clip(0, 1)).view(test_set.images.shape),
                    torch.from_numpy(test_pixels).view(test_set.images.shape),
                )
                for score, values in (("pca_best", error), ("pca_ssim_best", dissimilarity.numpy())):
                    pca_auroc[score][components][str(cls)] = float(roc_auc_score(truth, values))
                    pca_auprc[score][components][str(cls)] = float(average_precision_score(truth, values))
        forest = IsolationForest(n_estimators=200, random_state=seed).fit(normal_pixels)
        anomaly_scores["iforest"] = -forest.score_samples(test_pixels)
        for method, values in anomaly_scores.items():
            auroc[method][str(cls)] = float(roc_auc_score(truth, values))
            auprc[method][str(cls)] = float(average_precision_score(truth, values))
    best = {}
    for score in PCA_SCORES:
        best[score] = max(PCA_COMPONENTS, key=lambda k: np.mean(list(pca_auroc[score][k].values())))
        auroc[score], auprc[score] = pca_auroc[score][best[score]], pca_auprc[score][best[score]]
    return {
        "pca_best_components": best["pca_best"],
        "pca_mean_auroc_by_components": {
            str(k): float(np.mean(list(v.values()))) for k, v in pca_auroc["pca_best"].items()
        },
        "pca_ssim_best_components": best["pca_ssim_best"],
        "pca_ssim_mean_auroc_by_components": {
            str(k): float(np.mean(list(v.values()))) for k, v in pca_auroc["pca_ssim_best"].items()
        },
        "dataset": dataset,
        "protocol": protocol,
        "steps": steps,
        "auroc": auroc,
        "auprc": auprc,
        "mean_auroc": {m: float(np.mean(list(v.values()))) for m, v in auroc.items()},
        "mean_auprc": {m: float(np.mean(list(v.values()))) for m, v in auprc.items()},
    }


def format_table(result: dict[str, Any]) -> str:
    """AUROC per class and method as a terminal table (AUPRC means on the last line)."""
    classes = list(next(iter(result["auroc"].values())))
    lines = [f"{result['protocol']} protocol on {result['dataset']}: AUROC per anomalous class"
             if result["protocol"] == "held-out" else
             f"{result['protocol']} protocol on {result['dataset']}: AUROC per normal class"]  # fmt: skip
    width = {m: max(9, len(m) + 2) for m in METHODS}
    lines.append(f"{'class':<8}" + "".join(f"{m:>{width[m]}}" for m in METHODS))
    for cls in classes:
        lines.append(f"{cls:<8}" + "".join(f"{result['auroc'][m][cls]:>{width[m]}.3f}" for m in METHODS))
    lines.append(f"{'mean':<8}" + "".join(f"{result['mean_auroc'][m]:>{width[m]}.3f}" for m in METHODS))
    lines.append(f"{'AUPRC':<8}" + "".join(f"{result['mean_auprc'][m]:>{width[m]}.3f}" for m in METHODS))
    for score, name in (("pca", "PCA"), ("pca_ssim", "PCA scored by 1 - SSIM")):
        by_components = ", ".join(
            f"{k}: {v:.3f}" for k, v in result[f"{score}_mean_auroc_by_components"].items()
        )
        lines.append(
            f"{score}_best = {name} with {result[f'{score}_best_components']} components "
            f"(mean AUROC by components: {by_components})"
        )
    return "\n".join(lines)
