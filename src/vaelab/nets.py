"""Encoder and decoder building blocks. Images are [B, C, H, W] floats, latents [B, D]; no losses here.

The conv networks (``conv``, and ``resnet`` which adds a residual block at every resolution)
halve the image with stride-2 convolutions until it is at most 8 pixels on its
shorter side (28 -> 14 -> 7), doubling the channels each stage from `channels` (32) up to 8 times
that. With `hidden` > 0 a dense layer of that many units sits between the conv features and the
latent, in the encoder and in the decoder. Sizes that do not divide evenly are zero-padded on the
way in and cropped on the way out, so any image size works.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from vaelab.config import ModelConfig


def _padded(size: int, stages: int) -> int:
    multiple = 2**stages
    return math.ceil(size / multiple) * multiple


def group_norm(channels: int) -> nn.GroupNorm:
    """Group normalization (Wu & He, 2018) with up to 8 groups: independent of the batch size."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResidualBlock(nn.Module):
    """x + conv3x3(act(conv3x3(act(x)))), each act preceded by group norm when `norm`: more depth at
    one resolution, easy to optimize."""

    def __init__(self, channels: int, norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(2):
            layers += [*([group_norm(channels)] if norm else []), nn.SiLU()]
            layers.append(nn.Conv2d(channels, channels, kernel_size=3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ConvEncoder(nn.Module):
    """[B, C, H, W] -> [B, out_features] through stride-2 convolutions (each followed by a
    residual block when `residual`) and one linear layer."""

    def __init__(self, config: ModelConfig, out_features: int, residual: bool = False) -> None:
        super().__init__()
        channels = config.conv_channels()
        self.height, self.width = config.image_height, config.image_width
        self.padded_h = _padded(self.height, len(channels))
        self.padded_w = _padded(self.width, len(channels))
        layers: list[nn.Module] = []
        in_ch = config.image_channels
        norm = config.norm == "group"
        for out_ch in channels:
            layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1))
            layers += [*([group_norm(out_ch)] if norm else []), nn.ReLU()]
            if residual:
                layers.append(ResidualBlock(out_ch, norm))
            in_ch = out_ch
        self.convs = nn.Sequential(*layers)
        scale = 2 ** len(channels)
        flat = in_ch * (self.padded_h // scale) * (self.padded_w // scale)
        if config.hidden:
            self.head = nn.Sequential(
                nn.Linear(flat, config.hidden), nn.ReLU(), nn.Linear(config.hidden, out_features)
            )
        else:
            self.head = nn.Linear(flat, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.padded_h, self.padded_w) != (self.height, self.width):
            x = F.pad(x, (0, self.padded_w - self.width, 0, self.padded_h - self.height))
        return self.head(self.convs(x).flatten(1))


class ConvDecoder(nn.Module):
    """[B, D] -> `out_channels` maps [B, out_channels, H, W] through one linear layer and
    stride-2 transposed convolutions (each preceded by a residual block when `residual`).

    With `config.film`, every hidden activation between the stages is also scaled and shifted,
    channel by channel, by a linear function of z (FiLM: feature-wise linear modulation, Perez et
    al., 2018): h -> h * (1 + gamma(z)) + beta(z). A plain transposed convolution can only add
    what z says; the product lets z set the colour of a shape whose outline the convolutions
    draw. gamma and beta start at 0, so an untrained decoder computes what it would without them.
    """

    def __init__(self, config: ModelConfig, residual: bool, out_channels: int) -> None:
        super().__init__()
        channels = list(reversed(config.conv_channels()))
        self.height, self.width = config.image_height, config.image_width
        scale = 2 ** len(channels)
        self.start_shape = (
            channels[0],
            _padded(self.height, len(channels)) // scale,
            _padded(self.width, len(channels)) // scale,
        )
        start = math.prod(self.start_shape)
        if config.hidden:
            self.head = nn.Sequential(
                nn.Linear(config.latent_dim, config.hidden), nn.ReLU(), nn.Linear(config.hidden, start)
            )
        else:
            self.head = nn.Linear(config.latent_dim, start)
        norm = config.norm == "group"
        layers: list[nn.Module] = [nn.ReLU()]
        for i, (in_ch, out_ch) in enumerate(zip(channels, [*channels[1:], out_channels])):
            if residual:
                layers.append(ResidualBlock(in_ch, norm))
            layers.append(nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1))
            if i < len(channels) - 1:  # no normalization or activation on the output
                layers += [*([group_norm(out_ch)] if norm else []), nn.ReLU()]
        self.deconvs = nn.Sequential(*layers)
        # the activations FiLM modulates: the start map's and each hidden stage's, channels[i] wide
        self.film_widths = channels
        self.film: nn.Linear | None = None
        if config.film:
            self.film = nn.Linear(config.latent_dim, 2 * sum(channels))
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.head(z).view(-1, *self.start_shape)
        if self.film is None:
            x = self.deconvs(x)
        else:
            gamma, beta = self.film(z)[:, :, None, None].chunk(2, dim=1)
            gammas, betas = gamma.split(self.film_widths, dim=1), beta.split(self.film_widths, dim=1)
            stage = 0
            for layer in self.deconvs:
                x = layer(x)
                if isinstance(layer, nn.ReLU):  # the stage activations (residual blocks use SiLU)
                    x = torch.addcmul(betas[stage], x, 1 + gammas[stage])
                    stage += 1
        return x[:, :, : self.height, : self.width]


class MLPEncoder(nn.Module):
    """[B, C, H, W] -> [B, out_features] through one hidden layer (the PyTorch VAE example's 784-400)."""

    def __init__(self, config: ModelConfig, out_features: int) -> None:
        super().__init__()
        pixels = config.image_channels * config.image_height * config.image_width
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(pixels, config.mlp_hidden),
            nn.ReLU(),
            nn.Linear(config.mlp_hidden, out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MLPDecoder(nn.Module):
    """[B, D] -> `out_channels` maps [B, out_channels, H, W] through one hidden layer."""

    def __init__(self, config: ModelConfig, out_channels: int) -> None:
        super().__init__()
        self.shape = (out_channels, config.image_height, config.image_width)
        self.layers = nn.Sequential(
            nn.Linear(config.latent_dim, config.mlp_hidden),
            nn.ReLU(),
            nn.Linear(config.mlp_hidden, math.prod(self.shape)),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z).view(-1, *self.shape)


def build_encoder(config: ModelConfig, out_features: int) -> nn.Module:
    """The encoder named by config.arch, mapping images to `out_features` numbers."""
    if config.arch == "mlp":
        return MLPEncoder(config, out_features)
    return ConvEncoder(config, out_features, residual=config.arch == "resnet")


def build_decoder(config: ModelConfig, out_channels: int) -> nn.Module:
    """The decoder named by config.arch, mapping latents to `out_channels` maps of the image's size
    (the parameters of the pixel distribution)."""
    if config.arch == "mlp":
        return MLPDecoder(config, out_channels)
    return ConvDecoder(config, residual=config.arch == "resnet", out_channels=out_channels)
