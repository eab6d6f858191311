"""Training throughput: one process against several (torchrun), and on a GPU, fp32 against bf16 and
bf16 + torch.compile.

    python benchmarks/scaling.py                       # 1 vs 2 CPU processes, conv VAE, 28 px
    python benchmarks/scaling.py --nproc 1 2 4 --repeats 3 --set arch=mlp
    python benchmarks/scaling.py --device cuda         # fp32 / bf16 / bf16 + compile, 28 and 64 px

Each case trains `--epochs` epochs with `vaelab.train` and reads the images per second of its
last epoch from metrics.jsonl (so start-up, data loading, compilation and the first epoch's
warm-up are left out). Cases are interleaved and repeated; the median is reported.

CPU (`--device cpu`, the default): `vaelab train --nproc N` on mnist-mini. `--nproc N` shares the
machine's torch threads among the N processes (OMP_NUM_THREADS = threads // N, unless set), so the
comparison is of the same cores used two ways.

GPU (`--device cuda`): one process on one card, the conv VAE at 28 px (mnist-mini, grey) and at
64 px (`shapes`, RGB), each trained three ways: fp32 without compilation (TF32 convolutions, as
PyTorch does by default), `--precision bf16`, and `--precision bf16 --compile`. Convolutions run
channels-last on CUDA in every case. Target: bf16 + compile at least 2x fp32 eager at 64 px.
The last line printed is one JSON object.
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

BASE: dict[str, Any] = {"arch": "conv", "hidden": 0, "latent_dim": 16, "batch_size": 256,
                        "decoder": "factorized", "lr_schedule": "constant"}  # fmt: skip
GPU_SIZES: dict[str, dict[str, Any]] = {
    "28px": {"dataset": "mnist-mini"},
    "64px": {"dataset": "shapes", "image_size": 64},
}
GPU_MODES: dict[str, dict[str, Any]] = {
    "fp32": {"precision": "fp32", "compile": False},
    "bf16": {"precision": "bf16", "compile": False},
    "bf16+compile": {"precision": "bf16", "compile": True},
}


def timed_train(run: Path, settings: dict[str, Any], nproc: int = 1) -> tuple[float, float]:
    """(images/s of the last epoch, seconds of the whole call) of one training run."""
    started = time.perf_counter()
    vaelab.train(run, nproc=nproc, progress=False, **settings)
    return checkpoint.read_metrics(run)[-1]["images_per_second"], time.perf_counter() - started


def interleaved(
    cases: dict[str, dict[str, Any]], repeats: int, nproc: dict[str, int] | None = None
) -> dict[str, dict[str, float]]:
    """Train every case once per round, rounds repeated; median images/s and wall seconds."""
    rates: dict[str, list[float]] = {name: [] for name in cases}
    walls: dict[str, list[float]] = {name: [] for name in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):
            for name, settings in cases.items():
                run = Path(tmp) / f"{name.replace('+', '-')}-r{repeat}"
                rate, wall = timed_train(run, settings, (nproc or {}).get(name, 1))
                rates[name].append(rate)
                walls[name].append(wall)
                print(f"round {repeat + 1}: {name:<22} {rate:9.0f} images/s (last epoch), {wall:.1f} s in all",
                      flush=True)  # fmt: skip
    return {
        name: {"images_per_second": statistics.median(rates[name]),
               "wall_seconds": statistics.median(walls[name]), "spread": [min(rates[name]), max(rates[name])]}
        for name in cases
    }  # fmt: skip


def cpu_processes(args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    settings = {**BASE, **overrides, "epochs": args.epochs, "device": "cpu"}
    cases = {f"nproc_{n}": settings for n in args.nproc}
    medians = interleaved(cases, args.repeats, {f"nproc_{n}": n for n in args.nproc})
    single = medians[f"nproc_{args.nproc[0]}"]["images_per_second"]
    result: dict[str, Any] = {"device": "cpu", "settings": settings, "repeats": args.repeats}
    for name, figures in medians.items():
        result[name] = {**figures, "speedup": figures["images_per_second"] / single}
        print(f"{name}: {figures['images_per_second']:.0f} images/s, {result[name]['speedup']:.2f}x")
    return result


def gpu_precisions(args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    card = torch.cuda.get_device_name()
    result: dict[str, Any] = {
        "device": card,
        "torch": torch.__version__,
        "repeats": args.repeats,
        "sizes": {},
    }
    for size in args.sizes:
        data = GPU_SIZES[size]
        settings = {**BASE, **data, **overrides, "epochs": args.epochs, "device": "cuda"}
        medians = interleaved(
            {mode: {**settings, **extra} for mode, extra in GPU_MODES.items()}, args.repeats
        )
        eager = medians["fp32"]["images_per_second"]
        for mode, figures in medians.items():
            figures["vs_fp32"] = figures["images_per_second"] / eager
            print(f"{card} {size} {mode:<13} {figures['images_per_second']:9.0f} images/s  "
                  f"{figures['vs_fp32']:.2f}x fp32")  # fmt: skip
        result["sizes"][size] = {"settings": settings, **medians}
    if "64px" in result["sizes"]:
        speedup = result["sizes"]["64px"]["bf16+compile"]["vs_fp32"]
        result["targets"] = {"bf16_compile_at_least_2x_fp32_at_64px": speedup >= 2.0}
    print(f"targets: {result.get('targets', {})}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="CPU: processes per case")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", choices=list(GPU_SIZES), default=list(GPU_SIZES),
                        help="GPU: which image sizes to measure")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=None, help="default: 2 on the CPU, 3 on a GPU")
    parser.add_argument("--set", action="append", default=[], type=parse_override, metavar="NAME=VALUE")
    args = parser.parse_args()
    if args.epochs is None:
        args.epochs = 3 if args.device == "cuda" else 2
    overrides = dict(args.set)
    run = gpu_precisions if args.device == "cuda" else cpu_processes
    result = run(args, overrides)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
