"""The l2 and l1 pixel losses: distances between the decoded image sigmoid(params) and x, summed
over pixels. They are not likelihoods (no normalizing constant, no noise model), so they give no
NLL and no images to draw; the decoded image is their only output.
"""

from __future__ import annotations

import torch

from vaelab.distributions.base import PixelDistribution


class L2Distance(PixelDistribution):
    """Sum of squared differences between sigmoid(params) and x, [B]."""

    name = "l2"
    likelihood = False

    def loss(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(params) - x).pow(2).flatten(1).sum(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)


class L1Distance(PixelDistribution):
    """Sum of absolute differences between sigmoid(params) and x, [B]."""

    name = "l1"
    likelihood = False

    def loss(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(params) - x).abs().flatten(1).sum(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)
