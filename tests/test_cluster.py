"""`vaelab cluster`: matching clusters to classes, and the command end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from vaelab.apps.cluster import cluster_accuracy


def test_cluster_accuracy_uses_the_best_matching() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert cluster_accuracy(labels, np.array([5, 5, 3, 3, 9, 9])) == 1.0  # names do not matter
    assert cluster_accuracy(labels, np.array([1, 1, 1, 1, 2, 2])) == pytest.approx(4 / 6)


def test_cluster_scores_latents_pixels_and_pca(vae_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "c.png"
    code, result, _ = run_cli(["cluster", str(vae_run), "--k", "10", "-o", str(out)], capsys)
    assert code == 0 and set(result["scores"]) == {"latent", "pixels", "pca"}
    for s in result["scores"].values():
        assert 0.1 < s["accuracy"] <= 1 and 0 < s["nmi"] <= 1 and -0.5 < s["ari"] <= 1
    assert result["scores"]["pixels"]["accuracy"] > 0.35  # k-means on MNIST pixels is well above chance
    with Image.open(out) as image:
        assert np.asarray(image.convert("L")).std() > 10
    rows = list(csv.reader(Path(result["assignments"]).read_text().splitlines()))
    assert len(rows) == 2001 and {int(r[2]) for r in rows[1:]} <= set(range(10))


def test_cluster_bad_k(vae_run: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["cluster", str(vae_run), "--k", "5000", "-o", str(tmp_path / "c.png")], capsys)
    assert code == 2 and "k must be between 2 and the number of images (2000)" in err
    assert not (tmp_path / "c.png").exists()


def test_pixel_baselines_over_the_memory_budget_cluster_a_random_subset(
    vae_run: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # k-means and PCA hold three float copies of the pixels: 6,000 colour images of 64 px took
    # 1.8 GB in float64 (a memory limit killed `vaelab cluster`), 0.9 GB now in float32; beyond
    # half the available memory they cluster a random subset that fits, and say so.
    monkeypatch.setattr("vaelab.data.imageset.available_memory", lambda: 2 * 500 * 3 * 4 * 784)
    out = tmp_path / "c.png"
    code, result, err = run_cli(["cluster", str(vae_run), "--k", "10", "-o", str(out)], capsys)
    assert code == 0 and result["n_images"] == 2000 and result["baseline_images"] == 500
    assert "the pixel and PCA baselines cluster 500 of the 2000 images, drawn at random" in err
    assert result["scores"]["pixels"]["accuracy"] > 0.35 and result["scores"]["pca"]["accuracy"] > 0.35
    rows = list(csv.reader(Path(result["assignments"]).read_text().splitlines()))
    assert len(rows) == 2001  # the latent clusters every image


def test_images_without_labels_get_a_legend_of_clusters_not_classes(
    vae_run: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import write_images
    from vaelab import plots

    legends: list[list[str | None]] = []
    save = plots.save_figure

    def recording(fig, path):
        legends.append([legend.get_title().get_text() or None for legend in fig.legends])
        return save(fig, path)

    monkeypatch.setattr(plots, "save_figure", recording)
    write_images(tmp_path / "photos", 12, (28, 28))
    code, result, _ = run_cli(
        [
            "cluster",
            str(vae_run),
            "--k",
            "3",
            "--input",
            str(tmp_path / "photos"),
            "-o",
            str(tmp_path / "c.png"),
        ],
        capsys,
    )
    assert (
        code == 0 and "scores" not in result and legends == [[None]]
    )  # it said "class" over "cluster 0, 1, 2"
    rows = list(csv.reader(Path(result["assignments"]).read_text().splitlines()))
    assert len(rows) == 13 and {r[2] for r in rows[1:]} <= {"0", "1", "2"}
