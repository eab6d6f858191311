"""Settings: what "auto" resolves to, and the ranges that are refused."""

from __future__ import annotations

import pytest

from vaelab.config import DEFAULT_LR, PIXELCNN_FREE_BITS, PIXELCNN_LR, TrainConfig
from vaelab.errors import VaelabError


def test_auto_decoder_follows_binarization_and_refuses_models_without_a_likelihood() -> None:
    assert TrainConfig(binarize="dynamic").validate().resolved_decoder() == "pixelcnn"
    assert TrainConfig(binarize="none").validate().resolved_decoder() == "factorized"
    assert TrainConfig(binarize="dynamic", model="ae").validate().resolved_decoder() == "factorized"
    assert TrainConfig(binarize="dynamic", loss="l2").validate().resolved_decoder() == "factorized"
    with pytest.raises(VaelabError, match="--decoder pixelcnn needs --model vae"):
        TrainConfig(decoder="pixelcnn", model="ae").validate()
    with pytest.raises(VaelabError, match="--ar-channels"):
        TrainConfig(ar_channels=0).validate()


def test_learning_rate_and_free_bits_follow_the_decoder_unless_given() -> None:
    pixelcnn = TrainConfig(binarize="dynamic").validate()
    assert (pixelcnn.resolved_lr(), pixelcnn.resolved_free_bits()) == (PIXELCNN_LR, PIXELCNN_FREE_BITS)
    factorized = TrainConfig(binarize="dynamic", decoder="factorized").validate()
    assert (factorized.resolved_lr(), factorized.resolved_free_bits()) == (DEFAULT_LR, 0.0)
    given = TrainConfig(binarize="dynamic", lr=5e-4, free_bits=0.0).validate()
    assert (given.resolved_lr(), given.resolved_free_bits()) == (5e-4, 0.0)
    assert TrainConfig(binarize="dynamic", objective="iwae").validate().resolved_free_bits() == 0.0
