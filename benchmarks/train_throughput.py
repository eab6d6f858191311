"""Training throughput of vaelab's trainer beside two references, measured side by side.

For each case (dataset, model, batch size) three loops train the same network for the same number
of epochs, interleaved and repeated; the median images/s of each is reported:

* dataloader: the PyTorch VAE example's loop: a torchvision-style Dataset that turns each uint8
  image into a PIL image and then a tensor with ToTensor, a DataLoader, and plain Adam;
* bare: the same model trained from one in-memory float tensor, sliced per batch, fused Adam; no
  progress bar, metrics, validation or checkpoints;
* trainer: `vaelab.train(...)` itself, timed from call to return (data loading, validation,
  metrics.jsonl and checkpoints after every epoch, progress bar all included); its in-loop
  figure (images/s of the training steps alone, from metrics.jsonl) is shown beside it.

Usage:  python benchmarks/train_throughput.py [--repeats 5] [--quick] [--device cuda]
On a GPU each case trains GPU_EPOCHS times as many epochs (an mnist-mini epoch takes tens of
milliseconds there, so a few epochs would time the start-up, not the training). Targets: trainer
at least 0.8x the bare loop on the CPU, 0.9x on a GPU, in every case.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import ToTensor

import vaelab
from vaelab.checkpoint import read_metrics
from vaelab.config import PLAIN_TRAINING, TrainConfig
from vaelab.data.idx import find_idx_files


class PilDataset(Dataset):
    """What torchvision.datasets.MNIST does per item: uint8 -> PIL image -> ToTensor."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images[:, 0]
        self.to_tensor = ToTensor()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.to_tensor(Image.fromarray(self.images[index].numpy(), mode="L")), 0


DEVICE = torch.device("cpu")  # set from --device
GPU_EPOCHS = 5  # epochs multiplier on a GPU


def build(case: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    settings = {**PLAIN_TRAINING, "model": "vae", "arch": case["arch"], "latent_dim": case["latent_dim"]}
    return vaelab.build_model(TrainConfig.from_settings(**settings).model_config).to(DEVICE)


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def dataloader_loop(case: dict, images: torch.Tensor, epochs: int) -> float:
    model = build(case)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(PilDataset(images), batch_size=case["batch_size"], shuffle=True)
    started = time.perf_counter()
    for _ in range(epochs):
        for x, _ in loader:
            optimizer.zero_grad()
            model(x.to(DEVICE, non_blocking=True)).loss.backward()
            optimizer.step()
    synchronize()
    return epochs * len(images) / (time.perf_counter() - started)


def bare_loop(case: dict, images: torch.Tensor, epochs: int) -> float:
    model = build(case)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    data = images.to(DEVICE).float() / 255
    batch = case["batch_size"]
    synchronize()
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(data), device=DEVICE)
        for start in range(0, len(data), batch):
            optimizer.zero_grad()
            model(data[order[start : start + batch]]).loss.backward()
            optimizer.step()
    synchronize()
    return epochs * len(images) / (time.perf_counter() - started)


