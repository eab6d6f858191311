"""What capturing whole training steps in CUDA graphs would give on a GPU, before the trainer does it.

    python benchmarks/cuda_graphs.py                    # on a CUDA device, 3 interleaved rounds
    python benchmarks/cuda_graphs.py --device cpu       # the same loops without capture (a dry run)

On a GPU a small network's step is bound by the host issuing its kernels (docs/benchmarks.md, "On a
GPU"): the trainer reached 0.77x the bare loop for the MLP VAE at batch 512. A CUDA graph issues a
whole recorded step (forward, backward, optimizer) in one call. This measures how much that gives
for the cases of train_throughput.py, side by side on one card:

* eager: the bare loop of train_throughput.py (one float tensor on the device, sliced per batch,
  fused Adam), on whole batches only;
* graphed: the same, with one step captured once in a CUDA graph (fused Adam with capturable=True)
  and replayed for every batch, each batch first copied into the graph's input. The
  reparameterisation draws from the default CUDA generator, which a replay advances like an eager
  step; the capture follows three eager warm-up steps on a side stream, as PyTorch's whole-network
  capture recipe asks (they train too, before the clock starts);
* trainer: `vaelab.train` itself, as timed by train_throughput.py.

Every loop drops each epoch's last, smaller batch, so that one graph serves every step (the trainer
keeps it). On the CPU nothing is captured: the "graphed" loop runs the same static-input steps
eagerly, which checks the loop, not its speed. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
import train_throughput as throughput

import vaelab

WARMUP_STEPS = 3  # eager steps on a side stream before the capture


def eager_loop(case: dict, data: torch.Tensor, epochs: int, losses: list[float]) -> float:
    """Images/s of the eager loop; appends its last step's loss to `losses`."""
    model = throughput.build(case)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    batch = case["batch_size"]
    whole = len(data) - len(data) % batch
    throughput.synchronize()
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(data), device=data.device)
        for start in range(0, whole, batch):
            optimizer.zero_grad(set_to_none=True)
            loss = model(data[order[start : start + batch]]).loss
            loss.backward()
            optimizer.step()
    throughput.synchronize()
    seconds = time.perf_counter() - started
    losses.append(float(loss))
    return epochs * whole / seconds


def captured_step(case: dict, static_x: torch.Tensor) -> tuple[Callable[[], None], torch.Tensor]:
    """A training step on `static_x`, recorded in a CUDA graph on a GPU (a plain call elsewhere),
    and the tensor that holds the loss of the last step it took."""
    model = throughput.build(case)
    cuda = static_x.device.type == "cuda"
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True, capturable=cuda)
    last_loss = torch.zeros((), device=static_x.device)

    def step() -> None:
        # no kernel: in the capture the gradients are then made in the graph's own memory, where
        # every replay writes them again
        optimizer.zero_grad(set_to_none=True)
        loss = model(static_x).loss
        loss.backward()
        optimizer.step()
        last_loss.copy_(loss.detach())

    if not cuda:
        return step, last_loss
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # Adam's moments and the libraries' workspaces exist before capture
        for _ in range(WARMUP_STEPS):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay, last_loss


def graphed_loop(case: dict, data: torch.Tensor, epochs: int, losses: list[float]) -> float:
    """Images/s of the graphed loop; appends its last step's loss to `losses`."""
    batch = case["batch_size"]
    whole = len(data) - len(data) % batch
    static_x = data[:batch].clone()
    replay, last_loss = captured_step(case, static_x)
    throughput.synchronize()
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(data), device=data.device)
        for start in range(0, whole, batch):
            static_x.copy_(data[order[start : start + batch]])
            replay()
    throughput.synchronize()
    seconds = time.perf_counter() - started
    losses.append(float(last_loss))
    return epochs * whole / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved rounds per case (median reported)"
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; CUDA graphs need one (--device cpu runs the loops without capture)")
        print(json.dumps({"skipped": "no CUDA device"}))
        sys.exit(0)
    throughput.DEVICE = torch.device(args.device)
    scale = throughput.GPU_EPOCHS if args.device == "cuda" else 1
    cases = [
        {"dataset": "mnist-mini", "arch": "mlp", "latent_dim": 20, "batch_size": 128, "epochs": 6 * scale},
        {"dataset": "mnist-mini", "arch": "mlp", "latent_dim": 20, "batch_size": 512, "epochs": 6 * scale},
        {"dataset": "mnist-mini", "arch": "conv", "latent_dim": 16, "batch_size": 128, "epochs": 3 * scale},
    ]
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (no capture)"
    print(f"torch {torch.__version__}, {where}; {args.repeats} interleaved rounds, median images/s\n")
    print(f"{'model':<6}{'batch':>6}{'eager':>10}{'graphed':>10}{'trainer':>10}{'gr/eager':>10}{'tr/eager':>10}"
          f"{'last loss eager / graphed':>28}")  # fmt: skip
    results = []
    for case in cases:
        images = vaelab.load_dataset(case["dataset"], "train", data_dir=None)[0]
        n_train = len(images) - round(len(images) * 0.1)  # what the trainer trains on
        data = images[:n_train].to(throughput.DEVICE).float() / 255
        in_loop: list[float] = []
        final: dict[str, list[float]] = {"eager": [], "graphed": []}  # last step's loss: both must train
        loops: dict[str, Callable[[], float]] = {
            "eager": lambda c=case, d=data, f=final["eager"]: eager_loop(c, d, c["epochs"], f),
            "graphed": lambda c=case, d=data, f=final["graphed"]: graphed_loop(c, d, c["epochs"], f),
            "trainer": lambda c=case, n=n_train, r=in_loop: throughput.trainer_loop(c, n, c["epochs"], r),
        }
        eager_loop(dict(case, epochs=1), data[:1024], 1, [])  # warm-up: kernels, allocator
        samples: dict[str, list[float]] = {name: [] for name in loops}
        names = list(loops)
        for round_index in range(args.repeats):
            for name in names[round_index % 3 :] + names[: round_index % 3]:  # rotate the order each round
                with contextlib.redirect_stdout(sys.stderr):
                    samples[name].append(loops[name]())
        median = {name: statistics.median(values) for name, values in samples.items()}
        row = {
            "arch": case["arch"],
            "batch_size": case["batch_size"],
            "epochs": case["epochs"],
            **{f"{name}_images_per_second": round(value) for name, value in median.items()},
            "graphed_vs_eager": round(median["graphed"] / median["eager"], 3),
            "trainer_vs_eager": round(median["trainer"] / median["eager"], 3),
            "last_loss": {name: round(statistics.median(v), 2) for name, v in final.items()},
            "spread": {name: [round(min(v)), round(max(v))] for name, v in samples.items()},
        }
        results.append(row)
        print(
            f"{case['arch']:<6}{case['batch_size']:>6}{median['eager']:>10.0f}{median['graphed']:>10.0f}"
            f"{median['trainer']:>10.0f}{row['graphed_vs_eager']:>10.2f}{row['trainer_vs_eager']:>10.2f}"
            f"{row['last_loss']['eager']:>17.1f} / {row['last_loss']['graphed']:.1f}"
        )
        sys.stdout.flush()
    print(
        json.dumps({"torch": torch.__version__, "device": where, "repeats": args.repeats, "results": results})
    )


if __name__ == "__main__":
    main()
