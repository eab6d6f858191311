"""Steer a model through its latent space: move one coordinate (`vaelab traverse`), find the
direction of a known characteristic (`vaelab attribute`) and move an image along it (`vaelab edit`).

A latent vector describes an image by its characteristics; a coordinate that changes one
characteristic alone is "disentangled". Attribute vectors are saved in the run folder as
``attributes.safetensors`` (one vector [D] per name, how it was made in the file's metadata).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vaelab import checkpoint, latent, plots
from vaelab.data import ImageSet
from vaelab.data.labels import read_labels_csv
from vaelab.data.transforms import to_unit
from vaelab.errors import VaelabError
from vaelab.fileio import atomic_output
from vaelab.models import AE, VAE
from vaelab.options import DataDir, Dataset, Device, Flag, Inputs, NImages, Out, Required, Run, Split
from vaelab.runs import epoch_note, open_run, select_images, weights_changed, weights_identity

ATTRIBUTES_FILE = "attributes.safetensors"
DEFAULT_ROWS = 10  # traversal rows of a VAE: its most informative coordinates
KL_IMAGES = 2000  # test images over which each coordinate's KL is averaged


def traverse(
    run: Run,
    out: Annotated[Out, "PNG to write"] = "traversal.png",
    index: Annotated[int, "the test image whose latent is moved (ignored with inputs)"] = 0,
    inputs: Inputs = None,
    rows: Annotated[
        int | None, "latent coordinates to show (default: the 10 with the most KL for a VAE, all for an AE)"
    ] = None,
    steps: Annotated[int, "images per row"] = 9,
    limit: Annotated[float, "each coordinate moves from -LIMIT to +LIMIT standard deviations"] = 3.0,
    dataset: Dataset = None,
    data_dir: DataDir = None,
    device: Device = "auto",
) -> dict[str, Any]:
    """One row per latent coordinate: an image's latent decoded as that coordinate alone moves from
    -limit to +limit standard deviations (of the prior N(0, 1) for a VAE, of the test codes for an
    AE), the β-VAE figure. A VAE's rows are its coordinates with the most KL, most first."""
    if steps < 2:
        raise VaelabError(f"steps must be at least 2, got {steps}")
    if not limit > 0:
        raise VaelabError(f"limit must be positive, got {limit}")
    if rows is not None and rows < 1:
        raise VaelabError(f"rows must be at least 1, got {rows}")
    plots.check_figure_path(out)
    model, config = open_run(run, device)
    _no_drawing(model, "traverse")
    test = select_images(model, config, dataset, data_dir, "test", None)
    if inputs:
        image = select_images(model, config, None, None, "test", inputs).images[:1]
    else:
        if not 0 <= index < len(test):
            raise VaelabError(f"index must be between 0 and {len(test) - 1}, got {index}")
        image = test.images[index : index + 1]
    z = latent.embed_images(model, image)[0]
    units = torch.linspace(-limit, limit, steps)
    dims, centre, spread, kl = traversal_axes(model, test.images, rows)
    grid = torch.cat([latent.traversal_latents(z, [d], centre[d] + units * spread[d]) for d in dims])
    images = latent.decode_latents(model, grid)
    labels = [f"z[{d}]" + (f"\nKL {float(kl[d]):.2f}" if kl is not None else "") for d in dims]
    title = f"each row moves one latent coordinate from -{limit:g} to +{limit:g} standard deviations"
    plots.save_labelled_rows(
        [(label, images[i * steps : (i + 1) * steps]) for i, label in enumerate(labels)], out, title
    )
    return {
        "out": str(out),
        "dims": dims,
        "kl_per_dim": [float(kl[d]) for d in dims] if kl is not None else None,
        "values": units.tolist(),
        "steps": steps,
    }


