"""Entropy coding of latent codes (vaelab.codec): exact round trips, rates near the entropy."""

from __future__ import annotations

import numpy as np
import pytest

from vaelab import codec
from vaelab.errors import VaelabError


def correlated_codes(n: int, seed: int) -> np.ndarray:
    """Codes [n, 6] whose variance lies mostly along two directions (as trained codes do)."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).normal(size=(6, 6))
    spread = np.array([3.0, 1.5, 0.3, 0.1, 0.05, 0.01])
    return (rng.normal(size=(n, 6)) * spread) @ mixing + 2.0


def test_the_prior_finds_the_principal_axes() -> None:
    prior = codec.fit_prior(correlated_codes(5000, 0))
    assert np.allclose(prior.axes @ prior.axes.T, np.eye(6), atol=1e-9)  # orthonormal rows
    coordinates = prior.project(correlated_codes(5000, 1))
    spreads = coordinates.std(0)
    assert (np.diff(spreads) < 0).all()  # in order of falling variance
    assert abs(np.corrcoef(coordinates[:, 0], coordinates[:, 1])[0, 1]) < 0.05  # decorrelated
    assert np.allclose(prior.unproject(coordinates), correlated_codes(5000, 1), atol=1e-4)


@pytest.mark.parametrize("step", [0.05, 0.3, 2.0])
def test_codes_round_trip_within_half_a_step(step: float) -> None:
    prior = codec.fit_prior(correlated_codes(4000, 0))
    codes = correlated_codes(300, 2)
    symbols = codec.quantize(prior, codes, step)
    data = codec.encode(prior, symbols, step)
    assert np.array_equal(codec.decode(prior, data, len(codes), step), symbols)
    error = prior.project(codec.dequantize(prior, symbols, step)) - prior.project(codes)
    assert np.abs(error).max() <= step / 2 + 1e-5  # rotation keeps distances; quantization is all


def test_the_rate_is_close_to_the_entropy_of_the_symbols() -> None:
    prior = codec.fit_prior(correlated_codes(20000, 0))
    codes, step = correlated_codes(2000, 3), 0.25
    symbols = codec.quantize(prior, codes, step)
    bits = 8 * len(codec.encode(prior, symbols, step))
    low, tables = prior.alphabet(step)
    ideal = 0.0  # cross-entropy of the test symbols under the prior: what an ideal coder spends
    for d, table in enumerate(tables):
        p = table / table.sum()
        ideal -= np.log2(p[symbols[:, d] - low[d]]).sum()
    assert ideal <= bits <= ideal * 1.01 + 64  # ANS: within 1% plus its final words
    # a coarser step costs fewer bits; fine-spread coordinates cost almost nothing
    assert len(codec.encode(prior, codec.quantize(prior, codes, 1.0), 1.0)) < bits / 8


def test_values_outside_the_training_range_are_clipped_not_lost() -> None:
    prior = codec.fit_prior(correlated_codes(2000, 0))
    far = correlated_codes(10, 4) * 100
    symbols = codec.quantize(prior, far, 0.5)
    assert np.array_equal(codec.decode(prior, codec.encode(prior, symbols, 0.5), 10, 0.5), symbols)


def test_a_damaged_stream_and_a_tiny_training_set_are_refused() -> None:
    prior = codec.fit_prior(correlated_codes(2000, 0))
    data = codec.encode(prior, codec.quantize(prior, correlated_codes(50, 5), 0.5), 0.5)
    with pytest.raises(VaelabError, match="truncated"):
        codec.decode(prior, data[:-1], 50, 0.5)
    with pytest.raises(VaelabError, match="at least"):
        codec.fit_prior(correlated_codes(100, 0))
    with pytest.raises(VaelabError, match="too fine"):
        codec.quantize(prior, correlated_codes(5, 0), 1e-6)