def trainer_loop(case: dict, n_train: int, epochs: int, in_loop: list[float]) -> float:
    """Whole-call images/s of vaelab.train; appends the median in-loop images/s to `in_loop`."""
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as devnull:
        started = time.perf_counter()
        with contextlib.redirect_stderr(devnull):  # the progress bar still runs, unseen
            settings = {**PLAIN_TRAINING, "arch": case["arch"], "batch_size": case["batch_size"]}
            vaelab.train(
                Path(tmp) / "run", dataset=case["dataset"], model="vae", latent_dim=case["latent_dim"],
                epochs=epochs, device=DEVICE.type, **settings,  # the plain net and schedule build() makes
            )  # fmt: skip
        seconds = time.perf_counter() - started
        in_loop.append(statistics.median(row["images_per_second"] for row in read_metrics(Path(tmp) / "run")))
        return epochs * n_train / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="interleaved rounds per case (median reported)"
    )
    parser.add_argument("--quick", action="store_true", help="mnist-mini only, 3 rounds")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where every loop trains")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    repeats = 3 if args.quick else args.repeats
    scale = GPU_EPOCHS if DEVICE.type == "cuda" else 1

    cases = [
        {"dataset": "mnist-mini", "arch": "mlp", "latent_dim": 20, "batch_size": 128, "epochs": 6 * scale},
        {"dataset": "mnist-mini", "arch": "mlp", "latent_dim": 20, "batch_size": 512, "epochs": 6 * scale},
        {"dataset": "mnist-mini", "arch": "conv", "latent_dim": 16, "batch_size": 128, "epochs": 3 * scale},
    ]
    fashion_dir = "/usr/share/datasets/fashion-mnist"
    if not args.quick and find_idx_files("fashion-mnist", "train", Path(fashion_dir)):
        cases += [
            {"dataset": "fashion-mnist", "arch": "mlp", "latent_dim": 20, "batch_size": 128, "epochs": scale},
            {
                "dataset": "fashion-mnist",
                "arch": "conv",
                "latent_dim": 16,
                "batch_size": 128,
                "epochs": scale,
            },
        ]

    where = (
        torch.cuda.get_device_name() if DEVICE.type == "cuda" else platform.processor() or platform.machine()
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}")
    print(f"{repeats} interleaved rounds per case, median images/s (VAE; MLP = 784-400-20)\n")
    header = (
        f"{'dataset':<14}{'model':<6}{'batch':>6}{'dataloader':>12}{'bare':>10}{'trainer':>10}{'(in loop)':>11}"
        f"{'tr/bare':>9}{'tr/DL':>8}"
    )
    print(header)
    results = []
    for case in cases:
        train_images = vaelab.load_dataset(case["dataset"], "train", data_dir=None)[0]
        n_train = len(train_images) - round(len(train_images) * 0.1)  # what the trainer trains on
        in_loop: list[float] = []
        loops = {
            # its rate hardly depends on the epochs, and on a GPU it is the slowest by far
            "dataloader": lambda c=case, x=train_images: dataloader_loop(c, x, max(1, c["epochs"] // scale)),
            "bare": lambda c=case, x=train_images: bare_loop(c, x, c["epochs"]),
            "trainer": lambda c=case, n=n_train, r=in_loop: trainer_loop(c, n, c["epochs"], r),
        }
        warm = dict(case, epochs=1)
        dataloader_loop(warm, train_images[:1024], 1)
        bare_loop(warm, train_images[:1024], 1)
        samples: dict[str, list[float]] = {name: [] for name in loops}
        names = list(loops)
        for round_index in range(repeats):
            for name in names[round_index % 3 :] + names[: round_index % 3]:  # rotate the order each round
                samples[name].append(loops[name]())
        median = {name: statistics.median(values) for name, values in samples.items()}
        row = {
            **{k: case[k] for k in ("dataset", "arch", "batch_size")},
            **{f"{name}_images_per_second": round(value) for name, value in median.items()},
            "trainer_in_loop_images_per_second": round(statistics.median(in_loop)),
            "trainer_vs_bare": round(median["trainer"] / median["bare"], 3),
            "trainer_vs_dataloader": round(median["trainer"] / median["dataloader"], 3),
            "spread": {name: [round(min(v)), round(max(v))] for name, v in samples.items()},
        }
        results.append(row)
        print(
            f"{case['dataset']:<14}{case['arch']:<6}{case['batch_size']:>6}{median['dataloader']:>12.0f}"
            f"{median['bare']:>10.0f}{median['trainer']:>10.0f}{row['trainer_in_loop_images_per_second']:>11.0f}"
            f"{row['trainer_vs_bare']:>9.2f}"
            f"{row['trainer_vs_dataloader']:>8.2f}"
        )
        sys.stdout.flush()

    mlp128 = next(r for r in results if r["arch"] == "mlp" and r["batch_size"] == 128)
    floor = 0.9 if DEVICE.type == "cuda" else 0.8
    targets = {
        "mlp128_trainer_vs_dataloader_at_least_2": mlp128["trainer_vs_dataloader"] >= 2.0,
        f"trainer_vs_bare_at_least_{floor}": all(r["trainer_vs_bare"] >= floor for r in results),
    }
    print(f"\ntargets: {targets}")
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "device": where, "repeats": repeats,
                      "results": results, "targets": targets}))  # fmt: skip


if __name__ == "__main__":
    main()
