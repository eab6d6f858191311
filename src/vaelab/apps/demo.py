"""`vaelab demo`: the story of AE vs VAE on the embedded digits, in a few minutes on a laptop CPU.

Trains an AE and a VAE with a 2-D latent and a VAE with a 16-D latent on mnist-mini, then draws
samples, reconstructions, the two latent spaces side by side, the decoded latent planes, and the
1 -> 7 interpolation, and writes index.html that explains each picture and links each model's
full report (`vaelab report`).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import torch

from vaelab import checkpoint, latent, plots
from vaelab.apps.run_report import report
from vaelab.config import PLAIN_TRAINING
from vaelab.data.transforms import to_unit
from vaelab.device import model_device
from vaelab.errors import VaelabError
from vaelab.options import Device, Out, Progress, Seed
from vaelab.pages import Section, write_report
from vaelab.runs import open_run, run_images
from vaelab.training import train

logger = logging.getLogger(__name__)

# Pinned so the demo keeps its story and its few-minute budget whatever `vaelab train` defaults to.
COMMON = {"dataset": "mnist-mini", **PLAIN_TRAINING}
RUNS = {
    "ae-2d": {"model": "ae", "latent_dim": 2},
    "vae-2d": {"model": "vae", "latent_dim": 2},
    "vae-16d": {"model": "vae", "latent_dim": 16},
}
LABELS = {"ae-2d": "AE, 2-D", "vae-2d": "VAE, 2-D", "vae-16d": "VAE, 16-D"}
INDEX = "index.html"


def demo(
    out: Annotated[Out, "output folder"] = "vaelab-demo",
    epochs: Annotated[int, "epochs per model"] = 30,
    seed: Seed = 0,
    device: Device = "auto",
    progress: Progress = True,
) -> dict[str, Any]:
    """Train the three demo models on mnist-mini and write the figures and index.html into `out`."""
    if epochs < 1:
        raise VaelabError(f"epochs must be at least 1, got {epochs}")
    out = Path(out)
    _check_out(out)
    started = time.perf_counter()
    runs: dict[str, Path] = {}
    for name, settings in RUNS.items():
        run_dir = out / "runs" / name
        if run_dir.exists():
            shutil.rmtree(run_dir)  # an earlier demo's run: the demo is reproducible from its seed
        logger.info("demo: training %s", LABELS[name])
        train(run_dir, epochs=epochs, seed=seed, device=device, progress=progress, **COMMON, **settings)
        runs[name] = run_dir
    train_seconds = time.perf_counter() - started

    models = {name: open_run(run_dir, device)[0] for name, run_dir in runs.items()}
    config = open_run(runs["vae-2d"], device)[1]
    test = run_images(models["vae-2d"], config)
    figures = {
        "samples": _samples(models, out / "samples.png", seed),
        "reconstructions": _reconstructions(models, test.images, out / "reconstructions.png", seed),
        "latent_scatter": plots.save_latent_scatter(
            [latent.scatter_panel(models[name], test, LABELS[name]) for name in RUNS],
            out / "latent_scatter.png",
        ),
        "latent_grid": plots.save_latent_grids(
            [
                latent.grid_panel(
                    models[name], latent.embed_images(models[name], test.images), 15, LABELS[name]
                )
                for name in ("ae-2d", "vae-2d")
            ],
            out / "latent_grid.png",
        ),
        "interpolation": _interpolation(models, test, out / "interpolation_1_to_7.png"),
        "loss_curves": plots.save_loss_curves(
            {LABELS[name]: checkpoint.read_metrics(run_dir) for name, run_dir in runs.items()},
            out / "loss_curves.png",
        ),
    }
    reports = {
        name: Path(report(run_dir, seed=seed, device=device, progress=False)["out"])
        for name, run_dir in runs.items()
    }
    final = {name: checkpoint.read_metrics(run_dir)[-1] for name, run_dir in runs.items()}
    index = _write_index(
        out, final, epochs, train_seconds, {n: p.relative_to(out) for n, p in reports.items()}
    )
    return {
        "out": str(out),
        "index": str(index),
        "figures": {k: str(v) for k, v in figures.items()},
        "runs": {k: str(v) for k, v in runs.items()},
        "reports": {k: str(v) for k, v in reports.items()},
        "val_loss": {name: row["val_loss"] for name, row in final.items()},
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - started,
    }


def _check_out(out: Path) -> None:
    """Refuse to write into a non-empty folder that is not an earlier demo's."""
    if out.exists() and not out.is_dir():
        raise VaelabError(f"out {out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / INDEX).is_file():
        raise VaelabError(f"out {out} is not empty and holds no earlier demo; choose a new or empty folder")


def _samples(models: dict, path: Path, seed: int) -> Path:
    panels = []
    for name, model in models.items():
        generator = torch.Generator(model_device(model)).manual_seed(seed)
        with torch.no_grad():
            panels.append((f"{LABELS[name]}: decode z ~ N(0, I)", model.sample(64, generator).cpu()))
    return plots.save_titled_grids(panels, path, nrow=8)


def _reconstructions(models: dict, images: torch.Tensor, path: Path, seed: int) -> Path:
    chosen = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:12]]
    rows = [("input", to_unit(chosen))]
    for name, model in models.items():
        rows.append((LABELS[name], latent.decode_latents(model, latent.embed_images(model, chosen))))
    return plots.save_labelled_rows(rows, path, "test digits (top) and their reconstructions")


