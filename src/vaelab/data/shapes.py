"""``shapes``: colour images of one shape each, drawn from known generative factors.

Nothing is downloaded or stored: every image is rendered from its factors, which are drawn from a
fixed seed, so the same split is the same bit for bit on every call. Each image holds one shape
on a background; its factors (``factor_table``, name -> array of one value per image) are

* ``shape``: 0 square, 1 ellipse, 2 triangle (also the labels; `SHAPE_NAMES`);
* ``hue``: the shape's hue in [0, 1) (0 red, 1/3 green, 2/3 blue), drawn at saturation 0.85 and
  value 0.95;
* ``size``: its outer radius as a share of the image side, in [0.14, 0.30];
* ``rotation``: degrees in [0, 90) (all three shapes look different at every angle in that range);
* ``x``, ``y``: its centre as a share of the image width and height, in [0.30, 0.70] (the
  shape always lies wholly inside the image);
* ``background``: 0 black, 1 white, 2 grey, 3 a second colour (the hue opposite the shape's,
  darker).

The shapes are drawn in continuous coordinates with antialiased edges, so any image size renders
the same scene (64 x 64 by default). There are 20,000 training and 4,000 test images.
"""

from __future__ import annotations

import numpy as np
import torch

from vaelab.data.imageset import ImageSet, ensure_fits_in_memory

SHAPE_NAMES = ("square", "ellipse", "triangle")
FACTOR_NAMES = ("shape", "hue", "size", "rotation", "x", "y", "background")
SPLIT_SIZES = {"train": 20_000, "test": 4_000}
DEFAULT_SIZE = 64
SEED = 20261126  # fixed: the dataset is the same for every user
SIZE_RANGE = (0.14, 0.30)
POSITION_RANGE = (0.30, 0.70)
BACKGROUNDS = ("black", "white", "grey", "second colour")
ELLIPSE_MINOR = 0.55  # the ellipse's short radius relative to its long one
_SATURATION, _VALUE = 0.85, 0.95
_PIXELS_PER_CHUNK = 4_000_000  # render this many pixels at a time (bounds the scratch memory)


def factor_table(split: str = "train") -> dict[str, np.ndarray]:
    """The generative factors of every image of `split`: name -> array [N] (see the module docstring)."""
    rng = np.random.default_rng([SEED, list(SPLIT_SIZES).index(split)])
    n = SPLIT_SIZES[split]
    return {
        "shape": rng.integers(0, len(SHAPE_NAMES), n),
        "hue": rng.random(n),
        "size": rng.uniform(*SIZE_RANGE, n),
        "rotation": rng.uniform(0, 90, n),
        "x": rng.uniform(*POSITION_RANGE, n),
        "y": rng.uniform(*POSITION_RANGE, n),
        "background": rng.integers(0, len(BACKGROUNDS), n),
    }


def hsv_to_rgb(hue: np.ndarray, saturation: float, value: float) -> np.ndarray:
    """RGB colours in [0, 1], [N, 3], for hues in [0, 1) at one saturation and value."""
    k = (np.array([5.0, 3.0, 1.0]) + hue[:, None] * 6) % 6
    return value - value * saturation * np.clip(np.minimum(k, 4 - k), 0, 1)


def render(factors: dict[str, np.ndarray], size: int = DEFAULT_SIZE) -> torch.Tensor:
    """Draw the images of a factor table as uint8 [N, 3, size, size]."""
    n = len(factors["shape"])
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    chunk = max(1, _PIXELS_PER_CHUNK // (size * size))
    for start in range(0, n, chunk):
        part = {name: values[start : start + chunk] for name, values in factors.items()}
        out[start : start + chunk] = _render_chunk(part, size)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _render_chunk(f: dict[str, np.ndarray], size: int) -> np.ndarray:
    coverage = np.empty((len(f["shape"]), size, size), dtype=np.float32)
    for kind in range(len(SHAPE_NAMES)):  # one shape kind at a time: only its distance is computed
        chosen = f["shape"] == kind
        if chosen.any():
            coverage[chosen] = _coverage(kind, {name: values[chosen] for name, values in f.items()}, size)
    colour = hsv_to_rgb(f["hue"], _SATURATION, _VALUE)
    second = hsv_to_rgb((f["hue"] + 0.5) % 1, 0.6, 0.35)
    plain = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5]])
    background = plain[np.minimum(f["background"], 2)]
    background = np.where((f["background"] == 3)[:, None], second, background)
    background, colour = background.astype(np.float32), colour.astype(np.float32)
    cover = coverage[..., None]  # [n, H, W, 1]
    image = background[:, None, None, :] + (colour - background)[:, None, None, :] * cover
    return np.rint(image * 255).astype(np.uint8)


def _coverage(kind: int, f: dict[str, np.ndarray], size: int) -> np.ndarray:
    """The share of each pixel the shape covers, [n, H, W] in [0, 1], antialiased over one pixel."""
    centres = ((np.arange(size) + 0.5) / size).astype(np.float32)  # pixel centres, in image sides
    dx = centres[None, None, :] - f["x"][:, None, None].astype(np.float32)  # [n, 1, W]
    dy = centres[None, :, None] - f["y"][:, None, None].astype(np.float32)  # [n, H, 1]
    angle = np.deg2rad(f["rotation"])[:, None, None]
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    radius = f["size"][:, None, None].astype(np.float32)
    # Coordinates in the shape's own frame, in units of its radius.
    u = (dx * cos + dy * sin) / radius
    v = (dy * cos - dx * sin) / radius
    # Signed distance to the edge (negative inside), in radii: exact, or close to it near the edge.
    if kind == 0:  # square with its corners at radius 1
        distance = np.maximum(np.abs(u), np.abs(v)) - np.float32(np.sqrt(0.5))
    elif kind == 1:  # ellipse: the implicit g = 1 divided by the length of its gradient
        g = np.hypot(u, v / ELLIPSE_MINOR)
        distance = (g - 1) * g / np.maximum(np.hypot(u, v / ELLIPSE_MINOR**2), 1e-6)
    else:  # equilateral triangle of circumradius 1: three half-planes at distance 1/2 from its centre
        distance = np.full_like(u, -np.inf)
        for k in range(3):
            theta = np.pi / 2 + 2 * np.pi * k / 3
            distance = np.maximum(
                distance, u * np.float32(np.cos(theta)) + v * np.float32(np.sin(theta)) - 0.5
            )
    return np.clip(0.5 - distance * radius * size, 0, 1)


def load_shapes(split: str, image_size: int | None = None) -> ImageSet:
    """One split of ``shapes`` at image_size x image_size (64 by default), with its factors."""
    factors, size = factor_table(split), image_size or DEFAULT_SIZE
    ensure_fits_in_memory(SPLIT_SIZES[split], 3, size, size, f"shapes ({split})")
    return ImageSet(
        images=render(factors, size),
        labels=torch.from_numpy(factors["shape"]).to(torch.int64),
        class_names=list(SHAPE_NAMES),
        factors=factors,
        factor_value_names={"shape": list(SHAPE_NAMES), "background": list(BACKGROUNDS)},
    )
