"""Colour images with known factors: the generated `shapes` set, a VAE's bits per dimension on it,
and how disentangled β-VAEs are.

    python benchmarks/shapes.py generate                     # seconds to generate the dataset
    python benchmarks/shapes.py quality                      # the default VAE on 64 px shapes: PSNR, bits/dim
    python benchmarks/shapes.py beta --image-size 32 --set epochs=8  # MIG of AE, VAE and β-VAEs

`generate` times `vaelab.load_images("shapes", split)` for both splits at 64 px, median of 3.
`quality` trains `vaelab train --dataset shapes` (colour images' defaults: a conv VAE with `--loss
dlogistic`, 10 epochs; plus --set overrides) on the CPU (or `--device cuda`) and scores it with `vaelab evaluate` (NLL in nats and bits per dimension beside PNG's bits per
dimension on the same test images, PSNR, SSIM, MIG). Targets: training within 10 minutes on 2
CPU cores and at least 26 dB PSNR. `beta` trains an AE, the plain VAE (β = 1) and β-VAEs (β = 4 and
β = 8) with one set of settings and reports each one's MIG and PSNR; target: a β-VAE's MIG above
the plain VAE's. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from overrides import parse_override

import vaelab
from vaelab import checkpoint

TARGET_PSNR, TARGET_MINUTES = 26.0, 10.0
# the grey defaults' batch and warm-ups, with which the MIG figures were measured (not colour images' defaults)
BETA_SETTINGS: dict[str, Any] = {"arch": "conv", "hidden": 256, "latent_dim": 10, "loss": "bernoulli", "batch_size": 128,
                                 "lr_warmup_epochs": 2, "kl_warmup_epochs": 10}  # fmt: skip


def generate(repeats: int = 3) -> dict[str, Any]:
    seconds: dict[str, float] = {}
    for split in ("train", "test"):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            images = vaelab.load_images("shapes", split)
            times.append(time.perf_counter() - started)
        seconds[split] = statistics.median(times)
        print(
            f"shapes {split}: {len(images)} images {tuple(images.images.shape[1:])} in {seconds[split]:.2f} s"
        )
    return {"generate_seconds": seconds}


def train_and_score(
    run: Path, settings: dict[str, Any], k: int, n_images: int | None, device: str = "cpu"
) -> dict[str, Any]:
    started = time.perf_counter()
    summary = vaelab.train(run, dataset="shapes", device=device, progress=False, **settings)
    minutes = (time.perf_counter() - started) / 60
    likelihood = settings.get("model", "vae") == "vae" and settings.get("loss") not in ("l1", "l2")
    scores = vaelab.evaluate(run, k=k if likelihood else None,  # l1 / l2 are distances: no NLL
                             n_images=n_images, device=device, progress=False, quality=False)  # fmt: skip
    keys = ("nll", "bits_per_dim", "png_bits_per_dim", "psnr", "ssim", "mig", "kl", "active_units")
    rates = [row["images_per_second"] for row in checkpoint.read_metrics(run)]
    row = {"settings": settings, "device": device, "train_minutes": round(minutes, 2), "epochs": summary["epochs"],
           "train_images_per_second": round(statistics.median(rates))}  # fmt: skip
    row.update({key: scores.get(key) for key in keys})
    row["mig_per_factor"] = scores.get("mig_per_factor")
    return row


def show(label: str, row: dict[str, Any]) -> None:
    bits = f"{row['bits_per_dim']:.3f}" if row["bits_per_dim"] is not None else "-"
    print(
        f"{label:<12} PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.3f}  bits/dim {bits} "
        f"(PNG {row['png_bits_per_dim']:.3f})  MIG {row['mig']:.3f}  trained {row['train_minutes']:.1f} min "
        f"({row['train_images_per_second']} images/s)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", choices=("generate", "quality", "beta"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--k", type=int, default=100, help="importance samples per test image")
    parser.add_argument("--n-images", type=int, default=1000, help="test images scored")
    parser.add_argument("--keep", type=Path, help="keep the run folders under this folder")
    parser.add_argument("--device", default="cpu", help="cpu (the targets' machine) or cuda")
    args = parser.parse_args()
    overrides = dict(parse_override(item) for item in args.set)
    where = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    )
    print(f"torch {torch.__version__}, {where}; overrides: {overrides or 'none'}")
    out: dict[str, Any] = {
        "torch": torch.__version__,
        "device": where,
        "part": args.part,
        "overrides": overrides,
    }
    if args.part == "generate":
        out.update(generate())
        print(json.dumps(out))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        if args.part == "quality":
            settings = {"loss": "dlogistic", "image_size": args.image_size, **overrides}
            row = train_and_score(root / "shapes-quality", settings, args.k, args.n_images, args.device)
            show("vae", row)
            out["result"] = row
            out["targets"] = {
                "psnr_at_least_26": row["psnr"] >= TARGET_PSNR,
                "train_minutes_at_most_10": row["train_minutes"] <= TARGET_MINUTES,
            }
        else:
            rows = {}
            for label, model_settings in (("ae", {"model": "ae"}), ("vae", {"beta": 1.0}),
                                          ("beta-vae 4", {"beta": 4.0}), ("beta-vae 8", {"beta": 8.0})):  # fmt: skip
                settings = {**BETA_SETTINGS, **model_settings, "image_size": args.image_size, **overrides}
                rows[label] = train_and_score(
                    root / label.replace(" ", "-"), settings, args.k, args.n_images, args.device
                )
                show(label, rows[label])
            out["results"] = rows
            best_beta = max(rows["beta-vae 4"]["mig"], rows["beta-vae 8"]["mig"])
            out["targets"] = {"beta_vae_mig_above_vae": best_beta > rows["vae"]["mig"]}
        print(f"targets: {out['targets']}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
