"""Bytes per digit against PSNR and SSIM: the entropy-coded latent codes of an AE beside PNG, JPEG
and WebP, every byte of every file counted.

    python benchmarks/compression.py                  # train the README's 32-D AE (about 1 minute)
    python benchmarks/compression.py --run runs/ae32  # or use a trained run
    python benchmarks/compression.py --codec-sample   # JPEG and WebP on 500 of the test digits vs all

Compresses (1) 64 mnist-mini test digits written as PNG files, into one file that keeps their
names, and (2) the whole test split (2,000 digits, numbered), at every step of the rate-distortion
curve; JPEG and WebP (Pillow; WebP at method 6) at every quality, one file per digit. Targets: at
most 20 bytes per digit at 20 dB or more, and at equal PSNR at least 10x smaller than the best of
JPEG and WebP. `compress` scores JPEG and WebP on at most CODEC_IMAGES of the images, evenly
spread; `--codec-sample` measures how far that moves every quality's bytes and PSNR from all 2,000
test digits, and the seconds each takes (interleaved, median of 3). The last line printed is one
JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from vaelab.apps.compress import (
    CODEC_IMAGES,
    JPEG_QUALITIES,
    WEBP_QUALITIES,
    codec_curve,
    codec_sample,
    compress,
    format_table,
)
from vaelab.data import load_images
from vaelab.training import train

RECIPE = {"model": "ae", "arch": "conv", "hidden": 0, "ema": 0.0, "lr_schedule": "constant", "latent_dim": 32}


def summary(result: dict) -> dict:
    """The model's curve and the best of JPEG and WebP at the PSNR of each of its points."""
    others = result["jpeg"] + result["webp"]
    points = []
    for point in result["rate_distortion"]:
        as_good = [p["bytes_per_image"] for p in others if p["psnr"] >= point["psnr"]]
        best = min(as_good) if as_good else None
        points.append({**point, "best_jpeg_webp_bytes_at_least_as_good": best,
                       "times_smaller": best / point["bytes_per_image"] if best else None})  # fmt: skip
    return {"n_images": result["n_images"], "png_bytes_per_image": result["png_bytes_per_image"],
            "curve": points, "jpeg": result["jpeg"], "webp": result["webp"]}  # fmt: skip


def measure_codec_sample() -> dict:
    """JPEG and WebP curves on CODEC_IMAGES evenly spread test digits against all of them: the
    largest relative difference in bytes and absolute difference in PSNR over the qualities, and
    the median seconds of each (interleaved, 3 times)."""
    images = load_images("mnist-mini", "test").images.numpy()
    spread = images[codec_sample(len(images))]
    seconds: dict[str, list[float]] = {"all": [], "sample": []}
    curves = {}
    for _ in range(3):
        for name, subset in (("all", images), ("sample", spread)):
            start = time.perf_counter()
            curves[name] = [
                codec_curve(subset, "JPEG", JPEG_QUALITIES),
                codec_curve(subset, "WEBP", WEBP_QUALITIES),
            ]
            seconds[name].append(time.perf_counter() - start)
    pairs = [(a, b) for full, part in zip(curves["all"], curves["sample"]) for a, b in zip(full, part)]
    figures = {
        "images": len(images),
        "sample": CODEC_IMAGES,
        "max_bytes_difference": max(abs(b["bytes_per_image"] / a["bytes_per_image"] - 1) for a, b in pairs),
        "max_psnr_difference_db": max(abs(b["psnr"] - a["psnr"]) for a, b in pairs),
        "seconds_all": statistics.median(seconds["all"]),
        "seconds_sample": statistics.median(seconds["sample"]),
    }
    print(
        f"JPEG and WebP at every quality on {CODEC_IMAGES} of {len(images)} test digits: bytes within "
        f"{figures['max_bytes_difference']:.2%}, PSNR within {figures['max_psnr_difference_db']:.3f} dB; "
        f"{figures['seconds_sample']:.1f} s instead of {figures['seconds_all']:.1f} s (median of 3)"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", help="a trained run (default: train the README's 32-D AE)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--codec-sample", action="store_true", help="only measure JPEG and WebP on a sample")
    args = parser.parse_args()
    if args.codec_sample:
        print(json.dumps(measure_codec_sample()))
        return
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else Path(tmp) / "ae32"
        if not args.run:
            start = time.perf_counter()
            train(run, epochs=args.epochs, device="cpu", progress=False, **RECIPE)
            figures["train_seconds"] = round(time.perf_counter() - start, 1)
        folder = Path(tmp) / "digits"
        folder.mkdir()
        for i, image in enumerate(load_images("mnist-mini", "test").images[:64].numpy()):
            Image.fromarray(image[0]).save(folder / f"digit_{i:04d}.png")
        for name, options in (("64 files", {"inputs": [str(folder)]}), ("test split", {"split": "test"})):
            result = compress(run, out=Path(tmp) / "digits.vlz", device="cpu", **options)
            print(f"== {name}\n{format_table(result)}\n", flush=True)
            figures[name] = summary(result)
            for point in figures[name]["curve"]:
                times = point["times_smaller"]
                print(f"  step {point['step']:<6g} {point['bytes_per_image']:6.1f} bytes {point['psnr']:6.2f} dB: "
                      + (f"{times:.1f}x smaller than the best JPEG/WebP as good" if times else "no JPEG/WebP as good"))  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
