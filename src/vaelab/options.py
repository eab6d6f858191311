"""The parameters the user commands share, each named and explained once.

A command's function (vaelab.sample, vaelab.embed, ...) annotates its parameters with these, or
with its own ``Annotated[type, "help text"]``; the CLI builds every flag from those signatures, so
the command line and the Python API cannot drift apart. ``Choices`` lists allowed values, ``Flag``
gives a short flag, ``Required`` makes a parameter without default a required flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from vaelab.config import DEVICES


@dataclass(frozen=True)
class Choices:
    """The values a parameter accepts."""

    values: tuple[str, ...]


@dataclass(frozen=True)
class Flag:
    """A short command-line flag for a parameter, e.g. "-o"."""

    short: str


@dataclass(frozen=True)
class Positional:
    """The parameter is a positional command-line argument."""

    metavar: str


@dataclass(frozen=True)
class Required:
    """The parameter has no default and is a required command-line flag (--name VALUE), not a
    positional argument."""


Run = Annotated[str | Path, Positional("RUN"), "run folder (written by vaelab train)"]
Out = Annotated[str | Path, Flag("-o"), "file to write"]
Device = Annotated[str, Choices(DEVICES), "where to run the model: auto picks CUDA, then Apple MPS, then CPU"]
Seed = Annotated[int, "seed of every random draw"]
Dataset = Annotated[str | None, "a dataset name, e.g. mnist-mini or folder:PATH (default: the run's own)"]
DataDir = Annotated[str | None, "folder with that dataset's files"]
Split = Annotated[str, Choices(("train", "test")), "which split of the dataset"]
Inputs = Annotated[list[str | Path] | None, "image files or folders, instead of a dataset"]
Draws = Annotated[
    int,
    "pixelcnn decoders only: images drawn per latent to estimate its mean image (one pass per pixel each)",
]
NImages = Annotated[int | None, "use only the first N images (default: all)"]
Progress = Annotated[bool, "show progress bars (the CLI's --quiet turns them off)"]
