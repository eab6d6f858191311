"""Autoregressive Bernoulli pixels: p(x | z) = prod_i p(x_i | x_<i, z) over pixels in raster order.

A factorized decoder predicts every pixel from z alone, so z must carry every stroke detail; here a
few masked convolutions (PixelCNN, van den Oord et al., 2016) also see the pixels above and to the
left, so local texture costs z nothing and z keeps the global shape (PixelVAE, Gulrajani et al.,
2017). Training and scoring take one pass (the real image supplies the context); drawing an image
takes one pass per pixel, each over only the small window the masks let the next pixel see.

Every colour channel of pixel i is predicted from pixels before i (all channels) and z, so the
channels of one pixel are independent given that context: a valid factorization for any C.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.distributions.base import PixelDistribution
from vaelab.distributions.bernoulli import bernoulli_nll


class MaskedConv2d(nn.Conv2d):
    """A same-size convolution that sees only rows above and, on its own row, columns to the left;
    the centre pixel too when `include_center` (every layer after the first)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, include_center: bool) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        mask = torch.ones_like(self.weight)
        centre = kernel_size // 2
        mask[:, :, centre, centre + int(include_center) :] = 0
        mask[:, :, centre + 1 :] = 0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution computed as a product over channels: the same weights as nn.Conv2d, and on
    the CPU several times faster for the few channels used here."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bihw,oi->bohw", x, self.weight[:, :, 0, 0]) + self.bias[:, None, None]


class PixelCNN(PixelDistribution):
    """Pixel logits [B, C, H, W] from the image itself (masked) and decoder features
    params [B, features, H, W]; `channels` wide, `layers` masked 3x3 layers after a 7x7 one.

    There is no closed-form mean image: `sample` draws one pixel at a time, one pass each.
    """

    name = "pixelcnn"
    closed_form_mean = False

    def __init__(
        self, image_channels: int, features: int, channels: int, layers: int, kernel_size: int = 7
    ) -> None:
        super().__init__(image_channels)
        self.features = features
        self.layers = layers
        self.input = MaskedConv2d(image_channels, channels, kernel_size, include_center=False)
        self.condition = PointwiseConv2d(features, channels * (layers + 1))
        self.blocks = nn.ModuleList(
            MaskedConv2d(channels, channels, 3, include_center=True) for _ in range(layers)
        )
        self.output = PointwiseConv2d(channels, image_channels)
        # How far (in pixels up, left or right) the logits of one pixel can see: the generation window.
        self.reach = kernel_size // 2 + layers

    @property
    def param_channels(self) -> int:
        return self.features

    def loss(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """-log p(x | z) in nats, [B], in one pass: x is its own context."""
        return bernoulli_nll(self.logits(x, params), x)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """0/1 images drawn pixel by pixel: H x W sequential passes over a small window each."""
        return self.generate(params, generator)[0]

    def logits(self, x: torch.Tensor | None, params: torch.Tensor) -> torch.Tensor:
        """The logit of every pixel of x given the pixels before it in x (teacher forcing)."""
        if x is None:
            raise ValueError("a pixelcnn's logits depend on the image: pass the x they predict")
        return self(x, params)

    def forward(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Logits of every pixel given the pixels before it in `x` (teacher forcing) and `features`."""
        conditions = self.condition(features).chunk(self.layers + 1, dim=1)
        y = self.input(x) + conditions[0]
        for block, condition in zip(self.blocks, conditions[1:]):
            y = y + block(F.silu(y)) + condition
        return self.output(F.silu(y))

    def generate(
        self, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw images pixel by pixel: the 0/1 images [B, C, H, W] and the probability each pixel
        was drawn with (what one pass of forward() gives on the drawn images)."""
        *_, (_, images, probs) = self.generate_rows(features, generator)
        return images, probs

    @torch.no_grad()
    def generate_rows(
        self, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """generate(), row by row: after each row, (rows done, images so far, probabilities so
        far), so a caller can show progress; the last item is generate()'s result."""
        batch, _, height, width = features.shape
        channels = self.output.out_channels
        x = features.new_zeros(batch, channels, height, width)
        probs = torch.zeros_like(x)
        r = self.reach
        for i in range(height):
            top = max(0, i - r)
            with _plain_cpu_convolutions():
                for j in range(width):
                    left, right = max(0, j - r), min(width, j + r + 1)
                    window = self(x[:, :, top : i + 1, left:right], features[:, :, top : i + 1, left:right])
                    p = torch.sigmoid(window[:, :, -1, j - left])
                    probs[:, :, i, j] = p
                    x[:, :, i, j] = torch.bernoulli(p, generator=generator)
            yield i + 1, x, probs


@contextlib.contextmanager
def _plain_cpu_convolutions() -> Iterator[None]:
    """oneDNN off while drawing: its convolutions build a kernel for each new input shape, and the
    windows drawn pixel by pixel come in dozens of shapes, so the first image of a batch size took
    about 35 s to build kernels for a few milliseconds of arithmetic (0.3 s without oneDNN)."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled
