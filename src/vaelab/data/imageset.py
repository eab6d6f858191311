"""The one in-memory form every image source ends as."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from vaelab.data.stream import ImageFile
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
    # For a folder too large for memory: the decoded file, and the row of it where this split
    # starts. `images` is then a view of the memory-mapped file: index it, never copy it whole.
    file: ImageFile | None = None
    file_start: int = 0

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


def memory_budget(max_memory: str | None) -> int | None:
    """Bytes a decoded dataset may take in memory: `max_memory` ("8GB", "500MB", "0", or a number of
    bytes), or by default half of the memory available now (None when unknown)."""
    if max_memory is None:
        available = available_memory()
        return None if available is None else available // 2
    return parse_bytes(max_memory)


UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
         "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_bytes(text: str) -> int:
    """8GB -> 8e9 bytes (KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024)."""
    cleaned = str(text).strip().upper().replace(" ", "")
    number = cleaned.rstrip("KMGTIB")
    unit = cleaned[len(number) :]
    try:
        value = float(number) * UNITS[unit]
    except (ValueError, KeyError):
        raise VaelabError(f"max_memory {text!r} is not a size; write e.g. 8GB, 500MB or 0") from None
    if value < 0:
        raise VaelabError(f"max_memory must be zero or more, got {text!r}")
    return int(value)


def ensure_fits_in_memory(count: int, channels: int, height: int, width: int, what: str) -> None:
    """Raise VaelabError before decoding `count` uint8 images that would not fit in memory."""
    needed, available = count * channels * height * width, available_memory()
    if available is not None and needed > MEMORY_SHARE * available:
        raise VaelabError(
            f"{count:,} images of {what} at {channels}x{height}x{width} need {needed / 1e9:.1f} GB in memory, "
            f"more than the {available / 1e9:.1f} GB available; choose a smaller image_size (--image-size)"
        )
