"""Entropy coding of latent codes: transform, quantize, and code under a learned prior.

The classical transform-coding recipe applied to an autoencoder's latents:

1. rotate the codes onto the principal axes of the run's training codes, so the coordinates are
   uncorrelated and their variances fall off (an orthonormal rotation keeps latent distances);
2. quantize every coordinate with one uniform step: coordinates whose spread is below the step
   become 0 almost always and cost almost nothing, the rest get finer detail (reverse
   water-filling without a search);
3. code the integers with an asymmetric numeral system (the `constriction` package) under a prior
   learned from the training codes: per coordinate, the empirical distribution function at
   QUANTILES knots, linear between them, mixed with a little of a wide uniform so that values
   outside the training range stay codable.

The prior is fitted once per run (`fit_prior`) and kept in the run folder (`PRIOR_FILE`); any
quantization step can use it, because the probability of integer q is the prior's mass on
[(q - 1/2) step, (q + 1/2) step]. Its arithmetic is piecewise linear (`np.interp`), so an encoder
and a decoder on different machines derive identical tables from the stored floats.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import constriction
import numpy as np
from safetensors.numpy import load_file, save_file

from vaelab.errors import VaelabError
from vaelab.fileio import atomic_output

PRIOR_FILE = "entropy_prior.safetensors"
QUANTILES = 129  # knots of each coordinate's learned distribution function
WIDE_SHARE = 1e-3  # prior mass spread uniformly over WIDE_RANGE times the training range
WIDE_RANGE = 3.0
MAX_SYMBOLS = 1 << 16  # alphabet per coordinate; a finer step is refused


@dataclass(frozen=True)
class LatentPrior:
    """Where the training codes lie: their mean [D], principal axes [D, D] (rows, orthonormal, in
    order of falling variance) and each principal coordinate's quantiles [D, QUANTILES]."""

    mean: np.ndarray
    axes: np.ndarray
    knots: np.ndarray

    @property
    def scale(self) -> float:
        """The unit of `step`: a quarter of the training codes' range (min to max) along each
        principal axis, root-mean-square over axes. For Gaussian-like codes that is about two
        standard deviations."""
        spread = self.knots[:, -1] - self.knots[:, 0]
        return float(np.sqrt(np.mean(spread**2)) / 4) or 1.0

    def checksum(self) -> int:
        """CRC-32 of the prior's bytes: a compressed file records it to refuse another prior."""
        return zlib.crc32(self.mean.tobytes() + self.axes.tobytes() + self.knots.tobytes())

    def project(self, codes: np.ndarray) -> np.ndarray:
        """Principal coordinates [N, D] of codes [N, D]."""
        return (codes.astype(np.float64) - self.mean) @ self.axes.T

    def unproject(self, coordinates: np.ndarray) -> np.ndarray:
        """Codes [N, D] (float32) from principal coordinates."""
        return (coordinates @ self.axes + self.mean).astype(np.float32)

    def alphabet(self, step: float) -> tuple[np.ndarray, list[np.ndarray]]:
        """The lowest integer [D] each coordinate may take at `step`, and for each coordinate the
        probabilities of the integers from there (all positive)."""
        low_edge, high_edge = self.knots[:, 0], self.knots[:, -1]
        width = high_edge - low_edge
        wide_low, wide_high = (
            low_edge - width * (WIDE_RANGE - 1) / 2,
            high_edge + width * (WIDE_RANGE - 1) / 2,
        )
        low = np.floor(wide_low / step + 0.5).astype(np.int64)
        high = np.maximum(np.ceil(wide_high / step - 0.5).astype(np.int64), low + 1)  # two symbols at least
        sizes = high - low + 1
        if sizes.max() > MAX_SYMBOLS:
            raise VaelabError(f"step {step:g} is too fine for these codes; use a step of at least "
                              f"{step * sizes.max() / MAX_SYMBOLS:.3g}")  # fmt: skip
        levels = np.linspace(0.0, 1.0, self.knots.shape[1])
        tables = []
        for d in range(len(low)):
            edges = (np.arange(low[d], high[d] + 2) - 0.5) * step
            learned = np.diff(np.interp(edges, self.knots[d], levels))
            wide = np.diff(np.clip((edges - wide_low[d]) / (wide_high[d] - wide_low[d]), 0.0, 1.0))
            tables.append((1 - WIDE_SHARE) * learned + WIDE_SHARE * wide)
        return low, tables


