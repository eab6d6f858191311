"""The Frechet distance of the sample-quality classifier."""

from __future__ import annotations

import pytest
import torch

D, P, SIGMA = 2, 6, 0.5


def test_frechet_distance_of_known_gaussians() -> None:
    from vaelab.classifier import frechet_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    b = 2.0 * torch.randn(200_000, 3, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0.0, 0.0])
    # ||mu_a - mu_b||^2 + sum over dims of (sigma_a - sigma_b)^2 for diagonal covariances: 1 + 3 * (1 - 2)^2
    assert frechet_distance(a, b) == pytest.approx(4.0, abs=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
