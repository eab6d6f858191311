"""`vaelab embed`: latent means of a dataset or of image files, out to .npy, .npz or .csv."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np

from vaelab.errors import VaelabError
from vaelab.estimators import LatentEncoder
from vaelab.fileio import atomic_output, write_csv
from vaelab.options import DataDir, Dataset, Device, Inputs, Out, Run, Split
from vaelab.runs import open_run, select_images

FORMATS = (".npy", ".npz", ".csv")


def embed(
    run: Run,
    out: Annotated[Out, "file to write: .npy, .npz or .csv"] = "embeddings.npz",
    dataset: Dataset = None,
    data_dir: DataDir = None,
    split: Split = "test",
    inputs: Inputs = None,
    device: Device = "auto",
) -> dict[str, Any]:
    """Write the deterministic latent (z for an AE, the posterior mean for a VAE) of every image.

    .npy holds the latents [N, D] alone; .npz adds `labels` and `paths` when known; .csv has one
    row per image: its name (file path or index), its label, then z0..z{D-1}.
    """
    out = Path(out)
    if out.suffix not in FORMATS:
        raise VaelabError(f"-o {out}: choose a file ending in {', '.join(FORMATS)}")
    model, config = open_run(run, device)
    images = select_images(model, config, dataset, data_dir, split, inputs)
    codes = LatentEncoder(run, device).fit().transform(images.images)  # [N, D] float32
    labels = images.labels.numpy() if images.labels is not None else None
    names = images.paths or [str(i) for i in range(len(codes))]
    if out.suffix == ".npy":
        with atomic_output(out) as tmp, open(tmp, "wb") as f:
            np.save(f, codes)
    elif out.suffix == ".npz":
        arrays = {"latents": codes, "names": np.asarray(names)}
        if labels is not None:
            arrays["labels"] = labels
        with atomic_output(out) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    else:
        header = ["name", "label", *[f"z{d}" for d in range(codes.shape[1])]]
        rows = (
            [names[i], "" if labels is None else int(labels[i]), *(f"{v:.6g}" for v in row)]
            for i, row in enumerate(codes)
        )
        write_csv(out, header, rows)
    return {
        "out": str(out),
        "output": str(out),
        "n_images": len(codes),
        "latent_dim": int(codes.shape[1]),
        "labels": labels is not None,
    }


def format_summary(result: dict[str, Any]) -> str:
    """What `embed` wrote, in one line."""
    labelled = " with their labels" if result["labels"] else ""
    return f"wrote the {result['latent_dim']}-D latents of {result['n_images']:,} images{labelled} to {result['out']}"