def traversal_axes(
    model: AE | VAE, images: torch.Tensor, rows: int | None = None
) -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """What a traversal moves, from (up to KL_IMAGES of) `images`: the coordinates (a VAE's `rows`
    with the most KL, most first, default DEFAULT_ROWS; an AE's first `rows`, default all), the
    centre and spread of every coordinate (the prior N(0, 1) for a VAE, the codes' mean and
    standard deviation for an AE), each [D], and a VAE's KL per coordinate (None for an AE)."""
    latent_dim = model.config.latent_dim
    if isinstance(model, VAE):
        kl = latent.kl_per_dimension(model, images[:KL_IMAGES])
        dims = kl.argsort(descending=True)[: rows or min(DEFAULT_ROWS, latent_dim)].tolist()
        return dims, torch.zeros(latent_dim), torch.ones(latent_dim), kl
    codes = latent.embed_images(model, images[:KL_IMAGES])
    dims = list(range(min(rows or latent_dim, latent_dim)))
    return dims, codes.mean(0), codes.std(0), None


def attribute(
    run: Run,
    factor: Annotated[
        str,
        Required(),
        "NAME (a continuous factor: the mean move of the latent per unit of it; a 0/1 or -1/1 column: with minus without), "
        "NAME=VALUE (that value against the rest, e.g. shape=ellipse, or class=7 for a labelled dataset) or "
        "NAME=LOW:HIGH (values in that range, wrapping when LOW > HIGH, e.g. hue=0.92:0.08 for red)",
    ],
    labels: Annotated[str | Path | None, "CSV of file name, then one column per attribute (folders)"] = None,
    name: Annotated[str | None, "save the vector under this name (default: the factor as written)"] = None,
    dataset: Dataset = None,
    data_dir: DataDir = None,
    split: Split = "train",
    n_images: NImages = None,
    device: Device = "auto",
) -> dict[str, Any]:
    """Find the latent direction of a known characteristic and save it in RUN/attributes.safetensors.

    For a yes/no attribute it is the difference of the mean latents of images with and without it
    (amount 1 moves an average image without it to an average image with it); for a continuous
    factor, the slope of the latent regressed on the factor (amount 1 is the average move of the
    latent when the factor grows by one of its units; `r2` says how well the latent predicts the
    factor linearly).
    """
    identity = weights_identity(run)  # the weights whose latent space the vector belongs to
    model, config = open_run(run, device)
    images = select_images(model, config, dataset, data_dir, split, None)
    if labels is not None:
        images.factors = _csv_factors(labels, images, dataset or config.dataset)
    if images.labels is not None:  # the class is a known characteristic too: class=7, class=cats
        classes = images.labels.numpy()
        factors = images.factors or {}
        if not any(np.array_equal(values, classes) for values in factors.values()):  # shapes' shape is
            images.factors = {**factors, "class": classes}
    if not images.factors:
        raise VaelabError(
            f"{dataset or config.dataset} has no known factors or classes; give labels FILE.csv (--labels) "
            "for a folder"
        )
    images.images = images.images[:n_images]
    factor_name, _, condition = factor.partition("=")
    if factor_name not in images.factors:
        known = ", ".join(images.factors)
        raise VaelabError(f"no factor or attribute {factor_name!r}; known: {known}")
    values = np.asarray(images.factors[factor_name], dtype=np.float64)[: len(images.images)]
    keep = ~np.isnan(values)
    codes = latent.embed_images(model, images.images).double().numpy()[keep]
    values = values[keep]
    info: dict[str, Any] = {"factor": factor, "n_images": int(keep.sum())}
    binary_column = not condition and set(np.unique(values)) <= {-1.0, 0.0, 1.0}
    # A categorical factor takes the names of its values (background=white, in shapes), and so
    # does a factor that is the images' labels (shape=ellipse, class=7).
    labelled = images.labels is not None and np.array_equal(
        images.factors[factor_name], images.labels.numpy()
    )
    names = (images.factor_value_names or {}).get(factor_name) or (images.class_names if labelled else None)
    if names and not condition and not binary_column:  # its numbers are not amounts
        raise VaelabError(
            f"{factor_name} is a category, not an amount; give one of its values: "
            f"{factor_name}={names[min(1, len(names) - 1)]} (its values: {', '.join(names)})"
        )
    if condition or binary_column:
        has = _condition_mask(values, condition, factor_name, names) if condition else values > 0
        if has.all() or not has.any():
            raise VaelabError(f"{factor}: every image is on one side; pick a value or range that splits them")
        direction = codes[has].mean(0) - codes[~has].mean(0)
        info.update(kind="binary", n_with=int(has.sum()), n_without=int((~has).sum()))
    else:
        centred_codes, centred = codes - codes.mean(0), values - values.mean()
        # The direction: how the latent moves, on average, per unit of the factor (the slope of
        # each coordinate regressed on it), as the yes/no vector is the mean move from without
        # to with. (Regressing the factor on the latent instead leans on barely used coordinates,
        # which the decoder ignores.) R^2 says how well the latent predicts the factor linearly.
        direction = centred_codes.T @ centred / max(float(centred @ centred), 1e-300)
        weights = np.linalg.lstsq(centred_codes, centred, rcond=None)[0]
        r2 = 1 - ((centred - centred_codes @ weights) ** 2).sum() / max((centred**2).sum(), 1e-300)
        info.update(kind="continuous", r2=float(r2), factor_std=float(values.std()))
    name = name or factor
    info["norm"] = float(np.linalg.norm(direction))
    info.update(identity)
    path = Path(run) / ATTRIBUTES_FILE
    vectors, meta = load_attributes(run)
    vectors[name] = torch.from_numpy(direction).float()
    meta[name] = info
    with atomic_output(path) as tmp:
        save_file(
            {k: v.contiguous() for k, v in vectors.items()}, tmp, metadata={"attributes": json.dumps(meta)}
        )
    return {"out": str(path), "name": name, **info}


