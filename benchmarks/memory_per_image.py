"""Training memory per image of the default networks on colour images of 64, 128 and 256 px.

    python benchmarks/memory_per_image.py [--sizes 64 128 256] [--set arch=conv]

Counts, for one training step of the default VAE (resnet, dlogistic loss), the bytes of every
tensor autograd keeps for the backward pass (the activations, which grow with the batch) per
image, plus the bytes of the weights, their gradients and Adam's two moments (fixed). Exact on
any device: it counts tensors, it does not sample an allocator. Peak memory for a batch is
about fixed + batch_size * per_image (float32; less with --amp on a GPU). The last line printed is
one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json

import torch
from overrides import parse_override

from vaelab.config import ModelConfig
from vaelab.models import build_model

BATCH = 2


def measure(size: int, overrides: dict[str, object]) -> dict[str, float]:
    settings = {"loss": "dlogistic", **overrides}
    config = ModelConfig(**settings, image_channels=3, image_height=size, image_width=size).resolved()
    model = build_model(config)
    saved: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # saved, but not per image

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()  # a storage saved twice counts once
        return tensor

    x = torch.rand(BATCH, 3, size, size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x, generator=torch.Generator().manual_seed(0)).loss
    loss.backward()
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "image_size": size,
        "parameters_millions": parameters / 1e6,
        "activations_mb_per_image": sum(saved.values()) / BATCH / 2**20,
        "fixed_mb": 4 * parameters * 4 / 2**20,  # weights, gradients, Adam's two moments
        "conv_channels": config.conv_channels(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a model setting")
    args = parser.parse_args()
    overrides = dict(parse_override(item) for item in args.set)
    rows = []
    for size in args.sizes:
        row = measure(size, overrides)
        rows.append(row)
        print(
            f"{size:>4} px: {row['activations_mb_per_image']:.1f} MB of activations per image, "
            f"{row['fixed_mb']:.0f} MB fixed ({row['parameters_millions']:.1f} M parameters), "
            f"stages {row['conv_channels']}",
            flush=True,
        )
    print(json.dumps({"torch": torch.__version__, "overrides": overrides, "results": rows}))


if __name__ == "__main__":
    main()
