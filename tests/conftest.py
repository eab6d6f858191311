"""Shared fixtures: small trained runs on the embedded digits, and tiny image folders."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vaelab
from vaelab.cli import main
from vaelab.config import PLAIN_TRAINING


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep downloads and cached classifiers of the tests out of the user's cache folder."""
    os.environ["VAELAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def vae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-D conv VAE trained for 2 epochs on mnist-mini (a few seconds on a laptop CPU)."""
    run = tmp_path_factory.mktemp("runs") / "vae2"
    vaelab.train(run, model="vae", latent_dim=2, epochs=2, device="cpu", progress=False, **PLAIN_TRAINING)
    return run


@pytest.fixture(scope="session")
def ae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-D MLP AE trained for 1 epoch on mnist-mini."""
    run = tmp_path_factory.mktemp("runs") / "ae2"
    vaelab.train(run, model="ae", arch="mlp", latent_dim=2, epochs=1, device="cpu", progress=False)
    return run


def write_images(
    folder: Path, count: int, size: tuple[int, int], mode: str = "L", seed: int = 0
) -> list[Path]:
    """Write `count` random images of `size` (width, height) into folder; return their paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
        path = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
        paths.append(path)
    return paths


def write_shapes_folder(
    root: Path, count: int, size: int, columns: dict[str, Callable[[dict[str, np.ndarray], int], object]]
) -> tuple[Path, Path]:
    """The first `count` training images of `shapes` as `size` px PNGs in root/images, and
    root/labels.csv laid out as CelebA's attribute list: the file name, then one column per entry
    of `columns` (name -> its value for image i, from the factors)."""
    from vaelab.data import shapes

    folder = root / "images"
    folder.mkdir(parents=True)
    factors = {name: values[:count] for name, values in shapes.factor_table("train").items()}
    images = shapes.render(factors, size).permute(0, 2, 3, 1).numpy()
    labels = root / "labels.csv"
    with open(labels, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", *columns])
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{i:04d}.png")
            writer.writerow([f"{i:04d}.png", *(value(factors, i) for value in columns.values())])
    return folder, labels


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict | None, str]:
    """Run `vaelab ARGS --json --quiet`; return exit code, the last stdout line as JSON, stderr."""
    code = main([*args, "--json", "--quiet"])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 else None), captured.err


def png(path: str | Path) -> np.ndarray:
    """A PNG file as a greyscale float array (fails if the file is not a PNG)."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("L"), dtype=np.float64)
