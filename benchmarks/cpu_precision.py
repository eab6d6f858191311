"""fp32 against bf16 autocast when training on the CPU.

    python benchmarks/cpu_precision.py                 # default VAE and a small conv VAE, mnist-mini
    python benchmarks/cpu_precision.py --rounds 5 --epochs 2

Trains each network for `--epochs` epochs on mnist-mini with `--precision fp32` and `bf16`
(`vaelab.train`, EMA off so the two differ only in precision), interleaved over `--rounds`
rounds, and reports the median images/s of the last epoch and the validation loss. Whether bf16
pays depends on the processor: CPUs with AVX512-BF16 or AMX have bfloat16 instructions, others
emulate them and are slower. The flags this CPU reports are printed first. The last line printed
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

import vaelab
from vaelab import checkpoint

NETWORKS: dict[str, dict[str, Any]] = {
    "default VAE (resnet)": {},
    "conv VAE (hidden 0)": {"arch": "conv", "hidden": 0},
}
PRECISIONS = ("fp32", "bf16")


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return sorted({flag for flag in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f" {flag}" in text})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    flags = cpu_flags()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU flags: {', '.join(flags) or '?'}"
    )
    rates: dict[tuple[str, str], list[float]] = {}
    losses: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            for network, settings in NETWORKS.items():
                for precision in PRECISIONS:
                    run = Path(tmp) / f"{len(rates)}-{round_index}-{precision}-{network.split()[0]}"
                    vaelab.train(run, precision=precision, epochs=args.epochs, device="cpu", ema=0.0,
                                 progress=False, **settings)  # fmt: skip
                    last = checkpoint.read_metrics(run)[-1]
                    rates.setdefault((network, precision), []).append(last["images_per_second"])
                    losses.setdefault((network, precision), []).append(last["val_loss"])
                    print(f"round {round_index + 1}: {network:<22} {precision}  "
                          f"{last['images_per_second']:7.0f} images/s  val {last['val_loss']:.1f}", flush=True)  # fmt: skip
    result: dict[str, Any] = {"torch": torch.__version__, "cpu_flags": flags, "epochs": args.epochs,
                              "rounds": args.rounds, "networks": {}}  # fmt: skip
    print(
        f"\n{'network':<24}{'fp32 images/s':>15}{'bf16 images/s':>15}{'bf16/fp32':>11}{'val fp32':>10}{'val bf16':>10}"
    )
    for network in NETWORKS:
        fp32, bf16 = (statistics.median(rates[(network, p)]) for p in PRECISIONS)
        val32, val16 = (statistics.median(losses[(network, p)]) for p in PRECISIONS)
        result["networks"][network] = {"fp32_images_per_second": fp32, "bf16_images_per_second": bf16,
                                       "bf16_vs_fp32": bf16 / fp32, "val_loss_fp32": val32, "val_loss_bf16": val16}  # fmt: skip
        print(f"{network:<24}{fp32:15.0f}{bf16:15.0f}{bf16 / fp32:11.2f}{val32:10.1f}{val16:10.1f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