def format_summary(result: dict[str, Any]) -> str:
    """What `attribute` found, and an edit to try with it."""
    run, name = shlex.quote(str(Path(result["out"]).parent)), result["name"]
    if result["kind"] == "binary":
        found = f"{result['n_with']:,} images with it, {result['n_without']:,} without"
        amount, why = "1", "amount 1 moves an average image without it to one with it"
    else:
        found = (
            f"{result['n_images']:,} images; the latent predicts {result['factor']} linearly with "
            f"R² = {result['r2']:.2f}"
        )
        amount = f"{2 * result['factor_std']:.2g}"
        why = f"two standard deviations of {result['factor']}, in its units"
    return (
        f"saved attribute {name!r} in {result['out']} ({result['kind']}: {found})\n"
        f"try: vaelab edit {run} --attribute {shlex.quote(name)} --amount {amount}  ({why})"
    )


def edit(
    run: Run,
    attribute: Annotated[str, Required(), "name of an attribute vector saved by vaelab attribute"],
    amount: Annotated[float, "how far to move: the strip runs from -AMOUNT to +AMOUNT"] = 1.0,
    inputs: Inputs = None,
    n_images: Annotated[int, Flag("-n"), "test images to edit when no inputs are given"] = 4,
    steps: Annotated[int, "edited images per row (odd: the middle one is the plain reconstruction)"] = 7,
    out: Annotated[Out, "PNG to write"] = "edit.png",
    dataset: Dataset = None,
    data_dir: DataDir = None,
    device: Device = "auto",
) -> dict[str, Any]:
    """Decode each image's latent moved along a saved attribute vector by amounts from -amount to
    +amount: one row per image, the input first. Amounts are in the factor's units for a
    continuous factor (e.g. degrees of rotation), in "with minus without" for a yes/no one."""
    if steps < 2:
        raise VaelabError(f"steps must be at least 2, got {steps}")
    plots.check_figure_path(out)
    model, config = open_run(run, device)
    _no_drawing(model, "edit")
    vectors, meta = load_attributes(run)
    if attribute not in vectors:
        known = ", ".join(vectors) or "none yet (run vaelab attribute first)"
        raise VaelabError(f"{run} has no attribute {attribute!r}; saved: {known}")
    if attribute in stale_attributes(run, meta):
        info = meta[attribute]
        raise VaelabError(
            f"attribute {attribute!r} of {run} was found in the latent space of earlier weights"
            f"{epoch_note(info.get('weights_epoch'))}, and the run has saved newer ones since"
            f"{epoch_note(checkpoint.weights_epoch(run))}; find it again with "
            f"`vaelab attribute {run} --factor {info.get('factor', attribute)} --name {attribute}`"
        )
    chosen = select_images(model, config, dataset, data_dir, "test", inputs)
    images = chosen.images if inputs else chosen.images[: max(1, n_images)]
    z = latent.embed_images(model, images)  # [N, D]
    amounts = torch.linspace(-amount, amount, steps)
    moved = z[:, None, :] + amounts[None, :, None] * vectors[attribute][None, None, :]  # [N, steps, D]
    decoded = latent.decode_latents(model, moved.flatten(0, 1)).view(len(z), steps, *images.shape[1:])
    names = [Path(p).name for p in chosen.paths] if inputs and chosen.paths else None
    rows = [
        (names[i] if names else f"test {i}", torch.cat([to_unit(images[i : i + 1]), decoded[i]]))
        for i in range(len(z))
    ]
    title = f"{attribute}: input, then amounts {-amount:+g} to {amount:+g}"
    plots.save_labelled_rows(rows, out, title)
    return {
        "out": str(out),
        "attribute": attribute,
        "amounts": amounts.tolist(),
        "n_images": len(z),
        "made_from": meta[attribute],
    }


