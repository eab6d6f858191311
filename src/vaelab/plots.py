"""Every figure vaelab draws. Images are [N, C, H, W] in [0, 1]; no metrics are computed here.

Figures are built on matplotlib.figure.Figure (no pyplot state) and every file is written
atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vaelab.data.transforms import from_unit
from vaelab.errors import VaelabError
from vaelab.fileio import atomic_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def figure(**options: Any) -> Figure:
    """A matplotlib Figure (matplotlib is imported on the first figure: commands that draw none
    start faster)."""
    from matplotlib.figure import Figure

    return Figure(**options)


def tile(images: torch.Tensor, nrow: int, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Images [N, C, H, W] laid out `nrow` to a row as one [3, H', W'] picture (grey repeated into
    3 channels), `padding` pixels of `pad_value` around and between them; one image alone is
    returned as it is."""
    n, channels, height, width = images.shape
    if channels == 1:
        images = images.expand(n, 3, height, width)
    if n == 1:
        return images[0]
    columns = min(nrow, n)
    rows = math.ceil(n / columns)
    cell_h, cell_w = height + padding, width + padding
    grid = images.new_full((3, rows * cell_h + padding, columns * cell_w + padding), pad_value)
    for i, image in enumerate(images):
        top, left = (i // columns) * cell_h + padding, (i % columns) * cell_w + padding
        grid[:, top : top + height, left : left + width] = image
    return grid


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """An image [C, H, W] in [0, 1] as a [H, W, C] uint8 array, each value rounded to the nearest
    of the 256 levels."""
    return from_unit(image).permute(1, 2, 0).numpy()


def to_pil(image: np.ndarray) -> Image.Image:
    """A uint8 image [C, H, W] (C = 1 or 3) as a PIL image ("L" or "RGB")."""
    return Image.fromarray(image[0]) if image.shape[0] == 1 else Image.fromarray(image.transpose(1, 2, 0))


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 image [C, H, W] as a PNG at `path` (through a temporary file)."""
    with atomic_output(path) as tmp:
        to_pil(image).save(tmp, format="PNG")
    return Path(path)


def _upscale(images: torch.Tensor, min_side: int = 56) -> torch.Tensor:
    """Nearest-neighbour upscaling of small images so grids are readable."""
    factor = max(1, min_side // min(images.shape[-2:]))
    return F.interpolate(images, scale_factor=factor, mode="nearest") if factor > 1 else images


def _readable_grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """Images clamped to [0, 1], upscaled if small, tiled `nrow` to a row with white separators."""
    return tile(_upscale(images.float().cpu().clamp(0, 1)), nrow=nrow)


# What an image grid can be saved as, by file suffix (lossless PNG is what the help suggests)
GRID_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                ".tif": "TIFF", ".tiff": "TIFF"}  # fmt: skip


def check_grid_path(path: str | Path) -> str:
    """The PIL format an image grid saved at `path` is written in, by its suffix; any suffix not in
    GRID_FORMATS is a VaelabError. Commands call it before their work, so a mistyped -o costs
    nothing."""
    image_format = GRID_FORMATS.get(Path(path).suffix.lower())
    if image_format is None:
        raise VaelabError(f"-o {path}: choose a file ending in {', '.join(GRID_FORMATS)}")
    return image_format


def check_figure_path(path: str | Path) -> str:
    """The matplotlib format a figure saved at `path` is written in (png, pdf, svg, jpg and the rest
    matplotlib writes), by its suffix; any other suffix is a VaelabError. Called before the work, as
    check_grid_path."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    image_format = Path(path).suffix.lower().lstrip(".")
    if image_format not in formats:
        raise VaelabError(f"-o {path}: choose a file ending in .{', .'.join(sorted(formats))}")
    return image_format


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int) -> Path:
    """Save images as one grid, `nrow` images per row, white separators, in the format its suffix
    names (GRID_FORMATS; PNG is lossless). An unknown suffix is a VaelabError, nothing written."""
    image_format = check_grid_path(path)
    grid = _readable_grid(images, nrow)
    with atomic_output(path) as tmp:
        Image.fromarray(to_uint8(grid)).save(tmp, format=image_format)
    return Path(path)


def to_grid(images: torch.Tensor, nrow: int) -> np.ndarray:
    """One [H, W, C] array of images laid out in a grid, for matplotlib."""
    return _readable_grid(images, nrow).permute(1, 2, 0).numpy()


