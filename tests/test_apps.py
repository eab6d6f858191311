"""Embeddings out and clustering in latent space, end to end on small runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vaelab
from conftest import write_images
from vaelab.apps.cluster import cluster_accuracy
from vaelab.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, dict | None, str]:
    code = main([*args, "--json", "--quiet"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out.strip().splitlines()[-1]) if code == 0 else None, captured.err


def test_cluster_accuracy_uses_the_best_matching() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert cluster_accuracy(labels, np.array([5, 5, 3, 3, 9, 9])) == 1.0  # names do not matter
    assert cluster_accuracy(labels, np.array([1, 1, 1, 1, 2, 2])) == pytest.approx(4 / 6)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv"])
def test_embed_writes_the_latent_means(vae_run: Path, tmp_path: Path, suffix: str, capsys) -> None:
    out = tmp_path / f"emb{suffix}"
    code, result, _ = run_cli(["embed", str(vae_run), "-o", str(out)], capsys)
    assert code == 0 and result["n_images"] == 2000 and result["latent_dim"] == 2
    images, labels = vaelab.load_dataset("mnist-mini", "test")
    mu, _ = vaelab.load(vae_run).encode(images[:5].float() / 255)
    if suffix == ".npy":
        latents = np.load(out)
    elif suffix == ".npz":
        with np.load(out) as data:
            latents = data["latents"]
            assert np.array_equal(data["labels"], labels.numpy())
    else:
        rows = list(csv.reader(out.read_text().splitlines()))
        assert rows[0] == ["name", "label", "z0", "z1"] and len(rows) == 2001
        assert rows[1][1] == str(int(labels[0]))
        latents = np.array([[float(v) for v in row[2:]] for row in rows[1:]])
    assert latents.shape == (2000, 2)
    np.testing.assert_allclose(latents[:5], mu.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_embed_image_files_keeps_their_names(vae_run: Path, tmp_path: Path, capsys) -> None:
    files = write_images(tmp_path / "imgs", 3, (28, 28))
    out = tmp_path / "emb.csv"
    code, result, _ = run_cli(
        ["embed", str(vae_run), "--input", str(tmp_path / "imgs"), "-o", str(out)], capsys
    )
    assert code == 0 and result["n_images"] == 3 and not result["labels"]
    assert [row[0] for row in list(csv.reader(out.read_text().splitlines()))[1:]] == [str(f) for f in files]


def test_embed_bad_input(vae_run: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["embed", str(vae_run), "-o", str(tmp_path / "e.txt")], capsys)
    assert code == 2 and ".npy, .npz, .csv" in err
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(tmp_path / "small.png")
    code, _, err = run_cli(
        ["embed", str(vae_run), "--input", str(tmp_path / "small.png"), "-o", str(tmp_path / "e.npy")], capsys
    )
    assert code == 2 and "expects (1, 28, 28)" in err
    assert not (tmp_path / "e.npy").exists()


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
    assert code == 2 and "--k must be between 2 and the number of images (2000)" in err
    assert not (tmp_path / "c.png").exists()
