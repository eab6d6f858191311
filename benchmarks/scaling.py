"""Training throughput in one process against several (torchrun, DistributedDataParallel).

    python benchmarks/scaling.py                       # 1 vs 2 CPU processes, conv VAE, 28 px
    python benchmarks/scaling.py --nproc 1 2 4 --repeats 3 --set arch=mlp

Each case trains `--epochs` epochs of the given settings on mnist-mini with `vaelab train --nproc
N` and reads images per second of its last epoch from metrics.jsonl (so start-up, data loading and
the first epoch's warm-up are left out). Cases are interleaved and repeated; the median is
reported. On a CPU torchrun gives each process one thread (OMP_NUM_THREADS=1) while one process
uses every core, so the comparison is of the same cores used two ways. The GPU comparisons the
issue asks for (fp32 eager vs bf16 vs bf16 + compile) need a GPU and precision options vaelab does
not have yet; they are not measured here. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from overrides import parse_override

import vaelab
from vaelab import checkpoint

BASE: dict[str, Any] = {"arch": "conv", "hidden": 0, "latent_dim": 16, "batch_size": 256, "device": "cpu",
                        "decoder": "factorized", "lr_schedule": "constant"}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], type=parse_override, metavar="NAME=VALUE")
    args = parser.parse_args()
    settings = {**BASE, **dict(args.set), "epochs": args.epochs}
    rates: dict[int, list[float]] = {n: [] for n in args.nproc}
    walls: dict[int, list[float]] = {n: [] for n in args.nproc}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for n in args.nproc:
                run = Path(tmp) / f"n{n}-r{repeat}"
                started = time.perf_counter()
                vaelab.train(run, nproc=n, progress=False, **settings)
                walls[n].append(time.perf_counter() - started)
                rates[n].append(checkpoint.read_metrics(run)[-1]["images_per_second"])
                print(f"repeat {repeat + 1}: {n} process(es): {rates[n][-1]:8.0f} images/s "
                      f"(last epoch), {walls[n][-1]:.1f} s in all")  # fmt: skip
    result: dict[str, Any] = {"settings": settings, "repeats": args.repeats}
    single = statistics.median(rates[args.nproc[0]])
    for n in args.nproc:
        median = statistics.median(rates[n])
        result[f"nproc_{n}"] = {"images_per_second": median, "wall_seconds": statistics.median(walls[n]),
                                "speedup": median / single}  # fmt: skip
        print(f"{n} process(es): {median:.0f} images/s, {median / single:.2f}x of {args.nproc[0]}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
