"""Bernoulli cross-entropy against the discretized logistic for small grey images that are not
binarized (the digits' defaults keep the Bernoulli loss there; larger grey images and colour ones
take the discretized logistic).

    python benchmarks/grey_likelihood.py                         # mnist-mini and Fashion-MNIST
    python benchmarks/grey_likelihood.py --datasets mnist-mini --epochs 45

For each dataset, trains the default VAE twice on the CPU, the same in everything but `--loss`
(bernoulli, then dlogistic, its mean-scale default included), for the same epochs, then scores the
best-by-validation weights of each on the first --n-images test images with `vaelab evaluate`:
MSE, PSNR and SSIM of the reconstructions at the latent mean, and the Fréchet distance of 2,000
samples from the prior in the feature space of the dataset's LeNet classifier (lower is better).
NLLs are not compared: the Bernoulli loss is no likelihood of 256-level pixels. Writes a
reconstruction and a sample grid of each run beside the JSON (--keep) to look at. The last line
printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import vaelab
from vaelab.apps.measure import evaluate
from vaelab.data.idx import SYSTEM_DIRS, find_idx_files

LOSSES = ("bernoulli", "dlogistic")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--datasets", nargs="+", help="default: mnist-mini, plus fashion-mnist when installed"
    )
    parser.add_argument("--epochs", type=int, help="epochs of every run (default: the defaults' 45)")
    parser.add_argument("--n-images", type=int, default=2000, help="test images scored")
    parser.add_argument("--keep", type=Path, help="keep the runs and pictures under this folder")
    args = parser.parse_args()
    datasets = args.datasets or ["mnist-mini"]
    if args.datasets is None and any(
        find_idx_files("fashion-mnist", "train", Path(d)) for d in SYSTEM_DIRS["fashion-mnist"]
    ):
        datasets.append("fashion-mnist")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for dataset in datasets:
            for loss in LOSSES:
                run = root / f"{dataset}-{loss}"
                options = {"epochs": args.epochs} if args.epochs else {}
                started = time.perf_counter()
                summary = vaelab.train(
                    run, dataset=dataset, loss=loss, device="cpu", progress=False, **options
                )
                minutes = (time.perf_counter() - started) / 60
                scores = evaluate(
                    run, k=1, n_images=args.n_images, device="cpu", progress=False, quality=True
                )
                vaelab.reconstruct(run, n=16, out=root / f"{dataset}-{loss}-recon.png", device="cpu")
                vaelab.sample(run, n=64, out=root / f"{dataset}-{loss}-samples.png", device="cpu")
                row = {
                    "dataset": dataset,
                    "loss": loss,
                    "epochs": summary["epochs"],
                    "best_epoch": summary.get("best_epoch"),
                    "train_minutes": round(minutes, 2),
                    **{
                        key: scores[key]
                        for key in ("mse", "psnr", "ssim", "fd", "recon_accuracy", "kl", "active_units")
                    },
                }
                results.append(row)
                print(
                    f"{dataset:<14} {loss:<10} PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.3f}  "
                    f"FD {row['fd']:.1f}  recon accuracy {row['recon_accuracy']:.3f}  KL {row['kl']:.1f} nats  {row['active_units']} active units; "
                    f"{row['epochs']} epochs (best {row['best_epoch']}) in {minutes:.1f} min",
                    flush=True,
                )
    print(json.dumps({"torch": torch.__version__, "n_images": args.n_images, "results": results}))


if __name__ == "__main__":
    main()
