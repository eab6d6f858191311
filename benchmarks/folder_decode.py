"""Reading a folder of image files: one decoding thread against vaelab's default.

    python benchmarks/folder_decode.py                   # 3,000 photo-sized JPEGs and PNGs, 3 rounds
    python benchmarks/folder_decode.py --images 10000 --repeats 5

Writes `--images` colour files of 178x218 pixels (the size of CelebA's aligned faces; smooth
random pictures, so that they compress like photos) as JPEG and as PNG into a temporary folder,
then reads each folder as `vaelab train` does: into memory (`load_folder`, both splits) and, at
`--image-size 64`, decoded into the memory-mapped cache (`--max-memory 0`; a fresh cache folder
each time, so every read decodes). Each case runs with one decoding thread and with the default
(`decode_threads()`: this machine's cores, at most MAX_DECODE_THREADS), interleaved and repeated;
the median seconds and images/s are reported. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vaelab.data import cache
from vaelab.data.folder import load_folder
from vaelab.progress import bars_shown


def write_folder(folder: Path, count: int, suffix: str) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (28, 23, 3), dtype=np.uint8))
        coarse.resize((178, 218), Image.Resampling.BICUBIC).save(folder / f"{i:06d}{suffix}", quality=90)


def read(folder: Path, how: str, scratch: Path) -> float:
    """Seconds to read both splits of `folder` into memory, or to decode it into a new cache."""
    started = time.perf_counter()
    with bars_shown(False):
        _read(folder, how, scratch)
    return time.perf_counter() - started


def _read(folder: Path, how: str, scratch: Path) -> None:
    if how == "in memory":
        for split in ("test", "train"):
            load_folder(str(folder), split, None, max_memory="100GB")
    else:
        with tempfile.TemporaryDirectory(dir=scratch) as fresh:
            load_folder(str(folder), "train", 64, max_memory="0", cache_dir=Path(fresh))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    default_threads = cache.decode_threads()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for suffix in (".jpg", ".png"):
            write_folder(root / suffix[1:], args.images, suffix)
        cases = [(fmt, how) for fmt in ("jpg", "png") for how in ("in memory", "into the cache")]
        for _ in range(args.repeats):
            for fmt, how in cases:
                for threads in (1, default_threads):
                    cache.MAX_DECODE_THREADS = threads
                    seconds = read(root / fmt, how, root)
                    results.setdefault(f"{fmt}, {how}", {}).setdefault(str(threads), []).append(seconds)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"{args.images:,} colour files of 178x218, {cores} cores; median of {args.repeats} interleaved rounds"
    )
    print(f"{'case':<26}{'1 thread':>16}{f'{default_threads} threads':>16}{'speed-up':>10}")
    table: list[dict[str, Any]] = []
    for case, by_threads in results.items():
        one, many = (statistics.median(by_threads[str(n)]) for n in (1, default_threads))
        print(f"{case:<26}{one:>7.2f} s {args.images / one:>5.0f}/s{many:>7.2f} s {args.images / many:>5.0f}/s"
              f"{one / many:>9.2f}x")  # fmt: skip
        table.append({"case": case, "seconds_1_thread": round(one, 3), "seconds_default": round(many, 3),
                      "speed_up": round(one / many, 3)})  # fmt: skip
    print(json.dumps({"images": args.images, "cores": cores, "default_threads": default_threads,
                      "repeats": args.repeats, "results": table}))  # fmt: skip


if __name__ == "__main__":
    main()
