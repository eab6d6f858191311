"""What every pixel distribution p(x | z) offers; see the package docstring."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from vaelab.errors import VaelabError


class PixelDistribution(nn.Module):
    """p(x | params) over images x [B, C, H, W] in [0, 1], where `params` is what the decoder
    outputs for z ([B, param_channels, H, W]).

    `loss` is summed over pixels, one number per image [B]. `likelihood` says whether it is
    -log p(x | z) in nats (then `log_prob` = -loss) or only a distance.
    """

    name: ClassVar[str]
    likelihood: ClassVar[bool] = True  # loss is -log p(x|z) in nats per image
    closed_form_mean: ClassVar[bool] = True  # mean(params) exists without drawing images

    def __init__(self, image_channels: int) -> None:
        super().__init__()
        self.image_channels = image_channels

    @property
    def param_channels(self) -> int:
        """Channels the decoder must output for this distribution."""
        return self.image_channels

    def loss(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The pixel loss of images x, summed over pixels, [B]."""
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log p(x | z) in nats per image, [B]."""
        if not self.likelihood:
            raise VaelabError(f"the {self.name} loss is a distance, not a likelihood: it has no log_prob")
        return -self.loss(x, params)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x | z] in [0, 1], [B, C, H, W]."""
        raise VaelabError(
            f"the {self.name} distribution has no closed-form mean image; estimate it from drawn images"
        )

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images drawn from p(x | z), [B, C, H, W]."""
        raise VaelabError(f"the {self.name} loss is a distance: there is nothing to draw images from")
