"""The one in-memory form every image source ends as."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageSet:
    """Images of one split: uint8 [N, C, H, W], int64 labels [N] or None, and where they came from."""

    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: list[str] | None = None
    paths: list[str] | None = None  # one per image, for folder datasets

    @property
    def image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.images.shape[1:]
        return int(channels), int(height), int(width)

    def __len__(self) -> int:
        return len(self.images)
