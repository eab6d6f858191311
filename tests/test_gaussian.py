"""The diagonal Gaussian posterior: KL, reparameterization, clamping."""

from __future__ import annotations

import math

import torch

from vaelab.gaussian import clamp_log_var, kl_to_standard_normal, log_normal, reparameterize


def test_closed_form_kl_equals_monte_carlo_kl() -> None:
    g = torch.Generator().manual_seed(1)
    mu = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    log_var = torch.tensor([[-1.0, 0.3, 0.0]], dtype=torch.float64)
    n = 200_000
    z = reparameterize(mu.expand(n, 3), log_var.expand(n, 3), g)
    per_sample = log_normal(z, mu.expand(n, 3), log_var.expand(n, 3)) - log_normal(z)
    estimate, stderr = per_sample.mean().item(), per_sample.std().item() / math.sqrt(n)
    exact = kl_to_standard_normal(mu, log_var).sum().item()
    assert abs(estimate - exact) < 4 * stderr


def test_reparameterized_samples_have_the_right_moments_and_gradients() -> None:
    mu = torch.tensor([1.5, -2.0], requires_grad=True)
    log_var = torch.tensor([0.0, math.log(0.25)], requires_grad=True)
    z = reparameterize(mu.expand(100_000, 2), log_var.expand(100_000, 2), torch.Generator().manual_seed(2))
    torch.testing.assert_close(z.mean(0), mu.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 0.5]), atol=0.02, rtol=0)
    z.sum().backward()
    assert mu.grad is not None and torch.allclose(mu.grad, torch.full((2,), 100_000.0))
    assert log_var.grad is not None and log_var.grad.abs().sum() > 0


def test_kl_is_zero_exactly_at_the_prior_and_finite_when_clamped() -> None:
    assert kl_to_standard_normal(torch.zeros(4, 3), torch.zeros(4, 3)).abs().max() == 0
    extreme = clamp_log_var(torch.tensor([[1e4, -1e4]]))
    assert torch.isfinite(kl_to_standard_normal(torch.zeros(1, 2), extreme)).all()
