"""Training from a folder held in memory against the same folder streamed from its decoded file.

    python benchmarks/big_folder.py                      # 6,000 64 px colour PNGs, 2 epochs, 2 rounds
    python benchmarks/big_folder.py --images 20000 --workers 2 4

Writes `--images` PNGs of the generated `shapes` set into a temporary folder, then trains the same
small conv VAE (hidden 0, 16-D latent, batch 128) on it with `vaelab train` in a fresh process per
case: the whole folder decoded into memory (the default below `--max-memory`), and streamed from
its decoded file (`--max-memory 0`) with each `--workers` count. The first streamed run
decodes the folder into the cache; every later one reuses it, and is what the rounds time. For
each case: seconds of the whole command, images/s of the last epoch (from metrics.jsonl) and the
peak resident memory of the training process (its workers read the file through the page cache,
which the operating system can drop at will). Rounds are interleaved; medians are reported.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

import vaelab
from vaelab import checkpoint
from vaelab.data.cache import folder_cache_dir

SETTINGS = ["--arch", "conv", "--hidden", "0", "--latent-dim", "16", "--batch-size", "128",
            "--ema", "0", "--lr-schedule", "constant", "--device", "cpu"]  # fmt: skip


def write_folder(folder: Path, count: int, size: int) -> float:
    """`count` shapes images as PNGs; returns the seconds it took."""
    started = time.perf_counter()
    images = vaelab.load_images("shapes", "train", image_size=size).images[:count]
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:06d}.png", compress_level=1)
    return time.perf_counter() - started


def train(run: Path, folder: Path, epochs: int, extra: list[str]) -> dict[str, float]:
    """One `vaelab train` in its own process: wall seconds, last-epoch images/s, peak RSS."""
    command = [sys.executable, "-m", "vaelab", "train", "-o", str(run), "--dataset", f"folder:{folder}",
               "--epochs", str(epochs), *SETTINGS, *extra]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed")
    rate = checkpoint.read_metrics(run)[-1]["images_per_second"]
    return {"seconds": seconds, "images_per_second": rate, "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    args = parser.parse_args()
    result: dict[str, Any] = {"images": args.images, "size": args.size, "epochs": args.epochs}
    with tempfile.TemporaryDirectory() as tmp:
        folder, runs = Path(tmp) / "photos", Path(tmp) / "runs"
        os.environ["VAELAB_CACHE"] = str(Path(tmp) / "cache")  # the decoded file goes with the rest
        result["write_seconds"] = write_folder(folder, args.images, args.size)
        decoded_mb = args.images * 3 * args.size**2 / 1e6
        print(f"{args.images} PNGs of {args.size} px written in {result['write_seconds']:.1f} s "
              f"({decoded_mb:.0f} MB decoded)", flush=True)  # fmt: skip
        first = train(runs / "first", folder, args.epochs, ["--max-memory", "0"])
        cache = max(folder_cache_dir().glob("folder-*.u8"), key=lambda path: path.stat().st_mtime)
        result["first_streamed_run"] = first
        print(
            f"first streamed run (decodes the folder into {cache.name}): {first['seconds']:.1f} s", flush=True
        )
        cases = {"in memory": []}
        cases.update(
            {f"streamed, {w} workers": ["--max-memory", "0", "--workers", str(w)] for w in args.workers}
        )
        figures: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for round_index in range(args.rounds):
            for name, extra in cases.items():
                run = runs / f"{name.replace(' ', '').replace(',', '-')}-{round_index}"
                figures[name].append(train(run, folder, args.epochs, extra))
                row = figures[name][-1]
                print(f"round {round_index + 1}: {name:<22} {row['seconds']:6.1f} s  "
                      f"{row['images_per_second']:7.0f} images/s  peak RSS {row['peak_rss_mb']:6.0f} MB", flush=True)  # fmt: skip
        result["cases"] = {}
        print(f"\n{'case':<24}{'seconds':>9}{'images/s':>10}{'peak RSS MB':>13}")
        for name, rows in figures.items():
            median = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
            result["cases"][name] = {**median, "rounds": rows}
            print(
                f"{name:<24}{median['seconds']:9.1f}{median['images_per_second']:10.0f}{median['peak_rss_mb']:13.0f}"
            )
        memory = result["cases"]["in memory"]["images_per_second"]
        result["streamed_vs_memory"] = {
            name: result["cases"][name]["images_per_second"] / memory for name in cases if name != "in memory"
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
