"""Look at a trained model: new samples, reconstructions, interpolations, the latent space.

Each function takes a run folder, writes one PNG, and returns the paths and figures it made (what
the matching CLI command prints with --json).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from vaelab import latent, plots
from vaelab.config import TrainConfig
from vaelab.data.folder import read_image_files
from vaelab.data.transforms import from_unit, to_unit
from vaelab.device import model_device
from vaelab.errors import VaelabError
from vaelab.fileio import atomic_output
from vaelab.latent_density import DEFAULT_COMPONENTS, DENSITY_FILE, LATENT_SOURCES, latent_density
from vaelab.models import AE, VAE
from vaelab.options import Choices, DataDir, Dataset, Device, Draws, Flag, Inputs, Out, Run, Seed, Split
from vaelab.runs import model_size, open_run, run_images, select_images

METHODS = ("linear", "slerp")
DRAWS = 8  # images drawn per latent to show the mean of a pixelcnn decoder (no closed form)

logger = logging.getLogger(__name__)


def sample(
    run: Run,
    n: Annotated[int, Flag("-n"), "number of images"] = 64,
    out: Annotated[
        Out,
        "where to write them: a picture of their grid (.png, .jpg, ...), an array (.npy: the images "
        "[N, C, H, W] uint8; .npz: with their latents), or a folder (no suffix): one PNG each",
    ] = "samples.png",
    seed: Annotated[Seed, "seed of the random latents (and drawn pixels)"] = 0,
    latents: Annotated[
        str,
        Choices(LATENT_SOURCES),
        "prior: z ~ N(0, I); fitted: z from a Gaussian mixture fitted to the training images' latents "
        "(saved in RUN/latent_density.safetensors; lets an AE generate, and a VAE whose posteriors "
        "spread wider than the prior)",
    ] = "prior",
    components: Annotated[int, "fitted: Gaussians in the mixture"] = DEFAULT_COMPONENTS,
    device: Device = "auto",
) -> dict[str, Any]:
    """Decode n random latents into images: the mean image of each where the decoder has a
    closed form, else (pixelcnn) pixels drawn from p(x|z); `pixels` in the result says which. They
    go to a picture of their grid, an array file or a folder of PNGs, as `out` says."""
    _positive("n", n)
    _positive("components", components)
    files = _sample_files(out, n)
    if latents not in LATENT_SOURCES:
        raise VaelabError(f"latents {latents!r} is not one of: {', '.join(LATENT_SOURCES)}")
    model, config = open_run(run, device)
    generator = torch.Generator(model_device(model)).manual_seed(seed)
    drawn = not model.pixels.closed_form_mean
    with torch.no_grad():
        if latents == "fitted":
            density = latent_density(run, model, config, components, seed)
            z = density.sample(n, torch.Generator().manual_seed(seed)).to(model_device(model))
        else:  # as model.sample draws them
            z = torch.randn(n, model.config.latent_dim, generator=generator, device=model_device(model))
        images = model.generate(z, generator).cpu()
    _save_samples(images, z.cpu(), out, files)
    mismatch = _prior_mismatch(model, config) if latents == "prior" else None  # said once the grid is saved
    result = {"out": str(out), "output": str(out), "n": n, "seed": seed, "latents": latents,
              "pixels": "drawn" if drawn else "mean"}  # fmt: skip
    if latents == "fitted":
        result["density"] = str(Path(run) / DENSITY_FILE)
    if mismatch is not None:
        result["prior_mismatch_nats"] = mismatch
    return result


SAMPLE_ARRAYS = (".npy", ".npz")
BIG_GRID = 1024  # images in one grid picture past which `sample` says how to get them as files


def _sample_files(out: str | Path, n: int) -> list[Path] | None:
    """The PNG files `sample` writes into folder `out` (no suffix), refused if any exists; None for
    an array or a grid file, whose suffix is checked here (before any work)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix in SAMPLE_ARRAYS:
        return None
    if suffix in plots.GRID_FORMATS:
        return None
    if suffix:
        raise VaelabError(
            f"-o {out}: choose a file ending in {', '.join(plots.GRID_FORMATS)} (a picture of the grid), "
            f"{' or '.join(SAMPLE_ARRAYS)} (an array), or a folder (a name without a suffix)"
        )
    if out.exists() and not out.is_dir():
        raise VaelabError(f"-o {out} is a file; give a folder for one PNG per image")
    width = max(5, len(str(n - 1)))
    files = [out / f"{i:0{width}d}.png" for i in range(n)]
    taken = [file for file in files if file.exists()]
    if taken:
        raise VaelabError(f"{taken[0]} already exists; choose an empty or new folder")
    return files


