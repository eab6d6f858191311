"""Figures: the image grid vaelab lays out itself, checked pixel for pixel against torchvision's."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.utils import make_grid

from vaelab.plots import save_image_grid, tile, to_uint8


@pytest.mark.parametrize(
    ("n", "channels", "nrow", "padding"),
    [(1, 1, 8, 2), (7, 1, 3, 2), (12, 3, 4, 0), (5, 3, 8, 1), (9, 1, 3, 0)],
)
def test_tile_lays_images_out_as_torchvision_does(n: int, channels: int, nrow: int, padding: int) -> None:
    images = torch.rand(n, channels, 5, 7, generator=torch.Generator().manual_seed(n))
    ours = tile(images, nrow=nrow, padding=padding, pad_value=1.0)
    theirs = make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)
    assert ours.shape == theirs.shape  # 3 channels, rows of at most nrow, a border all round
    assert torch.equal(ours, theirs)


def test_to_uint8_rounds_to_the_nearest_level_and_clamps() -> None:
    image = torch.tensor([[[-0.5, 0.0, 0.5 / 255, 1.4 / 255, 254.6 / 255, 1.0, 2.0]]])
    assert to_uint8(image)[0, :, 0].tolist() == [0, 0, 0, 1, 255, 255, 255]  # 0.5 rounds to even
    assert to_uint8(torch.zeros(3, 2, 4)).shape == (2, 4, 3)


@pytest.mark.parametrize(("suffix", "image_format"), [(".png", "PNG"), (".JPG", "JPEG"), (".webp", "WEBP")])
def test_an_image_grid_is_saved_in_the_format_its_suffix_names(
    suffix: str, image_format: str, tmp_path
) -> None:
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    path = save_image_grid(images, tmp_path / f"grid{suffix}", nrow=2)
    with Image.open(path) as image:
        assert image.format == image_format and image.size[0] == image.size[1] > 2 * 16
