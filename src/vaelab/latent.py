"""Working in latent space: encode a dataset, walk between two codes, decode a grid over the plane,
move one coordinate at a time (traversals).

Latents are [N, D] float tensors; images [N, C, H, W] in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from vaelab import plots
from vaelab.data import ImageSet
from vaelab.device import map_batches, model_device
from vaelab.gaussian import kl_to_standard_normal
from vaelab.models import AE, VAE


def embed_images(model: AE | VAE, images: torch.Tensor) -> torch.Tensor:
    """Deterministic latents (z for an AE, the posterior mean for a VAE) of uint8 or [0, 1] float
    images, [N, D] on CPU."""
    codes = map_batches(model.embed, images, model_device(model))
    return codes if len(codes) else torch.empty(0, model.config.latent_dim)


def decode_latents(
    model: AE | VAE, latents: torch.Tensor, draws: int | None = None, seed: int = 0
) -> torch.Tensor:
    """Mean images in [0, 1] for latents [N, D], on CPU. A decoder without a closed-form mean
    (pixelcnn) needs `draws`: each mean is then the average of that many images drawn from p(x|z),
    seeded by `seed` (slow: one network pass per pixel)."""
    return map_batches(_decoder(model, draws, seed), latents.float(), model_device(model))


def _decoder(model: AE | VAE, draws: int | None, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    if model.pixels.closed_form_mean:
        return model.decode
    generator = torch.Generator(model_device(model)).manual_seed(seed)
    return lambda z: model.decode(z, draws=draws, generator=generator)


def lerp(z0: torch.Tensor, z1: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` points on the straight line from z0 to z1 (both ends included), [steps, D]."""
    t = torch.linspace(0.0, 1.0, steps, dtype=z0.dtype).unsqueeze(1)
    return (1 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` points on the great-circle arc from z0 to z1, norms interpolated linearly, [steps, D].

    Under a Gaussian prior most mass lies near a sphere, so the arc stays where the decoder was
    trained while the straight line cuts through the low-norm middle.
    """
    n0, n1 = z0.norm(), z1.norm()
    u0, u1 = z0 / n0.clamp_min(1e-12), z1 / n1.clamp_min(1e-12)
    omega = torch.arccos((u0 * u1).sum().clamp(-1.0, 1.0))
    if omega.abs() < 1e-4:  # nearly parallel: the arc is the line
        return lerp(z0, z1, steps)
    t = torch.linspace(0.0, 1.0, steps, dtype=z0.dtype).unsqueeze(1)
    direction = (torch.sin((1 - t) * omega) * u0 + torch.sin(t * omega) * u1) / torch.sin(omega)
    return direction * ((1 - t) * n0 + t * n1)


def class_prototype(latents: torch.Tensor, labels: torch.Tensor, cls: int) -> int:
    """Index of the image of class `cls` whose latent lies closest to that class's mean latent."""
    members = (labels == cls).nonzero().flatten()
    if len(members) == 0:
        raise ValueError(f"no image of class {cls}")
    centre = latents[members].mean(0)
    return int(members[(latents[members] - centre).norm(dim=1).argmin()])


def plane_grid(x_range: tuple[float, float], y_range: tuple[float, float], n: int) -> torch.Tensor:
    """n x n points over a rectangle of the 2-D latent plane, row by row from the top, [n*n, 2]."""
    xs = torch.linspace(x_range[0], x_range[1], n)
    ys = torch.linspace(y_range[1], y_range[0], n)  # top row = largest y, as on a plot
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1)


def latent_extent(
    latents: torch.Tensor, quantile: float = 0.01
) -> tuple[tuple[float, float], tuple[float, float]]:
    """The central (1 - 2*quantile) box of 2-D latents: ((x_lo, x_hi), (y_lo, y_hi)). A side
    without spread (one or two test images) gets the other side's width, or 2 when neither has any,
    so that a grid over the box still shows something."""
    lo = torch.quantile(latents[:, :2], quantile, dim=0)
    hi = torch.quantile(latents[:, :2], 1 - quantile, dim=0)
    width = hi - lo
    flat = width <= 1e-6 * (1 + lo.abs().max())
    if flat.any():
        half = (width.max() if not flat.all() else width.new_tensor(2.0)) / 2
        centre = (lo + hi) / 2
        lo, hi = torch.where(flat, centre - half, lo), torch.where(flat, centre + half, hi)
    return (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))


def principal_axes(
    latents: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float]]:
    """The first k (at most D) principal axes of latents [N, D]: their mean [D], the directions
    [k, D] (orthonormal), the standard deviation of the latents along each [k], and each one's
    share of the variance. Fewer latents than axes (one test image) leave the last axes without
    variance: any directions that complete the orthonormal set."""
    mean = latents.mean(0)
    _, singular, vh = torch.linalg.svd(latents - mean, full_matrices=False)
    wanted, k = min(k, latents.shape[1]), min(k, len(singular))
    variance = singular.pow(2)
    share = (variance[:k] / variance.sum().clamp_min(1e-12)).tolist()
    std = singular[:k] / math.sqrt(max(1, len(latents) - 1))
    directions = vh[:k]
    if k < wanted:
        basis, _ = torch.linalg.qr(torch.cat([directions, torch.eye(latents.shape[1])]).T)
        directions = torch.cat([directions, basis.T[k:wanted]])
        std, share = torch.cat([std, std.new_zeros(wanted - k)]), share + [0.0] * (wanted - k)
    return mean, directions, std, share


def pca_2d(latents: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Project latents [N, D] on their first two principal axes: coordinates [N, 2] and variance shares."""
    mean, directions, _, share = principal_axes(latents, 2)
    return (latents - mean) @ directions.T, share


def grid_size(n: int) -> int:
    """Columns of a near-square grid of n images."""
    return max(1, math.ceil(math.sqrt(n)))


def reconstruct(
    model: AE | VAE, images: torch.Tensor, draws: int | None = None, seed: int = 0
) -> torch.Tensor:
    """decode(embed(x)) of uint8 or [0, 1] float images [N, C, H, W], on CPU: the model's clean-up
    of x (`draws` and `seed` as for decode_latents)."""
    decode = _decoder(model, draws, seed)
    return map_batches(lambda x: decode(model.embed(x)), images, model_device(model))


def scatter_coordinates(codes: torch.Tensor) -> tuple[torch.Tensor, tuple[str, str]]:
    """2-D coordinates of latents [N, D] and their axis labels: the latents themselves up to two
    dimensions, their first two principal components beyond."""
    if codes.shape[1] == 1:
        return torch.cat([codes, torch.zeros_like(codes)], dim=1), ("z[0]", "(1-D latent)")
    if codes.shape[1] == 2:
        return codes, ("z[0]", "z[1]")
    coords, share = pca_2d(codes)
    return coords, (f"PC1 ({share[0]:.0%} of variance)", f"PC2 ({share[1]:.0%} of variance)")


def scatter_panel(model: AE | VAE, images: ImageSet, title: str) -> plots.ScatterPanel:
    """The latent scatter of a set of images; PCA when the latent has more than two dimensions."""
    coords, axes = scatter_coordinates(embed_images(model, images.images))
    if model.config.latent_dim > 2:
        title = f"{title}, PCA of {model.config.latent_dim}-D latent"
    return plots.ScatterPanel(title, coords, images.labels, images.class_names, axes)


def plane_axes(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[str, str]]:
    """The plane a latent scatter or grid shows: (origin [D], two orthonormal directions [2, D],
    axis labels). A 2-D latent is its own plane; a larger one is shown on the plane through the
    mean of `codes` spanned by their first two principal directions."""
    if codes.shape[1] == 2:
        return torch.zeros(2), torch.eye(2), ("z[0]", "z[1]")
    mean, directions, _, share = principal_axes(codes, 2)
    return mean, directions, (f"PC1 ({share[0]:.0%} of variance)", f"PC2 ({share[1]:.0%} of variance)")


def grid_panel(
    model: AE | VAE, codes: torch.Tensor, n: int, title: str, draws: int | None = None
) -> plots.GridPanel:
    """Images decoded over the central 98% box of a model's test latents on their plane (see
    plane_axes): the latent plane itself in 2-D, the two main principal directions beyond."""
    origin, directions, labels = plane_axes(codes)
    x_range, y_range = latent_extent((codes - origin) @ directions.T)
    points = origin + plane_grid(x_range, y_range, n) @ directions
    images = decode_latents(model, points, draws)
    return plots.GridPanel(title, images, x_range, y_range, labels)


@torch.no_grad()
def kl_per_dimension(model: VAE, images: torch.Tensor) -> torch.Tensor:
    """The KL of q(z|x) to N(0, 1) in each latent dimension, averaged over uint8 images, [D] nats:
    how much information each coordinate carries (near 0 for an unused one)."""

    def kl(x: torch.Tensor) -> torch.Tensor:
        return kl_to_standard_normal(*model.encode(x))

    return map_batches(kl, images, model_device(model)).double().mean(0)


PRIOR_MISMATCH_NATS = 2.0  # above this, draws from N(0, I) often land where no image was encoded
PRIOR_CHECK_IMAGES = 500  # test images whose latents sample and serve compare with the prior


@torch.no_grad()
def posterior_moments(model: AE | VAE, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """In one encoder pass over uint8 or [0, 1] images: the deterministic latents [N, D] (as
    embed_images gives them) and, for a VAE, the posterior variances [N, D] (None for an AE); CPU."""
    if not isinstance(model, VAE):
        return embed_images(model, images), None

    def moments(x: torch.Tensor) -> torch.Tensor:
        mu, log_var = model.encode(x)
        return torch.cat([mu, log_var.exp()], dim=1)

    both = map_batches(moments, images, model_device(model))
    if not len(both):
        empty = torch.empty(0, model.config.latent_dim)
        return empty, empty.clone()
    means, variances = both.chunk(2, dim=1)
    return means.contiguous(), variances.contiguous()


def prior_gap(means: torch.Tensor, variances: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """The KL, in nats, from the Gaussian with the mean and per-coordinate variance of latents
    (posterior means [N, D] and, for a VAE, posterior variances [N, D]: its aggregate posterior) to
    N(0, I), and that variance [D]."""
    mu = means.double()
    variance = mu.var(0) + (variances.double().mean(0) if variances is not None else 0)
    kl = 0.5 * (variance + mu.mean(0) ** 2 - 1 - variance.log())
    return float(kl.sum()), variance


def prior_mismatch(model: AE | VAE, images: torch.Tensor) -> tuple[float, torch.Tensor]:
    """How far the latents of uint8 images sit from the prior N(0, I) (prior_gap of their
    posterior_moments): a VAE's aggregate posterior, an AE's codes. Near 0 when they fill the prior
    as the VAE objective asks (the demo's VAEs: under 0.5); large when they spread wider or
    off-centre, and then many draws from the prior decode to images unlike the data."""
    return prior_gap(*posterior_moments(model, images))


def traversal_latents(z: torch.Tensor, dims: list[int], values: torch.Tensor) -> torch.Tensor:
    """Copies of one latent z [D] with coordinate dims[i] set to each of `values` in turn: row i of
    the traversal figure, [len(dims) * len(values), D]."""
    rows = z.repeat(len(dims) * len(values), 1)
    for i, dim in enumerate(dims):
        rows[i * len(values) : (i + 1) * len(values), dim] = values
    return rows
