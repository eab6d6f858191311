"""The diagonal Gaussian posterior q(z|x) = N(mu, diag(exp(log_var))) and its KL to N(0, I)."""

from __future__ import annotations

import math

import torch

# exp(log_var) overflows float32 past ~88 and underflows to 0 below ~-103; clamping keeps sigma
# finite and positive, a common source of NaN losses in VAE code.
LOG_VAR_MIN, LOG_VAR_MAX = -30.0, 20.0


def clamp_log_var(log_var: torch.Tensor) -> torch.Tensor:
    """Keep log sigma^2 where exp() stays finite and nonzero."""
    return log_var.clamp(LOG_VAR_MIN, LOG_VAR_MAX)


def reparameterize(
    mu: torch.Tensor, log_var: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I), differentiable in mu and log_var."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * log_var) * eps


def kl_to_standard_normal(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Closed-form KL(q || N(0, I)) per latent dimension, [B, D], in nats."""
    return 0.5 * (mu.pow(2) + log_var.exp() - 1.0 - log_var)


def log_normal(
    z: torch.Tensor, mu: torch.Tensor | None = None, log_var: torch.Tensor | None = None
) -> torch.Tensor:
    """log N(z; mu, diag(exp(log_var))) summed over the last dimension, in nats (standard normal by default)."""
    if mu is None or log_var is None:
        return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
    return -0.5 * ((z - mu).pow(2) / log_var.exp() + log_var + math.log(2 * math.pi)).sum(-1)
