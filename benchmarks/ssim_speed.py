"""SSIM of image batches: vaelab's window sums as matrix products, against the same Gaussian
window applied as two depthwise convolutions (how vaelab computed it before), in float64 on the
CPU. SSIM scores reconstructions in `evaluate`, `denoise`, `compress` (every JPEG and WebP
quality of its comparison) and the anomaly detector's `ssim` score.

    python benchmarks/ssim_speed.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from vaelab.evaluation import structural_similarity

CASES = {  # name -> batch shape
    "2,000 grey 28 px": (2000, 1, 28, 28),
    "256 colour 64 px": (256, 3, 64, 64),
    "32 colour 256 px": (32, 3, 256, 256),
}


def ssim_by_convolution(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The reference: the same window and constants, blurred by depthwise conv2d (rows, columns)."""
    size = min(11, *estimate.shape[-2:])
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    c = estimate.shape[1]
    rows, cols = g.view(1, 1, size, 1).expand(c, 1, size, 1), g.view(1, 1, 1, size).expand(c, 1, 1, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, rows, groups=c), cols, groups=c)

    a, b = estimate.double(), target.double()
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(1)


def seconds(function, a: torch.Tensor, b: torch.Tensor) -> float:
    started = time.perf_counter()
    function(a, b)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    result: dict[str, float] = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats}")
    print(f"{'batch':20s} {'matmul s':>9s} {'conv s':>9s} {'speed-up':>9s} {'max |diff|':>11s}")
    for name, shape in CASES.items():
        clean = torch.rand(shape, generator=generator)
        noisy = (clean + 0.1 * torch.randn(shape, generator=generator)).clamp(0, 1)
        difference = (structural_similarity(noisy, clean) - ssim_by_convolution(noisy, clean)).abs().max()
        ours, theirs = [], []
        for _ in range(args.repeats):  # interleaved
            ours.append(seconds(structural_similarity, noisy, clean))
            theirs.append(seconds(ssim_by_convolution, noisy, clean))
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"{name:20s} {a:9.4f} {b:9.4f} {b / a:8.1f}x {difference.item():11.1e}")
        result |= {f"{name}: matmul s": round(a, 5), f"{name}: conv s": round(b, 5)}
        result[f"{name}: max abs difference"] = difference.item()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
