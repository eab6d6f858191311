"""`vaelab cluster`: k-means on the latent means, beside k-means on raw pixels and on PCA of the
pixels with as many dimensions as the latent, scored against the labels when there are any."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from vaelab import latent, plots
from vaelab.data.imageset import memory_budget
from vaelab.errors import VaelabError
from vaelab.estimators import LatentEncoder
from vaelab.fileio import write_csv, write_result_record
from vaelab.options import DataDir, Dataset, Device, Inputs, Out, Run, Seed, Split
from vaelab.runs import open_run, select_images, weights_identity

logger = logging.getLogger(__name__)


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


# k-means and PCA of the pixels hold about this many float32 copies of them at once (sklearn's
# k-means copies its input to centre it and again for the spread that sets its tolerance).
PIXEL_COPIES = 3


def baseline_rows(n: int, values: int, k: int, seed: int) -> np.ndarray | None:
    """The images (sorted indices) the pixel and PCA baselines cluster: None for all n, or, where
    PIXEL_COPIES float32 copies of all of them (`values` each) would exceed the memory budget (half
    of the memory available), a random subset of those that fit (at least k), drawn with `seed`."""
    budget = memory_budget(None)
    fit = n if budget is None else max(k, budget // (PIXEL_COPIES * 4 * values))
    if fit >= n:
        return None
    logger.warning(
        "the pixel and PCA baselines cluster %d of the %d images, drawn at random: all of them as "
        "floats would take %.1f GB, over half the memory available; the latent clusters all %d",
        fit, n, PIXEL_COPIES * 4 * values * n / 1e9, n,
    )  # fmt: skip
    return np.sort(np.random.default_rng(seed).choice(n, fit, replace=False))


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
    weights = weights_identity(run)
    model, config = open_run(run, device)
    images = select_images(model, config, dataset, data_dir, split, inputs)
    if not 2 <= k <= len(images):
        raise VaelabError(
            f"k must be between 2 and the number of images ({len(images)}), got {k}; choose k (--k) in that range"
        )
    codes = LatentEncoder(run, device).fit().transform(images.images)  # [N, D]
    rows = baseline_rows(len(images), math.prod(images.image_shape), k, seed)
    pixels = (images.images if rows is None else images.images[torch.from_numpy(rows)]).flatten(1).numpy()
    pixels = pixels.astype(np.float32) / np.float32(255)  # [M, C*H*W]
    dims = min(model.config.latent_dim, len(pixels), pixels.shape[1])
    assignments = {"latent": kmeans(codes.astype(np.float64), k, seed), "pixels": kmeans(pixels, k, seed)}
    assignments["pca"] = kmeans(PCA(n_components=dims, random_state=seed).fit_transform(pixels), k, seed)
    del pixels

    out = Path(out)
    coords, axes = latent.scatter_coordinates(torch.from_numpy(codes))
    panels = [plots.ScatterPanel(f"k-means on the latent, k={k}", coords, torch.from_numpy(assignments["latent"]),
                                 [f"cluster {i}" for i in range(k)], axes)]  # fmt: skip
    if images.labels is not None:
        panels.insert(0, plots.ScatterPanel("true classes", coords, images.labels, images.class_names, axes))
    if images.labels is None:  # one panel, its legend the clusters
        plots.save_latent_scatter(panels, out, legend_title=None)
    else:
        plots.save_latent_scatter(panels, out, shared_legend=False)
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
        "baseline_images": len(images) if rows is None else len(rows),
    }
    if images.labels is not None:
        labels = images.labels.numpy()
        subset = labels if rows is None else labels[rows]
        result["scores"] = {
            name: scores(labels if name == "latent" else subset, clusters)
            for name, clusters in assignments.items()
        }
    result["record"] = str(write_result_record(out, "cluster", {**result, **weights}))
    return result


def format_table(result: dict[str, Any]) -> str:
    """The clustering scores as a small terminal table."""
    if "scores" not in result:
        return f"{result['n_images']} images in {result['k']} clusters (no labels to score against)"
    lines = [f"{'features':<10}{'NMI':>8}{'ARI':>8}{'accuracy':>10}"]
    for name, s in result["scores"].items():
        lines.append(f"{name:<10}{s['nmi']:>8.3f}{s['ari']:>8.3f}{s['accuracy']:>10.3f}")
    return "\n".join(lines)
