"""The autoregressive (PixelCNN) decoder head: causal, a normalized distribution, and drawn exactly
as it is scored."""

from __future__ import annotations

import itertools

import pytest
import torch

from vaelab.autoregressive import AutoregressiveHead
from vaelab.config import DEFAULT_LR, PIXELCNN_FREE_BITS, PIXELCNN_LR, ModelConfig, TrainConfig
from vaelab.errors import VaelabError
from vaelab.likelihoods import bernoulli
from vaelab.models import build_model
from vaelab.models.vae import DECODE_DRAWS


def _head(channels: int = 1, features: int = 4, seed: int = 0) -> AutoregressiveHead:
    torch.manual_seed(seed)
    head = AutoregressiveHead(channels, features, channels=8, layers=2)
    with torch.no_grad():  # larger weights than the default init, so every dependency shows
        for p in head.parameters():
            p.mul_(3)
    return head


@pytest.mark.parametrize("channels", [1, 3])
def test_each_pixel_sees_only_the_pixels_before_it(channels: int) -> None:
    head = _head(channels)
    height, width = 9, 8
    x = torch.rand(1, channels, height, width, requires_grad=True)
    features = torch.randn(1, 4, height, width)
    logits = head(x, features)
    for i, j in [(0, 0), (0, 5), (4, 0), (4, 4), (8, 7)]:
        (grad,) = torch.autograd.grad(logits[0, :, i, j].sum(), x, retain_graph=True)
        seen = grad.abs().sum(1)[0] > 0  # [H, W]: which pixels moved this pixel's logits
        order = torch.arange(height * width).view(height, width)
        assert not seen[order >= i * width + j].any(), f"pixel {(i, j)} sees itself or a later pixel"
        if (i, j) != (0, 0):
            assert seen[order < i * width + j].any()


def test_the_probabilities_of_all_images_sum_to_one() -> None:
    head = _head()
    height, width = 3, 3
    features = torch.randn(1, 4, height, width)
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=height * width))).view(
        -1, 1, height, width
    )
    log_p = -bernoulli(head(images, features.expand(len(images), -1, -1, -1)), images)
    assert torch.logsumexp(log_p.double(), 0).item() == pytest.approx(0.0, abs=1e-5)


def test_drawing_pixel_by_pixel_matches_one_pass_scoring() -> None:
    # 14 x 13 is wider and taller than the head's reach (3 + 2 layers), so the windows are cropped.
    head = _head(channels=2)
    features = torch.randn(3, 4, 14, 13)
    drawn, probs = head.generate(features, torch.Generator().manual_seed(1))
    assert set(drawn.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(probs, torch.sigmoid(head(drawn, features)), rtol=1e-5, atol=1e-6)


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


def test_a_pixelcnn_vae_scores_decodes_and_samples_any_image_size() -> None:
    config = TrainConfig(binarize="dynamic", arch="conv", hidden=0).validate().model_config((1, 11, 9))
    model = build_model(config).eval()
    x = (torch.rand(4, 1, 11, 9) > 0.5).float()
    out = model(x)
    assert out.recon.shape == (4,) and torch.isfinite(out.loss)
    mu, _ = model.encode(x)
    torch.testing.assert_close(model.reconstruction_loss(mu, x), bernoulli(model.logits(mu, x), x))
    mean = model.decode(mu)
    assert mean.shape == x.shape and torch.equal(mean, model.decode(mu))  # repeatable
    assert (
        (mean * DECODE_DRAWS) - (mean * DECODE_DRAWS).round()
    ).abs().max() < 1e-5  # an average of 0/1 draws
    first = model.sample(4, torch.Generator().manual_seed(3))
    again = model.sample(4, torch.Generator().manual_seed(3))
    assert first.shape == x.shape and torch.equal(first, again)


def test_configs_saved_before_the_pixelcnn_option_rebuild_a_factorized_decoder() -> None:
    old = ModelConfig(model="vae", arch="conv").to_dict()
    for key in ("decoder", "ar_channels", "ar_layers"):
        old.pop(key)
    assert build_model(ModelConfig.from_dict(old)).head is None
