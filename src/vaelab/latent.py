"""Working in latent space: encode a dataset, walk between two codes, decode a grid over the plane.

Latents are [N, D] float tensors; images [N, C, H, W] in [0, 1].
"""

from __future__ import annotations

import math

import torch

from vaelab.data.transforms import to_unit
from vaelab.models import AE, VAE


@torch.no_grad()
def embed_images(model: AE | VAE, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Deterministic latents (z for an AE, the posterior mean for a VAE) of uint8 images, [N, D] on CPU."""
    device = next(model.parameters()).device
    parts = [
        model.embed(to_unit(images[start : start + batch_size].to(device))).float().cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(parts) if parts else torch.empty(0, model.config.latent_dim)


@torch.no_grad()
def decode_latents(model: AE | VAE, latents: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Mean images in [0, 1] for latents [N, D], on CPU."""
    device = next(model.parameters()).device
    parts = [
        model.decode(latents[s : s + batch_size].to(device)).float().cpu()
        for s in range(0, len(latents), batch_size)
    ]
    return torch.cat(parts)


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
    """The central (1 - 2*quantile) box of 2-D latents: ((x_lo, x_hi), (y_lo, y_hi))."""
    lo = torch.quantile(latents[:, :2], quantile, dim=0)
    hi = torch.quantile(latents[:, :2], 1 - quantile, dim=0)
    return (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))


def pca_2d(latents: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Project latents [N, D] on their first two principal axes: coordinates [N, 2] and variance shares."""
    centred = latents - latents.mean(0)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    variance = singular.pow(2)
    share = (variance[:2] / variance.sum().clamp_min(1e-12)).tolist()
    return centred @ vh[:2].T, share


def grid_size(n: int) -> int:
    """Columns of a near-square grid of n images."""
    return max(1, math.ceil(math.sqrt(n)))


@torch.no_grad()
def reconstruct(model: AE | VAE, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """decode(embed(x)) of float images [N, C, H, W] in [0, 1], on CPU: the model's clean-up of x."""
    device = next(model.parameters()).device
    parts = [
        model.decode(model.embed(images[start : start + batch_size].to(device))).float().cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(parts)