def _save_samples(images: torch.Tensor, z: torch.Tensor, out: str | Path, files: list[Path] | None) -> None:
    """Write images [N, C, H, W] in [0, 1] (and their latents z) as `_sample_files` decided."""
    suffix = Path(out).suffix.lower()
    if files is None and suffix not in SAMPLE_ARRAYS:
        columns = latent.grid_size(len(images))
        if len(images) > BIG_GRID:
            logger.warning(
                "a grid of %d images is one picture of %d x %d of them; -o FOLDER (one PNG each) or "
                "-o FILE.npz (an array) writes them as files",
                len(images), columns, math.ceil(len(images) / columns),
            )  # fmt: skip
        plots.save_image_grid(images, out, nrow=columns)
        return
    pixels = from_unit(images)
    if files is not None:
        for file, image in zip(files, pixels.numpy()):
            plots.save_png(image, file)
        return
    with atomic_output(out) as tmp, open(tmp, "wb") as f:
        if suffix == ".npy":
            np.save(f, pixels.numpy())
        else:
            np.savez_compressed(f, images=pixels.numpy(), latents=z.float().numpy())


def _prior_mismatch(model: AE | VAE, config: TrainConfig) -> float | None:
    """How far the run's test latents sit from N(0, I) (latent.prior_mismatch, on up to
    latent.PRIOR_CHECK_IMAGES test images), said in a warning when draws from it will often miss them;
    None when the test images cannot be read (a moved folder: sampling needs none)."""
    try:
        images = run_images(model, config).images[: latent.PRIOR_CHECK_IMAGES]
    except VaelabError:
        return None
    if len(images) < 2:
        return None
    nats, variance = latent.prior_mismatch(model, images)
    if nats > latent.PRIOR_MISMATCH_NATS:
        kind = "codes" if isinstance(model, AE) else "latents"
        logger.warning(
            "this run's test images have %s far from N(0, I), which these samples are drawn from (%.1f nats "
            "apart; variance %.2f to %.2f per coordinate, the prior's 1), so many samples may not look like "
            "the images; --latents fitted draws where the images sit",
            kind, nats, float(variance.min()), float(variance.max()),
        )  # fmt: skip
    return nats


def reconstruct(
    run: Run,
    n: Annotated[
        int, Flag("-n"), "number of images (random ones of a dataset; the first of files given)"
    ] = 16,
    out: Annotated[Out, "PNG to write"] = "reconstructions.png",
    dataset: Dataset = None,
    data_dir: DataDir = None,
    split: Split = "test",
    inputs: Inputs = None,
    seed: Annotated[Seed, "seed of the choice of images (and of drawn pixels)"] = 0,
    draws: Draws = DRAWS,
    device: Device = "auto",
) -> dict[str, Any]:
    """Encode n images and decode them: inputs above their reconstructions, in a PNG. The images
    are n random ones of the run's test images (or of `split` of `dataset`), or the first n of the
    image files and folders given as `inputs`, in their order. A pixelcnn decoder shows the
    average of `draws` images drawn per latent (seeded by `seed`)."""
    _positive("n", n)
    plots.check_grid_path(out)
    model, config = open_run(run, device)
    images = select_images(model, config, dataset, data_dir, split, inputs)
    n = min(n, len(images))
    if inputs:
        chosen = torch.arange(n)
    else:
        chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    shown = to_unit(images.images[chosen])
    with torch.no_grad():
        recon = latent.reconstruct(model, images.images[chosen], draws, seed)
    columns = min(n, 10)
    rows = []
    for start in range(0, n, columns):  # pairs of rows: the images, then their reconstructions
        rows += [shown[start : start + columns], recon[start : start + columns]]
        pad = columns - len(rows[-1])
        if pad:
            blank = torch.ones(pad, *shown.shape[1:])
            rows[-2], rows[-1] = torch.cat([rows[-2], blank]), torch.cat([rows[-1], blank])
    plots.save_image_grid(torch.cat(rows), out, nrow=columns)
    mse = float((recon - shown).pow(2).flatten(1).mean(1).mean())
    return {"out": str(out), "output": str(out), "n": n, "mse_per_pixel": mse}


