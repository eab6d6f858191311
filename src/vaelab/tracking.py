"""Per-epoch figures and sample grids sent where people already look: TensorBoard or MLflow,
through those projects' own libraries (the `tensorboard` and `mlflow` extras).

The training loop calls `log_epoch` after each epoch with the row it writes to metrics.jsonl and
a few times with a grid of images decoded from fixed latents. metrics.jsonl stays the record;
these are views of it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from vaelab.config import LOGGERS
from vaelab.errors import VaelabError

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
MLFLOW_RUN_FILE = "mlflow_run_id"
SCALARS = ("train_loss", "train_recon", "train_kl", "val_loss", "val_recon", "val_kl", "lr", "kl_weight",
           "images_per_second")  # fmt: skip


class EpochLogger(Protocol):
    def log_epoch(self, row: dict[str, Any], images: torch.Tensor | None) -> None: ...
    def close(self, finished: bool = True) -> None: ...


def open_logger(kind: str, run_dir: Path, settings: dict[str, Any], resumed: bool) -> EpochLogger | None:
    """A logger of `kind` ("none" gives None) for the run in `run_dir`."""
    if kind == "none":
        return None
    if kind == "tensorboard":
        return TensorBoardLogger(run_dir, settings)
    if kind == "mlflow":
        return MlflowLogger(run_dir, settings, resumed)
    raise VaelabError(f"log {kind!r} is not one of: {', '.join(LOGGERS)}")


def sample_epochs(epochs: int, shown: int = 4) -> set[int]:
    """The epochs that get a sample grid: about `shown` of them, evenly spread, the last included."""
    step = max(1, epochs // shown)
    return {e for e in range(step, epochs + 1, step)} | {epochs}


class TensorBoardLogger:
    """Scalars under loss/ and train/, a grid under samples, the settings as text, in RUN/tensorboard
    (`tensorboard --logdir RUN/tensorboard`)."""

    def __init__(self, run_dir: Path, settings: dict[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise VaelabError(
                "log tensorboard needs the tensorboard package: pip install 'vaelab[tensorboard]'"
            ) from None
        self.directory = run_dir / TENSORBOARD_DIR
        self.writer = SummaryWriter(log_dir=str(self.directory))
        self.writer.add_text("settings", "```\n" + json.dumps(settings, indent=2, sort_keys=True) + "\n```")

    def log_epoch(self, row: dict[str, Any], images: torch.Tensor | None) -> None:
        epoch = row["epoch"]
        for key in SCALARS:
            if key in row:
                group = "loss" if key.split("_", 1)[-1] in ("loss", "recon", "kl") else "train"
                self.writer.add_scalar(f"{group}/{key}", row[key], epoch)
        if images is not None:
            self.writer.add_image("samples", _grid(images), epoch, dataformats="HWC")
        self.writer.flush()

    def close(self, finished: bool = True) -> None:
        self.writer.close()


class MlflowLogger:
    """One MLflow run per vaelab run (continued on --resume), in the experiment "vaelab" of the
    tracking URI MLflow is configured with (MLFLOW_TRACKING_URI, else its default): settings as
    params, figures as metrics with the epoch as step, grids as images under samples/."""

    def __init__(self, run_dir: Path, settings: dict[str, Any], resumed: bool) -> None:
        try:
            import mlflow
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise VaelabError("log mlflow needs the mlflow package: pip install 'vaelab[mlflow]'") from None
        try:
            self.client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
            experiment = self.client.get_experiment_by_name("vaelab")
            experiment_id = (
                experiment.experiment_id if experiment else self.client.create_experiment("vaelab")
            )
            id_file = run_dir / MLFLOW_RUN_FILE
            if resumed and id_file.exists():
                self.run_id = id_file.read_text().strip()
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                run = self.client.create_run(experiment_id, run_name=run_dir.resolve().name)
                self.run_id = run.info.run_id
                from mlflow.entities import Param

                params = [Param(k, str(v)) for k, v in sorted(settings.items())]
                self.client.log_batch(self.run_id, params=params)
                self.client.set_tag(self.run_id, "vaelab.run_dir", str(run_dir.resolve()))
                run_dir.mkdir(parents=True, exist_ok=True)
                id_file.write_text(self.run_id + "\n")
        except Exception as error:  # MLflow raises many kinds; the user needs one line
            uri = os.environ.get("MLFLOW_TRACKING_URI", "MLflow's default")
            raise VaelabError(f"cannot log to MLflow at {uri} ({str(error).splitlines()[0][:200]})") from None
        self.tracking_uri = mlflow.get_tracking_uri()

    def log_epoch(self, row: dict[str, Any], images: torch.Tensor | None) -> None:
        from mlflow.entities import Metric

        epoch, now = row["epoch"], _milliseconds()
        metrics = [Metric(key, float(row[key]), now, epoch) for key in SCALARS if key in row]
        self.client.log_batch(self.run_id, metrics=metrics)
        if images is not None:
            grid = (_grid(images) * 255).round().astype(np.uint8)
            self.client.log_image(self.run_id, grid, artifact_file=f"samples/epoch_{epoch:04d}.png")

    def close(self, finished: bool = True) -> None:
        """Mark the MLflow run finished, or failed when training stopped on an error or Ctrl-C."""
        self.client.set_terminated(self.run_id, status="FINISHED" if finished else "FAILED")


def _grid(images: torch.Tensor) -> np.ndarray:
    from vaelab.plots import to_grid

    grid = to_grid(images, nrow=8)
    return np.repeat(grid, 3, axis=2) if grid.shape[2] == 1 else grid


def _milliseconds() -> int:
    import time

    return int(time.time() * 1000)
