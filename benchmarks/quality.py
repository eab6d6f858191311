"""Test-set NLL of the default VAE, trained with every option at its default.

    python benchmarks/quality.py                      # mnist-mini (and Fashion-MNIST when installed)
    python benchmarks/quality.py --datasets mnist-mini --set latent_dim=64 --set epochs=50
    python benchmarks/quality.py --datasets fashion-mnist --set epochs=10 --n-images 2000

Trains `vaelab train --model vae --dataset D --binarize dynamic` (plus any --set overrides) on the
CPU, timing the training, then scores the best-by-validation weights with `vaelab evaluate`
(importance-sampled NLL, K = 1000, on the whole test split binarized once with a fixed seed).
Target on mnist-mini: NLL <= 85 nats within 10 minutes of training on 2 CPU cores. The last line
printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from overrides import parse_override

import vaelab
from vaelab.apps.measure import evaluate
from vaelab.data.idx import find_idx_files

TARGET_NLL, TARGET_MINUTES = 85.0, 10.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--datasets", nargs="+", help="default: mnist-mini, plus fashion-mnist when installed"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a default")
    parser.add_argument("--k", type=int, default=1000, help="importance samples per test image")
    parser.add_argument("--n-images", type=int, help="score only the first N test images (default: all)")
    parser.add_argument("--keep", type=Path, help="keep the run folders under this folder")
    args = parser.parse_args()
    overrides = dict(parse_override(item) for item in args.set)
    datasets = args.datasets or ["mnist-mini"]
    if args.datasets is None and find_idx_files(
        "fashion-mnist", "train", Path("/usr/share/datasets/fashion-mnist")
    ):
        datasets.append("fashion-mnist")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; overrides: {overrides or 'none'}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for dataset in datasets:
            run = root / f"quality-{dataset}"
            started = time.perf_counter()
            summary = vaelab.train(
                run,
                model="vae",
                dataset=dataset,
                binarize="dynamic",
                device="cpu",
                progress=False,
                **overrides,
            )
            minutes = (time.perf_counter() - started) / 60
            scores = evaluate(
                run, k=args.k, n_images=args.n_images, device="cpu", progress=False, quality=False
            )
            row = {
                "dataset": dataset,
                "train_minutes": round(minutes, 2),
                "epochs": summary["epochs"],
                "best_epoch": summary.get("best_epoch"),
                **{key: round(scores[key], 2) for key in ("nll", "nll_se", "neg_elbo", "recon", "kl")},
                "active_units": scores["active_units"],
                "latent_dim": scores["latent_dim"],
                "k": scores["k"],
                "n_images": scores["n_images"],
            }
            results.append(row)
            print(
                f"{dataset:<14} NLL {row['nll']:.2f} ± {row['nll_se']:.2f}  -ELBO {row['neg_elbo']:.2f}  "
                f"(recon {row['recon']:.2f}, KL {row['kl']:.2f})  nats per image, K={row['k']}, "
                f"{row['n_images']} test images; {row['active_units']}/{row['latent_dim']} active units; "
                f"trained {row['train_minutes']:.1f} min, {row['epochs']} epochs (best {row['best_epoch']})",
                flush=True,
            )
    mini = next((r for r in results if r["dataset"] == "mnist-mini"), None)
    targets = None
    if mini is not None:
        targets = {
            "nll_at_most_85": mini["nll"] <= TARGET_NLL,
            "train_minutes_at_most_10": mini["train_minutes"] <= TARGET_MINUTES,
        }
        print(f"targets: {targets}")
    print(
        json.dumps(
            {"torch": torch.__version__, "overrides": overrides, "results": results, "targets": targets}
        )
    )


if __name__ == "__main__":
    main()