def fit_prior(codes: np.ndarray) -> LatentPrior:
    """The prior of training codes [N, D] (N well above QUANTILES)."""
    if len(codes) < 2 * QUANTILES:
        raise VaelabError(
            f"fitting the entropy prior needs at least {2 * QUANTILES} training images, got {len(codes)}; "
            "use --dtype int8 for a run trained on fewer"
        )
    codes = codes.astype(np.float64)
    mean = codes.mean(0)
    _, _, axes = np.linalg.svd(codes - mean, full_matrices=False)
    axes = axes * np.where(axes.sum(1, keepdims=True) < 0, -1.0, 1.0)  # a fixed sign per axis
    coordinates = (codes - mean) @ axes.T
    knots = np.quantile(coordinates, np.linspace(0.0, 1.0, QUANTILES), axis=0).T
    knots = np.maximum.accumulate(knots, axis=1)  # strictly ordered for interpolation
    return LatentPrior(mean, np.ascontiguousarray(axes), np.ascontiguousarray(knots))


def save_prior(prior: LatentPrior, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write the prior as safetensors (with string `metadata`), atomically."""
    with atomic_output(path) as tmp:
        save_file({"mean": prior.mean, "axes": prior.axes, "knots": prior.knots}, str(tmp), metadata)


def load_prior(path: str | Path) -> LatentPrior:
    """The prior written by save_prior."""
    try:
        tensors = load_file(str(path))
        return LatentPrior(tensors["mean"], tensors["axes"], tensors["knots"])
    except (OSError, KeyError, ValueError) as error:
        raise VaelabError(f"{path} is not an entropy prior ({error}); delete it to fit it again") from None


def quantize(prior: LatentPrior, codes: np.ndarray, step: float) -> np.ndarray:
    """Integer symbols [N, D] of codes at `step` (in latent units), clipped to the alphabet."""
    low, tables = prior.alphabet(step)
    sizes = np.array([len(t) for t in tables])
    symbols = np.rint(prior.project(codes) / step).astype(np.int64)
    return np.clip(symbols, low, low + sizes - 1)


def dequantize(prior: LatentPrior, symbols: np.ndarray, step: float) -> np.ndarray:
    """Codes [N, D] that integer symbols stand for."""
    return prior.unproject(symbols * step)


def encode(prior: LatentPrior, symbols: np.ndarray, step: float) -> bytes:
    """The entropy-coded bytes of integer symbols [N, D] under the prior."""
    low, tables = prior.alphabet(step)
    coder = constriction.stream.stack.AnsCoder()
    for d in reversed(range(symbols.shape[1])):  # a stack: encode backwards, decode forwards
        model = constriction.stream.model.Categorical(tables[d], perfect=False)
        coder.encode_reverse((symbols[:, d] - low[d]).astype(np.int32), model)
    return coder.get_compressed().astype("<u4").tobytes()


def decode(prior: LatentPrior, data: bytes, count: int, step: float) -> np.ndarray:
    """Integer symbols [count, D] from bytes written by `encode`."""
    if len(data) % 4:
        raise VaelabError("the coded latents are truncated")
    low, tables = prior.alphabet(step)
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
    columns = []
    for d in range(len(low)):
        model = constriction.stream.model.Categorical(tables[d], perfect=False)
        columns.append(coder.decode(model, count).astype(np.int64) + low[d])
    if not coder.is_empty():
        raise VaelabError("the coded latents hold more data than their header says")
    return np.stack(columns, 1) if columns else np.zeros((count, 0), np.int64)