def load_attributes(run: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """The attribute vectors saved in a run (name -> [D]) and how each was made."""
    path = Path(run) / ATTRIBUTES_FILE
    if not path.exists():
        return {}, {}
    try:
        with safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("attributes", "{}"))
            return {key: f.get_tensor(key) for key in f.keys()}, meta  # noqa: SIM118 (safe_open is not iterable)
    except (SafetensorError, OSError, ValueError) as error:
        raise VaelabError(
            f"{path} is damaged ({error}); delete it and save the attributes again with `vaelab attribute`"
        ) from None


def stale_attributes(run: str | Path, meta: dict[str, dict[str, Any]]) -> list[str]:
    """The saved attributes found for other weights than the run holds now: their vectors point
    through another latent space. (Attributes saved by earlier releases do not say: kept.)"""
    return [name for name, info in meta.items() if weights_changed(run, info)]


def current_attributes(
    run: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]], list[str]]:
    """The saved attributes that belong to the run's weights (vectors, how each was made), and the
    names of those left out because they were found for earlier weights."""
    vectors, meta = load_attributes(run)
    stale = stale_attributes(run, meta)
    return (
        {k: v for k, v in vectors.items() if k not in stale},
        {k: v for k, v in meta.items() if k not in stale},
        stale,
    )


def _condition_mask(
    values: np.ndarray, condition: str, factor: str, class_names: list[str] | None
) -> np.ndarray:
    low, colon, high = condition.partition(":")
    if colon:
        lo, hi = _number(low, factor), _number(high, factor)
        return (values >= lo) & (values < hi) if lo <= hi else (values >= lo) | (values < hi)
    if class_names and condition in class_names:
        return values == class_names.index(condition)
    try:
        return values == float(condition)
    except ValueError:
        known = f"; its values: {', '.join(class_names)}" if class_names else ""
        raise VaelabError(
            f"{factor}={condition}: {condition!r} is not a number or a known value{known}"
        ) from None


def _number(text: str, factor: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise VaelabError(f"{factor}={text}: {text!r} is not a number or a known value name") from None


def _csv_factors(labels: str | Path, images: ImageSet, dataset: str) -> dict[str, np.ndarray]:
    if not dataset.startswith("folder:") or images.paths is None:
        raise VaelabError(f"labels FILE.csv goes with a folder:PATH dataset; {dataset} is not one")
    return read_labels_csv(labels, images.paths, dataset.removeprefix("folder:"))


def _no_drawing(model: Any, command: str) -> None:
    if not model.pixels.closed_form_mean:
        raise VaelabError(
            f"{command} decodes many latents and a {model.pixels.name} decoder draws each image pixel by "
            "pixel; use a run with a factorized decoder"
        )
