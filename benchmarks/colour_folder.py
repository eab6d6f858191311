"""A folder of your own colour images: what `vaelab train --dataset folder:PATH` gives by default.

    python benchmarks/colour_folder.py                         # tinted digits, 64 px, 3,000 images
    python benchmarks/colour_folder.py --images 10000 --image-size 128
    python benchmarks/colour_folder.py --grey              # the same images in grey (luminance)

Writes a folder of colour PNGs that is not `shapes`: the embedded MNIST digits, upscaled to
--image-size, each stroke in a colour of random hue on a background of another random hue that
darkens from top to bottom (seeded; every image different); with --grey, their luminance, saved
as grey PNGs. Then trains on it, one after the other on the same machine:

- `grey defaults`: the settings a colour folder trained with before colour images had defaults of
  their own (the resnet VAE with the Bernoulli loss, batch 128, 45 epochs, 2 + 10 warm-up epochs);
- `defaults`: `vaelab train --dataset folder:PATH` with nothing else given;
- `defaults, 45 epochs`: the same for as many epochs as the grey defaults, to tell the settings
  from the training length.

Each is scored on the folder's test split (one image in five) with `vaelab evaluate`: PSNR and SSIM
of the reconstructions, and bits per dimension where the loss is a likelihood of 8-bit images. The
last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from overrides import parse_override
from PIL import Image

import vaelab
from vaelab import checkpoint

# TrainConfig's defaults, which a colour folder trained with until colour images had their own
GREY_DEFAULTS: dict[str, Any] = {"arch": "resnet", "loss": "bernoulli", "hidden": 512, "batch_size": 128,
                                 "epochs": 45, "lr_warmup_epochs": 2, "kl_warmup_epochs": 10}  # fmt: skip


def write_tinted_digits(folder: Path, n: int, size: int, seed: int = 0, grey: bool = False) -> float:
    """Write `n` colour PNGs of size x size into `folder` (grey ones: their luminance); return the
    seconds it took."""
    started = time.perf_counter()
    digits = vaelab.load_images("mnist-mini", "train").images[:n].float() / 255  # [n, 1, 28, 28]
    if len(digits) < n:
        digits = torch.cat([digits, vaelab.load_images("mnist-mini", "test").images[: n - len(digits)] / 255])
    strokes = F.interpolate(digits, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    rng = np.random.default_rng(seed)
    shade = torch.linspace(1.0, 0.45, size).view(1, size, 1)  # the background darkens downwards
    folder.mkdir(parents=True, exist_ok=True)
    for i, stroke in enumerate(strokes):
        fg_hue = rng.random()
        bg_hue = (fg_hue + rng.uniform(0.25, 0.75)) % 1.0
        fg = torch.tensor(colorsys.hsv_to_rgb(fg_hue, rng.uniform(0.6, 1.0), rng.uniform(0.8, 1.0)))
        bg = torch.tensor(colorsys.hsv_to_rgb(bg_hue, rng.uniform(0.3, 0.8), rng.uniform(0.4, 0.8)))
        image = bg.view(3, 1, 1) * shade * (1 - stroke) + fg.view(3, 1, 1) * stroke  # [3, size, size]
        pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        picture = Image.fromarray(pixels)
        (picture.convert("L") if grey else picture).save(folder / f"{i:05d}.png")
    return time.perf_counter() - started


def train_and_score(run: Path, dataset: str, settings: dict[str, Any], device: str) -> dict[str, Any]:
    started = time.perf_counter()
    summary = vaelab.train(run, dataset=dataset, device=device, progress=False, **settings)
    minutes = (time.perf_counter() - started) / 60
    scores = vaelab.evaluate(run, k=1, device=device, progress=False, quality=False)
    recorded = json.loads((run / "config.json").read_text())
    rates = [row["images_per_second"] for row in checkpoint.read_metrics(run)]
    row = {
        "settings": settings,
        "trained_with": {
            "arch": recorded["model"]["arch"],
            "loss": recorded["model"]["loss"],
            "batch_size": recorded["train"]["batch_size"],
            "epochs": recorded["train"]["epochs"],
        },
        "train_minutes": round(minutes, 2),
        "best_epoch": summary.get("best_epoch"),
        "train_images_per_second": round(statistics.median(rates)),
    }
    row.update({key: scores.get(key) for key in ("psnr", "ssim", "bits_per_dim", "png_bits_per_dim")})
    return row


def show(label: str, row: dict[str, Any]) -> None:
    bits = f"{row['bits_per_dim']:.3f}" if row["bits_per_dim"] is not None else "-"
    used = row["trained_with"]
    print(
        f"{label:<20} {used['arch']}/{used['loss']}, batch {used['batch_size']}, {used['epochs']} epochs: "
        f"PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.3f}  bits/dim {bits} (PNG {row['png_bits_per_dim']:.3f})"
        f"  trained {row['train_minutes']:.1f} min ({row['train_images_per_second']} images/s)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=3000, help="images in the folder (at most 10,000)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument("--only", choices=("grey", "defaults", "defaults-45"), action="append",
                        help="train only these (repeatable; default all three)")  # fmt: skip
    parser.add_argument("--grey", action="store_true", help="save the images in grey (their luminance)")
    parser.add_argument("--keep", type=Path, help="keep the folder and run folders under this folder")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    overrides = dict(parse_override(item) for item in args.set)
    where = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    )
    kind = "grey" if args.grey else "colour"
    print(f"torch {torch.__version__}, {where}; {args.images} {kind} images at {args.image_size} px; "
          f"overrides: {overrides or 'none'}")  # fmt: skip
    out: dict[str, Any] = {"torch": torch.__version__, "device": where, "images": args.images,
                           "image_size": args.image_size, "grey": args.grey, "overrides": overrides}  # fmt: skip
    cases = {
        "grey": ("grey defaults", GREY_DEFAULTS),
        "defaults": ("defaults", {}),
        "defaults-45": ("defaults, 45 epochs", {"epochs": 45}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        folder = root / "tinted-digits"
        seconds = write_tinted_digits(folder, args.images, args.image_size, grey=args.grey)
        print(f"wrote {args.images} PNGs in {seconds:.1f} s to {folder}")
        out["write_seconds"] = round(seconds, 1)
        results = {}
        for key in args.only or list(cases):
            label, settings = cases[key]
            results[key] = train_and_score(
                root / key, f"folder:{folder}", {**settings, **overrides}, args.device
            )
            show(label, results[key])
        out["results"] = results
    print(json.dumps(out))


if __name__ == "__main__":
    main()
