"""Pixel distributions: each loss matches its definition, and the pixelcnn is causal, normalized,
and drawn exactly as it is scored."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vaelab.distributions import (
    Bernoulli,
    DiscretizedLogistic,
    L1Distance,
    L2Distance,
    PixelCNN,
    bernoulli_nll,
    bits_per_dim,
    entropy_floor,
)
from vaelab.distributions.logistic import LOG_SCALE_OFFSET
from vaelab.errors import VaelabError


def test_pixel_losses_match_their_definitions() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 4, 5, generator=g, dtype=torch.float64)
    target = torch.rand(3, 1, 4, 5, generator=g, dtype=torch.float64)
    p = torch.sigmoid(logits)
    expected_bce = -(target * p.log() + (1 - target) * (1 - p).log()).flatten(1).sum(1)
    torch.testing.assert_close(bernoulli_nll(logits, target), expected_bce)
    torch.testing.assert_close(L2Distance(1).loss(target, logits), ((p - target) ** 2).flatten(1).sum(1))
    torch.testing.assert_close(L1Distance(1).loss(target, logits), (p - target).abs().flatten(1).sum(1))


def test_bernoulli_of_a_binary_image_is_its_negative_log_likelihood() -> None:
    # One pixel, p = 0.8: -log 0.8 if it is on, -log 0.2 if off.
    logits = torch.full((2, 1, 1, 1), math.log(0.8 / 0.2))
    target = torch.tensor([1.0, 0.0]).view(2, 1, 1, 1)
    torch.testing.assert_close(bernoulli_nll(logits, target), torch.tensor([-math.log(0.8), -math.log(0.2)]))


def test_entropy_floor_is_the_least_loss_and_zero_for_binary_images() -> None:
    g = torch.Generator().manual_seed(2)
    grey = torch.rand(4, 1, 5, 5, generator=g, dtype=torch.float64).clamp(0.01, 0.99)
    floor = entropy_floor(grey)
    # The loss is smallest where the predicted probabilities equal the target's grey values.
    torch.testing.assert_close(bernoulli_nll(torch.logit(grey), grey), floor)
    for _ in range(5):
        other = torch.logit(grey) + 0.3 * torch.randn(grey.shape, generator=g, dtype=torch.float64)
        assert (bernoulli_nll(other, grey) > floor).all()
    binary = (grey > 0.5).double()
    torch.testing.assert_close(entropy_floor(binary), torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(entropy_floor(torch.full((1, 1, 2, 2), 0.5)), torch.tensor([4 * math.log(2)]))


def _pixelcnn(channels: int = 1, features: int = 4, seed: int = 0) -> PixelCNN:
    torch.manual_seed(seed)
    head = PixelCNN(channels, features, channels=8, layers=2)
    with torch.no_grad():  # larger weights than the default init, so every dependency shows
        for p in head.parameters():
            p.mul_(3)
    return head


@pytest.mark.parametrize("channels", [1, 3])
def test_each_pixel_sees_only_the_pixels_before_it(channels: int) -> None:
    head = _pixelcnn(channels)
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
    head = _pixelcnn()
    height, width = 3, 3
    features = torch.randn(1, 4, height, width)
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=height * width))).view(
        -1, 1, height, width
    )
    log_p = -bernoulli_nll(head(images, features.expand(len(images), -1, -1, -1)), images)
    assert torch.logsumexp(log_p.double(), 0).item() == pytest.approx(0.0, abs=1e-5)


def test_drawing_pixel_by_pixel_matches_one_pass_scoring() -> None:
    # 14 x 13 is wider and taller than the head's reach (3 + 2 layers), so the windows are cropped.
    head = _pixelcnn(channels=2)
    features = torch.randn(3, 4, 14, 13)
    drawn, probs = head.generate(features, torch.Generator().manual_seed(1))
    assert set(drawn.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(probs, torch.sigmoid(head(drawn, features)), rtol=1e-5, atol=1e-6)


def test_distances_are_not_likelihoods_and_have_nothing_to_draw() -> None:
    params, x = torch.zeros(2, 1, 3, 3), torch.rand(2, 1, 3, 3)
    for distance in (L1Distance(1), L2Distance(1)):
        assert not distance.likelihood and distance.closed_form_mean
        torch.testing.assert_close(distance.mean(params), torch.full_like(x, 0.5))
        with pytest.raises(VaelabError, match="not a likelihood"):
            distance.log_prob(x, params)
        with pytest.raises(VaelabError, match="nothing to draw"):
            distance.sample(params)


def test_bernoulli_mean_and_draws_agree() -> None:
    pixels = Bernoulli(1)
    params = torch.full((20_000, 1, 1, 2), math.log(0.3 / 0.7))
    torch.testing.assert_close(pixels.mean(params)[0], torch.full((1, 1, 2), 0.3))
    drawn = pixels.sample(params, torch.Generator().manual_seed(0))
    assert set(drawn.unique().tolist()) == {0.0, 1.0}
    assert abs(drawn.mean().item() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / drawn.numel())
    torch.testing.assert_close(pixels.log_prob(drawn[:2], params[:2]), -bernoulli_nll(params[:2], drawn[:2]))


def test_a_pixelcnn_has_no_closed_form_mean() -> None:
    pixels = _pixelcnn()
    assert pixels.likelihood and not pixels.closed_form_mean and pixels.param_channels == 4
    with pytest.raises(VaelabError, match="no closed-form mean"):
        pixels.mean(torch.randn(1, 4, 3, 3))


@pytest.mark.parametrize(
    ("mu", "log_scale"), [(0.3, -3.0), (0.0, -6.0), (1.2, -1.0), (0.5, 2.0), (0.999, -9.0), (-0.4, -8.0)]
)
def test_discretized_logistic_sums_to_one_over_the_256_values(mu: float, log_scale: float) -> None:
    levels = (torch.arange(256, dtype=torch.float64) / 255).view(256, 1, 1, 1)
    params = torch.tensor([mu, log_scale], dtype=torch.float64).view(1, 2, 1, 1).expand(256, 2, 1, 1)
    log_p = -DiscretizedLogistic(1).loss(levels, params)
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-9)


def test_discretized_logistic_matches_its_definition_and_bits_per_dim() -> None:
    mu, scale = 0.4, 0.05
    params = torch.tensor([mu, math.log(scale) - LOG_SCALE_OFFSET], dtype=torch.float64).view(1, 2, 1, 1)

    def cdf(t: float) -> float:
        return 1 / (1 + math.exp(-(t - mu) / scale))

    for k in (0, 1, 100, 254, 255):
        x = torch.full((1, 1, 1, 1), k / 255, dtype=torch.float64)
        upper = 1.0 if k == 255 else cdf((k + 0.5) / 255)
        lower = 0.0 if k == 0 else cdf((k - 0.5) / 255)
        expected = -math.log(upper - lower)
        assert DiscretizedLogistic(1).loss(x, params).item() == pytest.approx(expected, rel=1e-9)
    # A uniform model of 8-bit values costs exactly 8 bits per dimension.
    assert bits_per_dim(3 * 4 * 4 * math.log(256), 3 * 4 * 4) == pytest.approx(8.0)


def test_a_mean_scale_keeps_the_loss_and_teaches_the_means_as_that_fixed_scale_would() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 4, 4)).double() / 255
    start = torch.cat([torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4) - 2], 1).double()  # mu, log s - offset
    pixels = DiscretizedLogistic(3)

    def grads(mean_scale: float | None, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = params.clone().requires_grad_(True)
        pixels.mean_scale = mean_scale
        loss = pixels.loss(x, params)
        loss.sum().backward()
        return loss.detach(), params.grad

    true_loss, true_grad = grads(None, start)
    loss, grad = grads(math.exp(LOG_SCALE_OFFSET), start)
    torch.testing.assert_close(loss, true_loss)  # the value is the true -log p(x|z)
    torch.testing.assert_close(grad[:, 3:], true_grad[:, 3:])  # the scales learn as they would
    held = torch.cat([start[:, :3], torch.zeros_like(start[:, 3:])], 1)  # every scale at exp(offset)
    _, fixed_grad = grads(None, held)
    torch.testing.assert_close(grad[:, :3], fixed_grad[:, :3])  # the means as with that fixed scale
    assert not torch.allclose(grad[:, :3], true_grad[:, :3])
    with torch.no_grad():  # validation and evaluation: the plain loss
        torch.testing.assert_close(pixels.loss(x, start), true_loss)


def test_discretized_logistic_is_stable_for_confident_colour_predictions() -> None:
    dist = DiscretizedLogistic(3)
    assert dist.param_channels == 6
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 4, 4), generator=g).float() / 255
    params = torch.cat([x + 0.3, torch.full_like(x, -20.0)], 1).requires_grad_()  # far off, very sharp
    loss = dist.loss(x, params)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(params.grad).all() and (loss > 0).all()
    exact = torch.cat([x, torch.full_like(x, -20.0)], 1)  # sharp and right: almost all mass on x
    assert dist.loss(x, exact).max().item() < 1e-3
    drawn = dist.sample(exact, torch.Generator().manual_seed(1))
    assert torch.equal(drawn, x)
    torch.testing.assert_close(dist.mean(exact), x, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("mu", "log_scale"), [(0.3, -3.0), (0.05, -1.0), (1.1, -2.0), (0.5, 1.0)])
def test_discretized_logistic_mean_is_the_mean_of_its_256_values(mu: float, log_scale: float) -> None:
    levels = (torch.arange(256, dtype=torch.float64) / 255).view(256, 1, 1, 1)
    params = torch.tensor([mu, log_scale - LOG_SCALE_OFFSET], dtype=torch.float64).view(1, 2, 1, 1)
    probabilities = torch.exp(-DiscretizedLogistic(1).loss(levels, params.expand(256, 2, 1, 1)))
    exact = (probabilities * levels.flatten()).sum().item()
    assert DiscretizedLogistic(1).mean(params).item() == pytest.approx(exact, abs=2e-3)
