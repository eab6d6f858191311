"""A trained run, opened for use: its model on a device, its settings, the images it works on.

Every command that uses a run goes through here, so opening, shape checks and image selection
are decided once.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import torch

from vaelab import checkpoint
from vaelab.config import TrainConfig
from vaelab.data import ImageSet, load_images
from vaelab.data.folder import IMAGE_SUFFIXES, list_images, load_files
from vaelab.device import resolve_device
from vaelab.errors import VaelabError
from vaelab.models import AE, VAE


def open_run(run: str | Path, device: str | torch.device = "auto") -> tuple[AE | VAE, TrainConfig]:
    """The model of a run folder on `device` (eval mode), and the settings it was trained with."""
    model = checkpoint.load(run, resolve_device(device))
    return model, checkpoint.read_train_config(run)


def weights_hash(run: str | Path) -> str:
    """SHA-256 of the run's model.safetensors: what compressed files, saved detectors and the
    figures and attribute vectors written into the run are bound to. Hashed once per version of
    the file (a report checks it for every section)."""
    path = (Path(run) / checkpoint.WEIGHTS).resolve()
    stat = path.stat()
    return _sha256(path, stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256(path: Path, inode: int, size: int, modified_ns: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()  # saved atomically: a new file, a new key


def weights_identity(run: str | Path) -> dict[str, Any]:
    """Which weights a command's figures are of, for the files it writes into the run: the epoch
    and SHA-256 of model.safetensors (`vaelab report` tells when the run has saved newer ones)."""
    return {"weights_epoch": checkpoint.weights_epoch(run), "weights_sha256": weights_hash(run)}


def weights_changed(run: str | Path, record: dict[str, Any]) -> bool:
    """Whether `record` (see weights_identity) is of other weights than the run holds now; False
    when it does not say which (files of earlier releases) or the run has no weights."""
    recorded = record.get("weights_sha256")
    return (
        isinstance(recorded, str)
        and (Path(run) / checkpoint.WEIGHTS).is_file()
        and recorded != weights_hash(run)
    )


def epoch_note(epoch: Any) -> str:
    """ " (epoch N)" where the epoch is known, else nothing."""
    return f" (epoch {epoch})" if epoch else ""


def check_shape(model: AE | VAE, images: torch.Tensor, source: str) -> None:
    """Refuse images whose [C, H, W] differs from what the model was trained on."""
    c = model.config
    expected = (c.image_channels, c.image_height, c.image_width)
    if tuple(images.shape[1:]) != expected:
        raise VaelabError(
            f"{source} gives images of shape {tuple(images.shape[1:])} but the model expects {expected} "
            "(channels, height, width); use the data it was trained on, or images of that shape"
        )


def model_size(model: AE | VAE) -> tuple[int, int]:
    """(height, width) of the images the model takes."""
    return model.config.image_height, model.config.image_width


def run_images(model: AE | VAE, config: TrainConfig, split: str = "test") -> ImageSet:
    """A split of the dataset the run was trained on, checked against the model's image shape."""
    return select_images(model, config, split=split)


def select_images(
    model: AE | VAE,
    config: TrainConfig,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    inputs: list[str | Path] | None = None,
) -> ImageSet:
    """The images a command works on: files and folders given as `inputs`, else a split of
    `dataset` (default: the run's own), checked against the model's image shape. Grayscale
    images given to a colour model are read as equal R, G and B."""
    if inputs:
        files: list[Path] = []
        for item in map(Path, inputs):
            if item.is_dir():
                files += list_images(item)
            elif item.is_file():
                files.append(item)
            else:
                raise VaelabError(f"input {item} does not exist; give image files or folders")
        if not files:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise VaelabError(
                f"input {' '.join(map(str, inputs))} holds no images ({suffixes}); give image files or "
                "folders that hold them"
            )
        return load_files(files, model.config.image_channels, model_size(model))
    name = dataset or config.dataset
    if not dataset and name.startswith("folder:"):  # the run's own folder: say how to point it elsewhere
        folder = Path(name.removeprefix("folder:")).expanduser()
        if not folder.is_dir():
            relative = "" if folder.is_absolute() else f" (a relative path, read from {Path.cwd()})"
            raise VaelabError(
                f"the run was trained on {name}, which is not there{relative}; put the folder back, or set "
                '"dataset" in the run\'s config.json to where it is now'
            )
    image_set = load_images(name, split, data_dir if dataset else config.data_dir, config.image_size)
    if image_set.image_shape[0] == 1 and model.config.image_channels == 3:
        image_set.images = image_set.images.expand(-1, 3, -1, -1)  # a view: memory as for grey
    check_shape(model, image_set.images, name)
    return image_set
