"""`vaelab cluster`: k-means on the latent means, beside k-means on raw pixels and on PCA of the
pixels with as many dimensions as the latent, scored against the labels when there are any."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from vaelab import latent, plots
from vaelab.errors import VaelabError
from vaelab.estimators import LatentEncoder
from vaelab.fileio import write_csv, write_result_record
from vaelab.options import DataDir, Dataset, Device, Inputs, Out, Run, Seed, Split
from vaelab.runs import open_run, select_images


def cluster_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Share of points whose cluster maps to their label under the best one-to-one matching."""
    classes, groups = np.unique(labels), np.unique(clusters)
    counts = np.zeros((len(groups), len(classes)), dtype=np.int64)
    np.add.at(counts, (np.searchsorted(groups, clusters), np.searchsorted(classes, labels)), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(labels))


def scores(labels: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    """NMI, ARI and cluster accuracy of an assignment."""
    return {
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
        "accuracy": cluster_accuracy(labels, clusters),
    }


def kmeans(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means cluster index of every row (10 seeded restarts)."""
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features)


def cluster(
    run: Run,
    k: Annotated[int, "number of clusters"] = 10,
    out: Annotated[Out, "scatter PNG to write; each image's cluster goes beside it as .csv"] = "clusters.png",
    dataset: Dataset = None,
    data_dir: DataDir = None,
    split: Split = "test",
    inputs: Inputs = None,
    seed: Annotated[Seed, "seed of k-means and PCA"] = 0,
    device: Device = "auto",
) -> dict[str, Any]:
    """Cluster images by their latents; compare with pixels and PCA; write a scatter PNG and a CSV."""
    plots.check_figure_path(out)
    model, config = open_run(run, device)
    images = select_images(model, config, dataset, data_dir, split, inputs)
    if not 2 <= k <= len(images):
        raise VaelabError(
            f"k must be between 2 and the number of images ({len(images)}), got {k}; choose k (--k) in that range"
        )
    codes = LatentEncoder(run, device).fit().transform(images.images)  # [N, D]
    pixels = images.images.flatten(1).double().numpy() / 255.0
    dims = min(model.config.latent_dim, len(images), pixels.shape[1])
    representations = {
        "latent": codes.astype(np.float64),
        "pixels": pixels,
        "pca": PCA(n_components=dims, random_state=seed).fit_transform(pixels),
    }
    assignments = {name: kmeans(features, k, seed) for name, features in representations.items()}

    out = Path(out)
    coords, axes = latent.scatter_coordinates(torch.from_numpy(codes))
    panels = [plots.ScatterPanel(f"k-means on the latent, k={k}", coords, torch.from_numpy(assignments["latent"]),
                                 [f"cluster {i}" for i in range(k)], axes)]  # fmt: skip
    if images.labels is not None:
        panels.insert(0, plots.ScatterPanel("true classes", coords, images.labels, images.class_names, axes))
    plots.save_latent_scatter(panels, out, shared_legend=images.labels is None)
    csv_path = out.with_suffix(".csv")
    names = images.paths or [str(i) for i in range(len(images))]
    labels = [""] * len(names) if images.labels is None else images.labels.tolist()
    write_csv(csv_path, ["name", "label", "cluster"], zip(names, labels, assignments["latent"].tolist()))

    result: dict[str, Any] = {
        "out": str(out),
        "output": str(out),
        "assignments": str(csv_path),
        "k": k,
        "n_images": len(images),
    }
    if images.labels is not None:
        labels = images.labels.numpy()
        result["scores"] = {name: scores(labels, clusters) for name, clusters in assignments.items()}
    result["record"] = str(write_result_record(out, "cluster", result))
    return result


def format_table(result: dict[str, Any]) -> str:
    """The clustering scores as a small terminal table."""
    if "scores" not in result:
        return f"{result['n_images']} images in {result['k']} clusters (no labels to score against)"
    lines = [f"{'features':<10}{'NMI':>8}{'ARI':>8}{'accuracy':>10}"]
    for name, s in result["scores"].items():
        lines.append(f"{name:<10}{s['nmi']:>8.3f}{s['ari']:>8.3f}{s['accuracy']:>10.3f}")
    return "\n".join(lines)