def interpolate(
    run: Run,
    out: Annotated[Out, "PNG to write"] = "interpolation.png",
    from_class: Annotated[
        int | str | None,
        "start at a typical test image of this class, by name (a folder's subfolder) or number "
        "(no ends given: 1 to 7 for digits, else the first two classes)",
    ] = None,
    to_class: Annotated[int | str | None, "end at a typical test image of this class"] = None,
    from_image: Annotated[str | Path | None, "start at this image file"] = None,
    to_image: Annotated[str | Path | None, "end at this image file"] = None,
    steps: Annotated[int, "images in the strip, both ends included"] = 10,
    method: Annotated[
        str, Choices(METHODS), "straight line, or spherical (follows the prior's shell)"
    ] = "linear",
    draws: Draws = DRAWS,
    device: Device = "auto",
) -> dict[str, Any]:
    """Decode `steps` latents between two images: given files, or typical test images of two
    classes (without either, of a 1 and a 7 for digits, else of the first two classes). A pixelcnn
    decoder shows the average of `draws` images drawn per latent."""
    if steps < 2:
        raise VaelabError(f"steps must be at least 2, got {steps}")
    if method not in METHODS:
        raise VaelabError(f"method {method!r} is not one of: {', '.join(METHODS)}")
    plots.check_grid_path(out)
    if (from_image is None) != (to_image is None):
        raise VaelabError("give both ends as files: from_image and to_image (--from-image A --to-image B)")
    if (from_class is None) != (to_class is None):
        raise VaelabError("give both ends as classes: from_class and to_class (--from-class A --to-class B)")
    model, config = open_run(run, device)
    if from_image is not None and to_image is not None:
        paths = [Path(from_image), Path(to_image)]
        ends = read_image_files(paths, None, model.config.image_channels, model_size(model))
        classes = None
    else:
        ends, classes = class_endpoints(model, config, from_class, to_class)
    z = latent.embed_images(model, ends)
    path = (latent.slerp if method == "slerp" else latent.lerp)(z[0], z[1], steps)
    images = latent.decode_latents(model, path, draws)
    plots.save_image_grid(images, out, nrow=steps)
    return {
        "out": str(out),
        "output": str(out),
        "steps": steps,
        "method": method,
        "from_class": None if classes is None else classes[0],
        "to_class": None if classes is None else classes[1],
        "latent_distance": float((z[1] - z[0]).norm()),
    }


def class_pairs(classes: list[int]) -> list[tuple[int, int]]:
    """Pairs of classes worth walking between: 1 to 7, 3 to 8 and 4 to 9 (digits that look alike
    in places) when the classes include the ten digits, else each class to the next."""
    if set(classes) >= set(range(10)):
        return [(1, 7), (3, 8), (4, 9)]
    return list(itertools.pairwise(sorted(classes)))