def _interpolation(models: dict, test: Any, path: Path) -> Path:
    rows = []
    for name, model in models.items():
        codes = latent.embed_images(model, test.images)
        ends = [latent.class_prototype(codes, test.labels, cls) for cls in (1, 7)]
        rows.append(
            (LABELS[name], latent.decode_latents(model, latent.lerp(codes[ends[0]], codes[ends[1]], 10)))
        )
    return plots.save_labelled_rows(
        rows, path, "from a typical 1 to a typical 7, in a straight line through latent space"
    )


def _write_index(
    out: Path, final: dict[str, dict], epochs: int, seconds: float, reports: dict[str, Path]
) -> Path:
    table = (
        ["model", "val loss", "reconstruction", "KL"],
        [
            [LABELS[name], f"{row['val_loss']:.1f}", f"{row['val_recon']:.1f}", f"{row['val_kl']:.1f}"]
            for name, row in final.items()
        ],
    )
    sections = [
        Section(
            "Latent space: AE vs VAE",
            "Each dot is a test digit encoded to 2 numbers, coloured by its class. The AE spreads classes "
            "over an irregular, unbounded region with gaps; the VAE's KL term packs them into one round blob "
            "around the origin (the 16-D VAE is shown through its two principal components).",
            "latent_scatter.png",
        ),
        Section(
            "Decoding the whole latent plane",
            "A 15 x 15 grid of points over the box that holds 98% of each model's test digits, decoded. "
            "The VAE's plane is compact and every class gets its share of it; the AE's plane is lopsided, "
            "its scale arbitrary, and the places between its clusters decode to smudged blends.",
            "latent_grid.png",
        ),
        Section(
            "Interpolating from 1 to 7",
            "Ten evenly spaced points on the straight line between the latent codes of a typical 1 and a "
            "typical 7. With two dimensions the path may cross another class (often a 9) on the way; with "
            "sixteen, the VAE bends the 1 into the 7 through shapes that stay digit-like.",
            "interpolation_1_to_7.png",
        ),
        Section(
            "New images from random vectors",
            "Each model decodes 64 vectors drawn from N(0, I). The VAE was trained to make that prior "
            "meaningful, so it generates digits; the AE has no prior, so random vectors give a few "
            "repeated blurs.",
            "samples.png",
        ),
        Section(
            "Reconstructions",
            "Test digits (top row) and how each model rebuilds them. Two numbers keep the digit's gist; "
            "sixteen keep its details.",
            "reconstructions.png",
        ),
        Section(
            "Training curves",
            "Validation loss (solid) and training loss (dashed) per epoch, in nats per image "
            "(binary cross-entropy summed over 784 pixels, plus the KL for the VAEs).",
            "loss_curves.png",
        ),
    ]
    return write_report(
        out / INDEX,
        "vaelab demo: autoencoder vs variational autoencoder",
        f"Three models trained for {epochs} epochs each on the embedded mnist-mini digits "
        f"(7,200 training images) in {seconds:.0f} s. Losses below are nats per validation image.",
        sections,
        table,
        footer="Run folders are in runs/; try `vaelab sample runs/vae-2d -n 64 -o more.png`, or explore "
        "one in the browser with `vaelab serve runs/vae-16d`.",
        links=[(f"Full report: {LABELS[name]}", path.as_posix()) for name, path in reports.items()],
    )
