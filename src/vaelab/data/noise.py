"""Synthetic corruption for denoising: ``gaussian:SIGMA``, ``salt-pepper:P``, ``mask:FRACTION``.

All act on float images [B, C, H, W] in [0, 1] and return images in [0, 1]:

* gaussian:SIGMA   add N(0, SIGMA^2) to every pixel, then clip to [0, 1];
* salt-pepper:P    replace each pixel with probability P by 0 or 1 (equally likely);
* mask:FRACTION    set each pixel to 0 with probability FRACTION (dropped pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vaelab.errors import VaelabError

KINDS = ("gaussian", "salt-pepper", "mask")


@dataclass(frozen=True)
class Noise:
    """A parsed noise specification."""

    kind: str
    amount: float

    def __str__(self) -> str:
        return f"{self.kind}:{self.amount:g}"

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A corrupted copy of float images in [0, 1]."""
        return self.corrupt(images, generator)[0]

    def corrupt(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A corrupted copy of float images in [0, 1] and the boolean mask of the pixels it replaced
        (every pixel for gaussian noise), which an inpainting baseline may be told."""
        if self.kind == "gaussian":
            noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
            return (images + self.amount * noise).clamp(0.0, 1.0), torch.ones_like(images, dtype=torch.bool)
        draw = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        hit = draw < self.amount
        if self.kind == "mask":
            return images * hit.logical_not(), hit
        # salt and pepper: the lower half of hits become 0, the upper half 1
        return torch.where(hit, (draw < self.amount / 2).logical_not().to(images.dtype), images), hit

    def untouched(self, noisy: torch.Tensor) -> torch.Tensor | None:
        """Pixels of a corrupted image that this noise cannot have changed, or None (gaussian
        noise may change every pixel): mask noise only writes 0, salt and pepper only 0 and 1. A
        denoiser keeps these as they are."""
        if self.kind == "mask":
            return noisy > 0
        if self.kind == "salt-pepper":
            return (noisy > 0) & (noisy < 1)
        return None


def parse_noise(spec: str) -> Noise:
    """Parse 'gaussian:0.3', 'salt-pepper:0.1' or 'mask:0.5'; a bad spec is a VaelabError."""
    kind, _, value = spec.partition(":")
    usage = "use gaussian:SIGMA, salt-pepper:P or mask:FRACTION, e.g. gaussian:0.3"
    if kind not in KINDS or not value:
        raise VaelabError(f"noise {spec!r} does not parse; {usage}")
    try:
        amount = float(value)
    except ValueError:
        raise VaelabError(f"noise {spec!r}: {value!r} is not a number; {usage}") from None
    if kind == "gaussian" and not amount >= 0:
        raise VaelabError(f"noise {spec!r}: SIGMA must be zero or positive")
    if kind != "gaussian" and not 0 <= amount <= 1:
        raise VaelabError(f"noise {spec!r}: {kind} takes a probability between 0 and 1")
    return Noise(kind, amount)