def class_endpoints(
    model: AE | VAE, config: TrainConfig, from_class: int | str | None, to_class: int | str | None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Typical test images [2, C, H, W] (uint8) of two classes (None: the first of `class_pairs`),
    and the two classes' numbers. A class is its number, or a text: its name, else its number."""
    test = run_images(model, config)
    if test.labels is None:
        raise VaelabError(
            f"{config.dataset} has no class labels; give two image files (--from-image A --to-image B)"
        )
    present = sorted(set(test.labels.tolist()))
    names = test.class_names or [str(c) for c in range(max(present) + 1)]
    known = ", ".join(str(c) if names[c] == str(c) else f"{c} ({names[c]})" for c in present)
    chosen = from_class is None or to_class is None
    if chosen:
        if len(present) < 2:
            raise VaelabError(
                f"the test images have one class ({known}); give two image files (--from-image A --to-image B)"
            )
        from_class, to_class = class_pairs(present)[0]
    else:
        from_class, to_class = (_class_number(c, names, known) for c in (from_class, to_class))
    latents = latent.embed_images(model, test.images)
    indices = []
    for cls in (from_class, to_class):
        if cls not in present:
            raise VaelabError(f"class {cls} has no test images; known classes: {known}")
        indices.append(latent.class_prototype(latents, test.labels, cls))
    if chosen:  # say what was picked for the user
        logger.info("from a typical %s to a typical %s (test images %d and %d); from_class and "
                    "to_class (--from-class, --to-class) choose others", names[from_class], names[to_class], *indices)  # fmt: skip
    return test.images[indices], (from_class, to_class)


def _class_number(given: int | str, names: list[str], known: str) -> int:
    """The number of the class `given` by number, or by name (else by number, as text)."""
    if isinstance(given, int):
        return given
    if given in names:
        return names.index(given)
    with contextlib.suppress(ValueError):
        return int(given)
    raise VaelabError(f"no class is named {given!r}; known classes: {known}")


def latent_plot(
    run: Run, out: Annotated[Out, "PNG to write"] = "latent.png", device: Device = "auto"
) -> dict[str, Any]:
    """Scatter the test set's latent means coloured by class (PCA when latent_dim > 2)."""
    plots.check_figure_path(out)
    model, config = open_run(run, device)
    test = run_images(model, config)
    name = f"{model.config.model.upper()} latent space ({config.dataset} test set)"
    panel = latent.scatter_panel(model, test, name)
    plots.save_latent_scatter([panel], out)
    return {
        "out": str(out),
        "output": str(out),
        "n_points": len(test),
        "projection": "pca" if model.config.latent_dim > 2 else "none",
    }


def latent_grid(
    run: Run,
    out: Annotated[Out, "PNG to write"] = "latent_grid.png",
    n: Annotated[int, Flag("-n"), "points per side"] = 15,
    draws: Draws = DRAWS,
    device: Device = "auto",
) -> dict[str, Any]:
    """Decode an n x n grid over the part of the latent plane that the test set occupies: the
    plane itself for a 2-D latent, else the plane of the test codes' two main principal directions
    through their mean (a pixelcnn decoder: the average of `draws` images drawn per point)."""
    plots.check_figure_path(out)
    model, config = open_run(run, device)
    if model.config.latent_dim < 2:
        raise VaelabError(
            f"latent-grid needs a latent of 2 or more dimensions; this run has {model.config.latent_dim}"
        )
    _positive("n", n)
    codes = latent.embed_images(model, run_images(model, config).images)
    plane = (
        "decoded latent plane" if model.config.latent_dim == 2 else "decoded plane of the 2 main directions"
    )
    panel = latent.grid_panel(model, codes, n, f"{model.config.model.upper()}: {plane}", draws)
    plots.save_latent_grids([panel], out)
    return {
        "out": str(out),
        "output": str(out),
        "n": n,
        "x_range": panel.x_range,
        "y_range": panel.y_range,
        "projection": "none" if model.config.latent_dim == 2 else "pca",
    }


def _positive(flag: str, value: int) -> None:
    if value < 1:
        raise VaelabError(f"{flag} must be at least 1, got {value}")
