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


@pytest.mark.parametrize(("mean", "std", "posterior_var", "expected"), [
    (0.0, 0.5, 0.75, 0.0),  # aggregate variance 0.25 + 0.75 = 1, centred: the prior itself
    (0.0, 2.0, 0.01, 0.5 * (4.01 - 1 - math.log(4.01))),  # spread 2x wider than the prior
    (1.5, 1.0, 1e-8, 0.5 * 1.5**2),  # shifted by 1.5
])  # fmt: skip
def test_prior_mismatch_is_the_kl_of_the_aggregate_posterior_to_the_prior(
    vae_run, mean: float, std: float, posterior_var: float, expected: float
) -> None:
    """Posterior means drawn from N(mean, std^2) per coordinate with posterior variance
    `posterior_var`: the aggregate posterior is N(mean, std^2 + posterior_var), whose KL to N(0, 1)
    is 0.5 (v + m^2 - 1 - ln v) per coordinate."""
    import vaelab

    model = vaelab.load(vae_run)
    dims = model.config.latent_dim
    generator = torch.Generator().manual_seed(0)

    def encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = mean + std * torch.randn(len(x), dims, generator=generator, dtype=torch.float64)
        return mu, torch.full_like(mu, math.log(posterior_var))

    model.encode = encode
    n = 20000
    nats, variance = latent.prior_mismatch(model, torch.zeros(n, 1, 28, 28, dtype=torch.uint8))
    v = std**2 + posterior_var
    # A sample variance of n draws has a relative standard error of sqrt(2 / n) (1%); the KL moves
    # by 0.5 (1 - 1/v) per unit of v and by m per unit of the mean (standard error std / sqrt(n)).
    torch.testing.assert_close(variance, torch.full((dims,), v, dtype=torch.float64), rtol=4 * math.sqrt(2 / n),
                               atol=0)  # fmt: skip
    per_dim = 0.5 * abs(1 - 1 / v) * std**2 * math.sqrt(2 / n) + abs(mean) * std / math.sqrt(n)
    assert nats == pytest.approx(dims * expected, abs=4 * math.sqrt(dims) * per_dim + 1e-3 * dims)


def test_batches_shrink_as_images_grow_and_give_the_same_rows() -> None:
    # 512 colour images of 64 px per pass were 25 MB a tensor (2x slower than 32 per pass on a
    # CPU); of 256 px, GBs. A pass now takes at most 512 * 28 * 28 values in or out on a CPU.
    from vaelab.device import map_batches

    def recorded(fn):
        sizes: list[int] = []

        def wrapped(batch: torch.Tensor) -> torch.Tensor:
            sizes.append(len(batch))
            return fn(batch)

        return wrapped, sizes

    cpu = torch.device("cpu")
    for shape, first_passes in [((1, 28, 28), [1, 512]), ((3, 64, 64), [1, 32, 32]), ((3, 256, 256), [1, 2])]:
        images = torch.randint(
            0, 256, (600, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
        )
        fn, sizes = recorded(lambda x: x.flatten(1).mean(1))
        means = map_batches(fn, images, cpu)
        assert sizes[: len(first_passes)] == first_passes and sum(sizes) == 600
        assert torch.allclose(means, images.flatten(1).double().mean(1).float() / 255)
    decode, sizes = recorded(
        lambda z: z[:, :1, None, None].expand(-1, 3, 128, 128)
    )  # latents -> large images
    out = map_batches(decode, torch.arange(20.0).view(10, 2), cpu)
    assert sizes == [1, 8, 1] and torch.equal(out[:, 0, 0, 0], torch.arange(0.0, 20.0, 2))
    assert map_batches(decode, torch.empty(0, 2), cpu).numel() == 0


@pytest.mark.parametrize("n", [1, 2, 3])
def test_principal_axes_of_fewer_latents_than_axes_are_still_an_orthonormal_set(n: int) -> None:
    latents = torch.randn(n, 5, generator=torch.Generator().manual_seed(n))
    mean, directions, std, share = latent.principal_axes(latents, 4)
    assert directions.shape == (4, 5) and len(std) == len(share) == 4
    torch.testing.assert_close(directions @ directions.T, torch.eye(4), atol=1e-5, rtol=0)
    # n points span n - 1 directions; the others carry no variance
    assert std[n - 1 :].abs().max() < 1e-5 and share[n - 1 :] == pytest.approx([0.0] * (5 - n), abs=1e-6)
    assert sum(share) == pytest.approx(1.0 if n > 1 else 0.0, abs=1e-5)
    coords = (latents - mean) @ directions.T
    torch.testing.assert_close(coords[:, n - 1 :], torch.zeros(n, 5 - n), atol=1e-5, rtol=0)


def test_the_latent_box_of_one_or_two_points_still_has_an_area() -> None:
    assert latent.latent_extent(torch.tensor([[0.5, -1.0]])) == ((-0.5, 1.5), (-2.0, 0.0))
    (x_lo, x_hi), (y_lo, y_hi) = latent.latent_extent(torch.tensor([[0.0, 3.0], [4.0, 3.0]]), quantile=0)
    assert (x_lo, x_hi) == (0.0, 4.0) and (y_lo, y_hi) == (1.0, 5.0)  # the flat side as wide as the other
    spread = torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]])
    assert latent.latent_extent(spread, quantile=0) == ((0.0, 2.0), (0.0, 4.0))  # as before
