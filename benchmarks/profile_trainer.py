"""Where the trainer's host time goes, beside the bare loop of train_throughput.py.

    python benchmarks/profile_trainer.py --device cuda                  # MLP VAE, batch 512, mnist-mini
    python benchmarks/profile_trainer.py --arch conv --batch-size 128 --epochs 15

On a GPU a small network's step is bound by the host: the time Python and PyTorch take to issue
its kernels. This runs `vaelab.train` and the bare loop (same network, same epochs) under
cProfile, once each after a warm-up, and prints the functions with the most own time, and the
time spent outside the training steps (validation, checkpoints, start-up). The profiler slows
both alike; compare shares, not absolute rates. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path
from typing import Any

import torch
import train_throughput as throughput

import vaelab


def profiled(run: Any) -> tuple[float, pstats.Stats]:
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    run()
    profile.disable()
    return time.perf_counter() - started, pstats.Stats(profile)


def top(stats: pstats.Stats, n: int, key: str) -> list[dict[str, Any]]:
    """The n functions with the most own ('tottime') or cumulative ('cumtime') time."""
    rows = []
    for (file, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(file).name}:{line}({name})", "calls": calls,
                     "tottime": own, "cumtime": cumulative})  # fmt: skip
    return sorted(rows, key=lambda row: -row[key])[:n]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--arch", default="mlp", choices=("mlp", "conv"))
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--top", type=int, default=25, help="functions listed per loop")
    args = parser.parse_args()
    throughput.DEVICE = torch.device(args.device)
    case = {"dataset": "mnist-mini", "arch": args.arch, "batch_size": args.batch_size,
            "latent_dim": 20 if args.arch == "mlp" else 16, "epochs": args.epochs}  # fmt: skip
    images = vaelab.load_dataset("mnist-mini", "train", data_dir=None)[0]
    n_train = len(images) - round(len(images) * 0.1)
    in_loop: list[float] = []
    loops = {
        "bare": lambda: throughput.bare_loop(case, images[:n_train], args.epochs),
        "trainer": lambda: throughput.trainer_loop(case, n_train, args.epochs, in_loop),
    }
    result: dict[str, Any] = {"device": args.device, "case": case, "torch": torch.__version__}
    if args.device == "cuda":
        result["card"] = torch.cuda.get_device_name()
    for name, run in loops.items():
        run()  # warm-up: allocator, kernels, imports
        seconds, stats = profiled(run)
        out = io.StringIO()
        stats.stream = out  # type: ignore[attr-defined]
        stats.sort_stats("tottime").print_stats(args.top)
        print(f"==== {name}: {seconds:.3f} s under the profiler ({args.epochs} epochs)")
        print("\n".join(out.getvalue().splitlines()[6:]))
        result[name] = {"seconds": seconds, "top_own": top(stats, args.top, "tottime"),
                        "top_cumulative": top(stats, args.top, "cumtime")}  # fmt: skip
        if name == "trainer":
            steps = args.epochs * n_train / in_loop[-1]  # seconds in the training steps
            result[name]["seconds_in_steps"] = steps
            print(f"in the steps: {steps:.3f} s; outside (start-up, validation, checkpoints): "
                  f"{seconds - steps:.3f} s")  # fmt: skip
        sys.stdout.flush()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
