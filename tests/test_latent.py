"""Latent-space walks, grids, prototypes and projections."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vaelab import latent


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-5, 5), min_size=3, max_size=3),
    st.lists(st.floats(-5, 5), min_size=3, max_size=3),
    st.integers(2, 12),
)
def test_interpolations_start_and_end_at_the_endpoints(a: list[float], b: list[float], steps: int) -> None:
    z0, z1 = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    for path in (latent.lerp(z0, z1, steps), latent.slerp(z0, z1, steps)):
        assert path.shape == (steps, 3)
        torch.testing.assert_close(path[0], z0, atol=1e-9, rtol=0)
        torch.testing.assert_close(path[-1], z1, atol=1e-9, rtol=0)


def test_slerp_between_unit_vectors_stays_on_the_circle_and_lerp_does_not() -> None:
    z0, z1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(latent.slerp(z0, z1, 7).norm(dim=1), torch.ones(7))
    assert latent.lerp(z0, z1, 3)[1].norm().item() == pytest.approx(math.sqrt(0.5))


def test_class_prototype_is_the_member_nearest_its_class_mean() -> None:
    codes = torch.tensor([[0.0, 0.0], [10.0, 0.0], [1.0, 0.0], [2.0, 0.0], [9.0, 9.0]])
    labels = torch.tensor([0, 1, 0, 0, 1])
    assert latent.class_prototype(codes, labels, 0) == 2  # mean of class 0 is (1, 0)


def test_plane_grid_runs_left_to_right_top_to_bottom() -> None:
    grid = latent.plane_grid((-1.0, 1.0), (0.0, 2.0), 3)
    assert grid.shape == (9, 2)
    torch.testing.assert_close(grid[0], torch.tensor([-1.0, 2.0]))  # top left
    torch.testing.assert_close(grid[2], torch.tensor([1.0, 2.0]))  # top right
    torch.testing.assert_close(grid[-1], torch.tensor([1.0, 0.0]))  # bottom right


def test_pca_finds_the_axis_of_largest_variance() -> None:
    g = torch.Generator().manual_seed(3)
    data = torch.randn(5000, 3, generator=g) * torch.tensor([0.1, 3.0, 1.0])
    coords, share = latent.pca_2d(data)
    assert share[0] == pytest.approx(9 / 10.01, abs=0.02) and share[1] == pytest.approx(1 / 10.01, abs=0.02)
    torch.testing.assert_close(coords[:, 0].abs(), (data[:, 1] - data[:, 1].mean()).abs(), atol=0.05, rtol=0)
