"""The importance-sampled likelihood against a model whose log p(x) is known exactly (PPCA)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.evaluation import (
    active_units,
    mutual_information_gap,
    png_bits_per_dim,
    psnr,
    structural_similarity,
)
from vaelab.gaussian import kl_to_standard_normal
from vaelab.importance import importance_log_weights, log_mean_exp

D, P, SIGMA = 2, 6, 0.5


def ppca(seed: int = 0, orthogonal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Loadings W [P, D] and offset b [P] of a probabilistic PCA model x = Wz + b + sigma * noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(P, D, generator=g, dtype=torch.float64)
    if orthogonal:
        w = torch.linalg.qr(w).Q * torch.tensor([2.0, 1.0], dtype=torch.float64)
    return w, torch.randn(P, generator=g, dtype=torch.float64)


def exact_log_px(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    covariance = w @ w.T + SIGMA**2 * torch.eye(P, dtype=torch.float64)
    return torch.distributions.MultivariateNormal(b, covariance).log_prob(x)


def gaussian_log_likelihood(w: torch.Tensor, b: torch.Tensor):
    def log_px_z(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Normal(z @ w.T + b, SIGMA).log_prob(x).sum(-1)

    return log_px_z


def exact_posterior(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = w.T @ w + SIGMA**2 * torch.eye(D, dtype=torch.float64)
    mean = (x - b) @ torch.linalg.solve(m, w.T).T
    return mean, torch.log(SIGMA**2 * torch.diagonal(torch.linalg.inv(m))).expand_as(mean)


def data(w: torch.Tensor, b: torch.Tensor, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, D, generator=g, dtype=torch.float64)
    return z @ w.T + b + SIGMA * torch.randn(n, P, generator=g, dtype=torch.float64)


def test_with_the_exact_posterior_every_weight_is_p_of_x() -> None:
    w, b = ppca(orthogonal=True)  # orthogonal loadings: the exact posterior is diagonal
    x = data(w, b, 8)
    mu, log_var = exact_posterior(x, w, b)
    log_w, _, _ = importance_log_weights(x, mu, log_var, gaussian_log_likelihood(w, b), 3, torch.Generator())
    torch.testing.assert_close(log_w, exact_log_px(x, w, b).unsqueeze(1).expand(8, 3), atol=1e-9, rtol=0)


def test_estimate_converges_to_the_exact_log_likelihood() -> None:
    w, b = ppca()
    x = data(w, b, 6)
    mu, log_var = exact_posterior(x, w, b)
    mu, log_var = mu + 0.3, log_var + 0.5  # a deliberately imperfect, wider posterior
    log_w, _, _ = importance_log_weights(
        x, mu, log_var, gaussian_log_likelihood(w, b), 50_000, torch.Generator().manual_seed(0)
    )
    estimate = log_mean_exp(log_w)
    # delta method: the standard error of log(mean w) is std(w / mean w) / sqrt(K)
    relative = torch.exp(log_w - log_w.logsumexp(1, keepdim=True)) * log_w.shape[1]
    standard_error = relative.std(1) / math.sqrt(log_w.shape[1])
    assert (standard_error < 0.02).all()  # K is large enough for the check to mean something
    assert ((estimate - exact_log_px(x, w, b)).abs() < 4 * standard_error + 1e-3).all()


def test_bound_rises_with_k_and_never_falls_below_the_elbo() -> None:
    w, b = ppca(seed=2)
    x = data(w, b, 400, seed=3)
    mu, log_var = exact_posterior(x, w, b)
    mu, log_var = mu - 0.4, log_var - 0.7  # too narrow and off-centre: a loose ELBO
    log_w, log_px_z, _ = importance_log_weights(
        x, mu, log_var, gaussian_log_likelihood(w, b), 1000, torch.Generator().manual_seed(4)
    )
    elbo = log_px_z.mean(1) - kl_to_standard_normal(mu, log_var).sum(1)  # MC recon, closed-form KL
    exact = exact_log_px(x, w, b)
    previous = elbo
    for k in (1, 10, 100, 1000):
        bound = log_mean_exp(log_w[:, :k])
        gain = bound - previous
        # averaged over 400 images the bound does not fall (allowing 3 standard errors of noise)
        assert gain.mean() > -3 * gain.std() / math.sqrt(len(gain)), k
        previous = bound
    assert (previous - elbo).mean() > 0.1  # the IS bound is clearly tighter than the ELBO here
    assert (exact - previous).mean() > -0.01  # and still a lower bound of the truth on average


def test_active_units_count_dimensions_that_vary() -> None:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(1000, 4, generator=g) * torch.tensor([1.0, 0.5, 0.05, 0.0])
    assert active_units(means) == 2  # variances 1, 0.25 pass; 0.0025 and 0 do not


def test_psnr_of_a_known_error() -> None:
    assert psnr(torch.tensor([0.01])).item() == pytest.approx(20.0)


def test_ssim_is_one_for_equal_images_and_follows_its_formula_on_flat_ones() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 16, generator=g)
    torch.testing.assert_close(structural_similarity(x, x), torch.ones(3, dtype=torch.float64))
    a, b = torch.full((1, 1, 12, 12), 0.2), torch.full((1, 1, 12, 12), 0.6)
    c1 = 0.01**2  # flat images: no variance, so SSIM is the luminance term alone
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    assert structural_similarity(a, b).item() == pytest.approx(expected, rel=1e-6)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert (structural_similarity(noisy, x) < 0.9).all()


def test_ssim_equals_scikit_image_with_the_papers_window() -> None:
    from skimage.metrics import structural_similarity as skimage_ssim

    g = torch.Generator().manual_seed(1)
    clean = torch.rand(4, 3, 23, 30, generator=g, dtype=torch.float64)  # not square, not a power of 2
    noisy = (clean + 0.15 * torch.randn(clean.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    expected = [
        skimage_ssim(a.numpy(), b.numpy(), channel_axis=0, gaussian_weights=True, sigma=1.5,
                     use_sample_covariance=False, data_range=1.0)
        for a, b in zip(noisy, clean)
    ]  # fmt: skip
    torch.testing.assert_close(
        structural_similarity(noisy, clean), torch.tensor(expected), rtol=1e-12, atol=0
    )


def test_png_bits_per_dim_is_small_for_flat_images_and_about_8_for_noise() -> None:
    flat = torch.full((4, 3, 32, 32), 77, dtype=torch.uint8)
    noise = torch.randint(
        0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    assert png_bits_per_dim(flat) < 0.3
    assert 8.0 < png_bits_per_dim(noise) < 8.5  # incompressible, plus PNG's own headers


def test_mig_is_one_for_disentangled_codes_and_near_zero_for_duplicated_or_random_ones() -> None:
    rng = np.random.default_rng(0)
    factors = {"size": rng.random(5000), "shape": rng.integers(0, 3, 5000)}
    noise = rng.normal(size=5000)
    disentangled = np.stack([factors["size"], factors["shape"] + 0.1 * rng.random(5000), noise], 1)
    result = mutual_information_gap(disentangled, factors)
    assert result["mig"] > 0.9 and result["mig_best_dim"] == {"size": 0, "shape": 1}
    duplicated = np.stack([factors["size"], factors["size"], factors["shape"], factors["shape"]], 1)
    assert mutual_information_gap(duplicated, factors)["mig"] < 0.01  # each factor in two coordinates
    assert mutual_information_gap(rng.normal(size=(5000, 4)), factors)["mig"] < 0.05


ROWS_SCRIPT = """
import torch
from vaelab import ModelConfig, build_model
from vaelab.evaluation import evaluate_images

def anon():
    with open("/proc/self/status") as f:
        return int(f.read().split("RssAnon:")[1].split()[0]) * 1024

torch.manual_seed(0)
model = build_model(ModelConfig(model="vae", arch="conv", latent_dim=8, hidden=0, channels=8, loss="l2",
                                image_channels=3, image_height=64, image_width=64)).eval()
images = torch.randint(0, 256, (4000, 3, 64, 64), dtype=torch.uint8)
evaluate_images(model, images[:128], 1)
before = anon()
evaluation = evaluate_images(model, images, 1)
assert evaluation.latent_means.shape == (4000, 8) and evaluation.ssim.shape == (4000,)
print(anon() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc (Linux)")
def test_scoring_many_images_keeps_no_memory_per_image() -> None:
    # Each batch's small results, kept until the end, sat in the holes its large temporaries left
    # in glibc's heap, so the holes were never reused: scoring 4,000 64 px images left the process
    # 330-360 MB larger (a 1.5 GB memory limit killed `vaelab evaluate` on a large folder). Its
    # results (about 0.2 MB here) are now written into tensors of all the rows.
    done = subprocess.run([sys.executable, "-c", ROWS_SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) < 150e6
