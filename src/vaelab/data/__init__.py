"""Where images come from. Every source ends as one uint8 tensor [N, C, H, W] in memory (a folder
too large for memory as a view of a memory-mapped file it was decoded into once, see cache.py).

Names: ``mnist-mini`` (embedded, 8,000 train / 2,000 test real MNIST digits, no network),
``mnist``, ``fashion-mnist``, ``kmnist`` (IDX files from ``data_dir``, a known system folder, or
torchvision's download), ``shapes`` (generated colour shapes with known factors, 20,000 train / 4,000
test, no network) and ``folder:PATH`` (a directory of images, optionally one sub-folder per
class).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from vaelab.data.imageset import ImageSet, ensure_fits_in_memory
from vaelab.errors import VaelabError

__all__ = ["DATASET_NAMES", "IDX_DATASETS", "ImageSet", "load_dataset", "load_images", "resize_uint8"]

IDX_DATASETS = ("mnist", "fashion-mnist", "kmnist")
DATASET_NAMES = ("mnist-mini", "shapes", *IDX_DATASETS, "folder:PATH")


def load_images(
    name: str,
    split: str = "train",
    data_dir: str | None = None,
    image_size: int | None = None,
    max_memory: str | None = None,
) -> ImageSet:
    """Load one split of a named dataset as an ImageSet (see the module docstring for names).

    A folder larger than `max_memory` (default: half the available memory) is decoded once into a
    memory-mapped file in $VAELAB_CACHE/folders instead of into memory (vaelab.data.cache)."""
    if split not in ("train", "test"):
        raise VaelabError(f"split must be 'train' or 'test', got {split!r}")
    if name == "mnist-mini":
        from vaelab.data.embedded import load_mnist_mini

        result = load_mnist_mini(split)
    elif name == "shapes":
        from vaelab.data.shapes import load_shapes

        return load_shapes(split, image_size)
    elif name in IDX_DATASETS:
        from vaelab.data.idx import load_idx_dataset

        result = load_idx_dataset(name, split, data_dir)
    elif name.startswith("folder:"):
        from vaelab.data.folder import load_folder

        return load_folder(name.removeprefix("folder:"), split, image_size, max_memory)
    elif Path(name).is_dir():  # a folder named as it is: say how to name it
        raise VaelabError(
            f"unknown dataset {name!r}; it is a folder: to train on its images, use folder:{name}"
        )
    else:
        raise VaelabError(f"unknown dataset {name!r}; use one of: {', '.join(DATASET_NAMES)}")
    if image_size is not None and result.images.shape[-2:] != (image_size, image_size):
        ensure_fits_in_memory(len(result.images), result.images.shape[1], image_size, image_size, name)
        result.images = resize_uint8(result.images, image_size)
    return result


def load_dataset(
    name: str, split: str = "train", data_dir: str | None = None, image_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return ``(images, labels)``: uint8 ``[N, C, H, W]`` and int64 ``[N]`` (or None)."""
    result = load_images(name, split, data_dir, image_size)
    return result.images, result.labels


RESIZE_CHUNK_BYTES = 256 * 2**20  # float32 working memory of one resized chunk


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 images [N, C, H, W] to size x size with antialiased bilinear filtering, a chunk
    at a time, so the float copies take RESIZE_CHUNK_BYTES at most beside the uint8 result."""
    n, channels, height, width = images.shape
    out = torch.empty((n, channels, size, size), dtype=torch.uint8)
    chunk = max(1, RESIZE_CHUNK_BYTES // (4 * channels * max(size * size, height * width)))
    for start in range(0, n, chunk):
        part = images[start : start + chunk].float()
        resized = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True)
        out[start : start + chunk] = resized.round().clamp(0, 255).to(torch.uint8)
    return out
