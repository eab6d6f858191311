"""Speed of `vaelab evaluate` beside a bare loop that only decodes and scores the same latents.

    python benchmarks/evaluate_speed.py                 # three models, K = 100 on 200 images, 3 repeats
    python benchmarks/evaluate_speed.py --full          # also time K = 1000 on all 2,000 test digits

For each model (an MLP VAE with the factorized decoder, the same with the pixelcnn decoder, and the
default VAE: resnet + pixelcnn), trained for one epoch on the digit 0 of mnist-mini (the weights
do not change the arithmetic), both are timed on the same binarized test digits, interleaved and
repeated, and the median decodes per second (images x K) reported:

* evaluate: `vaelab.evaluate(run, k=K, n_images=N, quality=False)`, the whole command (loading
  the run and the data, ELBO parts, importance-sampled NLL, active units, eval.json);
* bare: for one image at a time, encode, then draw its K latents in chunks of 128, decode them
  and score the pixels: nothing else.

With --compare-chunks, `evaluate` is also timed (interleaved) with 4,096 decodes per pass, the
chunk size before vaelab.device.DECODE_BUDGET, to show what the page faults of large tensors cost.

Target: evaluate >= 0.8x bare, and K = 1000 on 2,000 digits in under 3 minutes on 2 CPU cores
(projected from the measured rate, or timed with --full). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import vaelab
from vaelab import device as device_module
from vaelab.apps.measure import evaluate
from vaelab.data.transforms import to_unit
from vaelab.evaluation import scoring_images
from vaelab.gaussian import reparameterize

MODELS = {
    "mlp-factorized": {"arch": "mlp", "decoder": "factorized"},
    "mlp-pixelcnn": {"arch": "mlp", "decoder": "pixelcnn"},
    "default (resnet-pixelcnn)": {},
}
TARGET_RATIO, TARGET_SECONDS, FULL_DECODES = 0.8, 180.0, 1000 * 2000


@torch.no_grad()
def bare(model: torch.nn.Module, images: torch.Tensor, k: int) -> float:
    """Seconds to score `images` with K posterior draws each, doing only the arithmetic."""
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for image in images:
        x = to_unit(image[None])
        mu, log_var = model.encode(x)
        for done in range(0, k, 128):
            n = min(128, k - done)
            z = reparameterize(mu.expand(n, -1), log_var.expand(n, -1), generator)
            model.reconstruction_loss(z, x.expand(n, -1, -1, -1))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=100, help="importance samples per image (default: 100)")
    parser.add_argument("--n-images", type=int, default=200, help="test images per timing (default: 200)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default: 3)")
    parser.add_argument("--full", action="store_true", help="also time K = 1000 on all 2,000 test digits")
    parser.add_argument("--compare-chunks", action="store_true", help="also time 4,096 decodes per pass")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    decodes = args.k * args.n_images
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in MODELS.items():
            run = Path(tmp) / name.split()[0]
            vaelab.train(run, model="vae", binarize="dynamic", epochs=1, classes="0", device="cpu",
                         progress=False, **settings)  # fmt: skip
            model = vaelab.load(run)
            test = vaelab.load_dataset("mnist-mini", "test")[0]
            images = scoring_images(test[: args.n_images], binarized=True)
            evaluate(run, k=2, n_images=8, device="cpu", progress=False, quality=False)  # warm-up
            bare(model, images[:8], 2)
            times: dict[str, list[float]] = {"evaluate": [], "bare": []}
            budgets = {"evaluate": device_module.DECODE_BUDGET["cpu"]}
            if args.compare_chunks:
                times["evaluate_4096"], budgets["evaluate_4096"] = [], 4096 * 28 * 28
            for _ in range(args.repeats):
                for key, budget in budgets.items():
                    device_module.DECODE_BUDGET["cpu"] = budget
                    started = time.perf_counter()
                    evaluate(
                        run, k=args.k, n_images=args.n_images, device="cpu", progress=False, quality=False
                    )
                    times[key].append(time.perf_counter() - started)
                device_module.DECODE_BUDGET["cpu"] = budgets["evaluate"]
                times["bare"].append(bare(model, images, args.k))
            rate = {key: decodes / statistics.median(values) for key, values in times.items()}
            row = {
                "model": name,
                "evaluate_decodes_per_s": round(rate["evaluate"]),
                "bare_decodes_per_s": round(rate["bare"]),
                "ratio": round(rate["evaluate"] / rate["bare"], 3),
                "projected_full_seconds": round(FULL_DECODES / rate["evaluate"], 1),
            }
            if args.compare_chunks:
                row["evaluate_4096_decodes_per_s"] = round(rate["evaluate_4096"])
            if args.full:
                started = time.perf_counter()
                evaluate(run, k=1000, device="cpu", progress=False, quality=False)
                row["full_seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(
                f"{name:<26} evaluate {row['evaluate_decodes_per_s']:>7} decodes/s  bare {row['bare_decodes_per_s']:>7}"
                f"  ratio {row['ratio']:.2f}  K=1000 x 2000 images: {row['projected_full_seconds']:.0f} s projected"
                + (f", {row['full_seconds']:.0f} s timed" if args.full else "")
                + (
                    f"; 4,096 per pass: {row['evaluate_4096_decodes_per_s']} decodes/s"
                    if args.compare_chunks
                    else ""
                ),
                flush=True,
            )
    targets = {
        row["model"]: {
            "ratio_at_least_0.8": row["ratio"] >= TARGET_RATIO,
            "under_3_minutes": row.get("full_seconds", row["projected_full_seconds"]) <= TARGET_SECONDS,
        }
        for row in rows
    }
    print(json.dumps({"torch": torch.__version__, "k": args.k, "n_images": args.n_images,
                      "repeats": args.repeats, "results": rows, "targets": targets}))  # fmt: skip


if __name__ == "__main__":
    main()
