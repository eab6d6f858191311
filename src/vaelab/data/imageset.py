"""The one in-memory form every image source ends as."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from vaelab.errors import VaelabError


@dataclass
class ImageSet:
    """Images of one split: uint8 [N, C, H, W], int64 labels [N] or None, and where they came from."""

    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: list[str] | None = None
    paths: list[str] | None = None  # one per image, for folder datasets
    # Known characteristics of each image, name -> array [N]: the generative factors of `shapes`, or
    # the attribute columns of a folder's labels CSV.
    factors: dict[str, np.ndarray] | None = None
    # Names of the values of categorical factors (value i is named names[i]), e.g. background.
    factor_value_names: dict[str, list[str]] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.images.shape[1:]
        return int(channels), int(height), int(width)

    def __len__(self) -> int:
        return len(self.images)


MEMORY_SHARE = 0.8  # at most this share of the available memory may hold one dataset


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux: MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def ensure_fits_in_memory(count: int, channels: int, height: int, width: int, what: str) -> None:
    """Raise VaelabError before decoding `count` uint8 images that would not fit in memory."""
    needed, available = count * channels * height * width, available_memory()
    if available is not None and needed > MEMORY_SHARE * available:
        raise VaelabError(
            f"{count:,} images of {what} at {channels}x{height}x{width} need {needed / 1e9:.1f} GB in memory, "
            f"more than the {available / 1e9:.1f} GB available; choose a smaller image_size (--image-size)"
        )
