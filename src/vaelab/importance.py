"""Importance weights of a diagonal Gaussian posterior: the IWAE bound and the IS likelihood.

For images x and K draws z_k ~ q(z|x):  log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x),
and log (1/K) sum_k w_k is a lower bound on log p(x) that tightens as K grows (Burda et al., 2015).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from vaelab.device import decode_budget
from vaelab.gaussian import log_normal, reparameterize

LogLikelihood = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def importance_log_weights(
    x: torch.Tensor,
    mu: torch.Tensor,
    log_var: torch.Tensor,
    log_likelihood: LogLikelihood,
    k: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log w_k for K draws per image, [B, K], log p(x|z_k), [B, K], and the first draw z_1, [B, D].

    `log_likelihood(x_rep, z)` scores images repeated to match the latents z, returning [N]. The
    draws are decoded in chunks of about decode_budget(device) pixels (memory stays bounded
    whatever K is); gradients flow when called outside torch.no_grad (the IWAE objective uses this
    same function).
    """
    batch = len(x)
    chunk = max(1, decode_budget(x.device) // (batch * x[0].numel()))  # draws per image per pass
    log_w, log_px_z, first = [], [], None
    for start in range(0, k, chunk):
        n = min(chunk, k - start)
        mu_n = mu.unsqueeze(1).expand(batch, n, -1).reshape(batch * n, -1)  # [B*n, D]
        lv_n = log_var.unsqueeze(1).expand(batch, n, -1).reshape(batch * n, -1)
        z = reparameterize(mu_n, lv_n, generator)
        if first is None:
            first = z.view(batch, n, -1)[:, 0]
        x_n = x.unsqueeze(1).expand(batch, n, *x.shape[1:]).reshape(batch * n, *x.shape[1:])
        ll = log_likelihood(x_n, z)
        log_px_z.append(ll.view(batch, n))
        log_w.append((ll + log_normal(z) - log_normal(z, mu_n, lv_n)).view(batch, n))
    assert first is not None, "k must be at least 1"
    return torch.cat(log_w, 1), torch.cat(log_px_z, 1), first


def log_mean_exp(log_w: torch.Tensor) -> torch.Tensor:
    """log (1/K) sum_k exp(log_w_k) along the last dimension, computed stably."""
    return torch.logsumexp(log_w, dim=-1) - math.log(log_w.shape[-1])
