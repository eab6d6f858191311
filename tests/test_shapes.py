"""The generated shapes dataset: deterministic, its factors in their documented ranges, and each
image drawn where and as its factors say."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vaelab
from vaelab.data import shapes


def one(**factors: float) -> dict[str, np.ndarray]:
    """A factor table of a single image; unspecified factors get central values."""
    base = {"shape": 0, "hue": 0.0, "size": 0.2, "rotation": 0.0, "x": 0.5, "y": 0.5, "background": 0}
    base.update(factors)
    return {name: np.array([value]) for name, value in base.items()}


def test_splits_have_documented_sizes_factors_and_labels() -> None:
    test = vaelab.load_images("shapes", "test")
    assert test.images.shape == (4000, 3, 64, 64) and test.images.dtype == torch.uint8
    assert tuple(test.factors) == shapes.FACTOR_NAMES
    assert test.class_names == ["square", "ellipse", "triangle"]
    np.testing.assert_array_equal(test.labels.numpy(), test.factors["shape"])
    f = test.factors
    assert set(np.unique(f["shape"])) == {0, 1, 2} and set(np.unique(f["background"])) == {0, 1, 2, 3}
    assert f["hue"].min() >= 0 and f["hue"].max() < 1
    assert shapes.SIZE_RANGE[0] <= f["size"].min() and f["size"].max() <= shapes.SIZE_RANGE[1]
    assert f["rotation"].min() >= 0 and f["rotation"].max() < 90
    for name in ("x", "y"):
        assert shapes.POSITION_RANGE[0] <= f[name].min() and f[name].max() <= shapes.POSITION_RANGE[1]
    assert len(shapes.factor_table("train")["hue"]) == 20_000


def test_same_seed_same_images_bit_for_bit_and_splits_differ() -> None:
    first = {name: values[:50] for name, values in shapes.factor_table("train").items()}
    again = {name: values[:50] for name, values in shapes.factor_table("train").items()}
    assert torch.equal(shapes.render(first), shapes.render(again))
    test = {name: values[:50] for name, values in shapes.factor_table("test").items()}
    assert not np.allclose(first["hue"], test["hue"])


@pytest.mark.parametrize(
    ("kind", "area"), [(0, 2.0), (1, math.pi * shapes.ELLIPSE_MINOR), (2, 3 * math.sqrt(3) / 4)]
)
def test_each_shape_covers_its_area(kind: int, area: float) -> None:
    # On black with value-0.95 white-ish colour (saturation ignored at hue 0 for the red channel),
    # the red channel's sum is the covered area times the red level: area * r^2 * size^2 pixels.
    size, radius = 128, 0.2
    image = shapes.render(one(shape=kind, size=radius, rotation=17.0), size).double() / 255
    red = image[0, 0].sum().item() / 0.95
    assert red == pytest.approx(area * radius**2 * size**2, rel=0.01)


def test_shape_sits_at_its_position_in_its_colour_on_its_background() -> None:
    image = shapes.render(one(hue=1 / 3, x=0.3, y=0.7, background=1), 64)[0]  # green on white
    centre = image[:, round(0.7 * 64), round(0.3 * 64)].tolist()
    assert centre == [round(255 * v) for v in shapes.hsv_to_rgb(np.array([1 / 3]), 0.85, 0.95)[0]]
    assert centre[1] > 200 and centre[0] < 60  # green
    assert image[:, 2, 62].tolist() == [255, 255, 255]  # a far corner shows the background
    second = shapes.render(one(hue=0.0, background=3), 64)[0, :, 1, 1]
    assert second[2] > second[0]  # the second colour is the opposite hue (cyan-ish against red)


def test_rotation_turns_the_shape_and_image_size_keeps_the_scene() -> None:
    upright = shapes.render(one(shape=1, rotation=0.0), 64).double()
    turned = shapes.render(one(shape=1, rotation=89.0), 64).double()
    assert (upright - turned).abs().mean() > 5  # an ellipse turned by 90 degrees differs
    small = shapes.render(one(shape=2, x=0.4, y=0.6), 32).double()
    large = shapes.render(one(shape=2, x=0.4, y=0.6), 128).double()
    assert (torch.nn.functional.avg_pool2d(large, 4) - small).abs().mean() < 3  # of 255