def save_labelled_rows(rows: Sequence[tuple[str, torch.Tensor]], path: str | Path, title: str = "") -> Path:
    """One row of images per (label, images) pair, the label on the left (e.g. AE vs VAE strips)."""
    columns = max(len(images) for _, images in rows)
    height = 0.9 * len(rows) + (0.5 if title else 0.1)
    fig = figure(figsize=(1.5 + 0.75 * columns, height), dpi=100, layout="constrained")
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (label, images) in zip(axes, rows):
        ax.imshow(to_grid(images, nrow=columns), cmap="gray", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def save_titled_grids(panels: Sequence[tuple[str, torch.Tensor]], path: str | Path, nrow: int) -> Path:
    """Image grids side by side, each under its title (e.g. samples of several models)."""
    fig = figure(figsize=(4.2 * len(panels), 4.6), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, images) in zip(axes, panels):
        ax.imshow(to_grid(images, nrow=nrow), cmap="gray", interpolation="nearest")
        ax.set_title(title, fontsize=11)
        ax.axis("off")
    return save_figure(fig, path)


@dataclass
class ScatterPanel:
    """One latent scatter: 2-D coordinates [N, 2], optional class labels [N] and names."""

    title: str
    coords: torch.Tensor
    labels: torch.Tensor | None
    class_names: list[str] | None = None
    axis_labels: tuple[str, str] = ("z[0]", "z[1]")


def save_latent_scatter(
    panels: Sequence[ScatterPanel],
    path: str | Path,
    shared_legend: bool = True,
    legend_title: str | None = "class",
) -> Path:
    """Scatter plots of latent codes side by side, coloured by class: one legend for all panels
    (titled `legend_title`), or one inside each panel when they colour by different things
    (shared_legend=False)."""
    fig = figure(figsize=(5.2 * len(panels) + 1.2, 5.0), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    handles = None
    for ax, panel in zip(axes, panels):
        xy = panel.coords.numpy()
        if panel.labels is None:
            ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.6, color="tab:blue", linewidths=0)
        else:
            classes = sorted(set(panel.labels.tolist()))
            for cls in classes:
                mask = (panel.labels == cls).numpy()
                name = (
                    panel.class_names[cls] if panel.class_names and cls < len(panel.class_names) else str(cls)
                )
                ax.scatter(
                    xy[mask, 0], xy[mask, 1], s=5, alpha=0.7, linewidths=0, label=name,
                    color=_class_colour(cls, len(classes)),
                )  # fmt: skip
            handles = ax.get_legend_handles_labels()
            if not shared_legend:
                ax.legend(markerscale=3, fontsize=8, frameon=True, framealpha=0.8)
        ax.set_title(panel.title, fontsize=11)
        ax.set_xlabel(panel.axis_labels[0])
        ax.set_ylabel(panel.axis_labels[1])
        ax.grid(alpha=0.25)
    if handles and shared_legend:
        fig.legend(*handles, loc="outside right center", markerscale=3, title=legend_title, frameon=False)
    return save_figure(fig, path)


@dataclass
class GridPanel:
    """Images decoded over a rectangle of the latent plane, n x n, row-major from the top."""

    title: str
    images: torch.Tensor
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    axis_labels: tuple[str, str] = ("z[0]", "z[1]")


def save_latent_grids(panels: Sequence[GridPanel], path: str | Path) -> Path:
    """Decoded latent-plane grids side by side, axes in latent units."""
    fig = figure(figsize=(5.6 * len(panels), 5.6), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        n = round(len(panel.images) ** 0.5)
        grid = tile(panel.images.float().cpu().clamp(0, 1), nrow=n, padding=0).permute(1, 2, 0).numpy()
        extent = (*panel.x_range, *panel.y_range)
        ax.imshow(grid, cmap="gray", extent=extent, aspect="auto", interpolation="nearest")
        ax.set_box_aspect(1)  # square digits whatever the latent ranges
        ax.set_title(panel.title, fontsize=11)
        ax.set_xlabel(panel.axis_labels[0])
        ax.set_ylabel(panel.axis_labels[1])
    return save_figure(fig, path)


def save_loss_curves(runs: dict[str, list[dict]], path: str | Path, units: str = "nats per image") -> Path:
    """Training and validation loss per epoch for one or more runs."""
    fig = figure(figsize=(7, 4.2), dpi=110, layout="constrained")
    ax = fig.subplots()
    for i, (name, metrics) in enumerate(runs.items()):
        epochs = [m["epoch"] for m in metrics]
        colour = f"C{i}"
        ax.plot(epochs, [m["train_loss"] for m in metrics], color=colour, alpha=0.5, linestyle="--")
        ax.plot(epochs, [m["val_loss"] for m in metrics], color=colour, label=f"{name} (val; train dashed)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"loss ({units})")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=9)
    return save_figure(fig, path)


def save_loss_parts(metrics: list[dict], path: str | Path, units: str = "nats per image") -> Path:
    """One run's loss per epoch in its parts, side by side: the total, the reconstruction term and
    (for a VAE) the KL term; validation solid, training dashed."""
    parts = [("loss", "total loss"), ("recon", "reconstruction")]
    if any(row.get("val_kl") for row in metrics):
        parts.append(("kl", "KL divergence to the prior"))
    fig = figure(figsize=(4.2 * len(parts), 3.6), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(parts), squeeze=False)[0]
    epochs = [row["epoch"] for row in metrics]
    for ax, (key, title) in zip(axes, parts):
        ax.plot(epochs, [row[f"train_{key}"] for row in metrics], color="C0", alpha=0.6, linestyle="--",
                label="training", marker="." if len(epochs) < 3 else None)  # fmt: skip
        ax.plot(epochs, [row[f"val_{key}"] for row in metrics], color="C0", label="validation",
                marker="o" if len(epochs) < 3 else None)  # fmt: skip
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("epoch")
        ax.set_ylabel(units)
        ax.grid(alpha=0.25)
    axes[0].legend(fontsize=9)
    return save_figure(fig, path)


def _class_colour(cls: int, n_classes: int) -> tuple[float, float, float, float]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n_classes <= 10 else "tab20"]
    return cmap(cls % cmap.N)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save a matplotlib figure atomically in the format its suffix names (png, pdf, svg, jpg and
    the rest matplotlib writes); any other suffix is a VaelabError, nothing written."""
    image_format = check_figure_path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=image_format)
    return Path(path)
