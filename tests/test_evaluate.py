"""The importance-sampled likelihood against a model whose log p(x) is known exactly (PPCA)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from conftest import write_images
from vaelab.cli import main
from vaelab.evaluation import active_units, psnr
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


def run_cli(args: list[str], capsys) -> tuple[int, dict | None, str]:
    code = main([*args, "--json", "--quiet"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out.strip().splitlines()[-1]) if code == 0 else None, captured.err


def test_evaluate_writes_eval_json_with_nll_below_the_negative_elbo(vae_run: Path, capsys) -> None:
    code, result, _ = run_cli(
        ["evaluate", str(vae_run), "--k", "50", "--n-images", "64", "--no-quality"], capsys
    )
    assert code == 0
    for key in ("nll", "nll_se", "neg_elbo", "recon", "kl", "active_units", "k", "n_images"):
        assert key in result
    assert result["k"] == 50 and result["n_images"] == 64 and result["units"] == "nats per image"
    assert 50 < result["nll"] < result["neg_elbo"] + 1.0  # the IS bound is at least as tight as the ELBO
    assert result["neg_elbo"] == pytest.approx(result["recon"] + result["kl"])
    assert json.loads((vae_run / "eval.json").read_text())["nll"] == result["nll"]


def test_an_autoencoder_gets_psnr_and_the_reason_nll_is_absent(ae_run: Path, capsys) -> None:
    code, result, _ = run_cli(["evaluate", str(ae_run), "--n-images", "32", "--no-quality"], capsys)
    assert code == 0 and result["nll"] is None and "no p(x)" in result["nll_absent"]
    assert 5 < result["psnr"] < 40
    code, _, err = run_cli(["evaluate", str(ae_run), "--k", "10"], capsys)
    assert code == 2 and "NLL is undefined" in err


def test_evaluate_bad_input(vae_run: Path, tmp_path: Path, capsys) -> None:
    (vae_run / "eval.json").unlink(missing_ok=True)
    code, _, err = run_cli(["evaluate", str(vae_run), "--k", "0"], capsys)
    assert code == 2 and "k must be at least 1, got 0" in err
    write_images(tmp_path / "imgs", 6, (10, 10))
    code, _, err = run_cli(["evaluate", str(vae_run), "--dataset", f"folder:{tmp_path / 'imgs'}"], capsys)
    assert code == 2 and "model expects (1, 28, 28)" in err
    assert not (vae_run / "eval.json").exists()


def test_frechet_distance_of_known_gaussians() -> None:
    from vaelab.classifier import frechet_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    b = 2.0 * torch.randn(200_000, 3, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0.0, 0.0])
    # ||mu_a - mu_b||^2 + sum over dims of (sigma_a - sigma_b)^2 for diagonal covariances: 1 + 3 * (1 - 2)^2
    assert frechet_distance(a, b) == pytest.approx(4.0, abs=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_sample_quality_of_a_trained_vae(tmp_path: Path, capsys) -> None:
    run = tmp_path / "vae16"
    plain = ["--ema", "0", "--kl-warmup-epochs", "0", "--lr-schedule", "constant"]
    args = ["train", "--arch", "mlp", "--latent-dim", "16", "--epochs", "3", "--out", str(run), "--quiet"]
    assert main(args + plain) == 0
    code, result, _ = run_cli(["evaluate", str(run), "--k", "2", "--n-images", "500"], capsys)
    assert code == 0
    assert result["classifier_accuracy"] > 0.9  # the feature classifier itself works
    assert result["recon_accuracy"] > 0.5  # reconstructions keep most digits' identity (chance: ~0.1)
    assert 0 < result["fd_train_vs_test"] < result["fd"]  # real images are closer to real images


def test_a_pixelcnn_run_is_scored_without_drawing_a_single_image(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vaelab.distributions import PixelCNN

    def refuse(*args, **kwargs):
        raise AssertionError("evaluate drew images pixel by pixel")

    monkeypatch.setattr(PixelCNN, "generate", refuse)
    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "fixtures" / "run-0.1.0", run)  # saved by vaelab 0.1.0
    code, result, _ = run_cli(["evaluate", str(run), "--k", "20", "--n-images", "100"], capsys)
    assert code == 0 and result["k"] == 20 and result["n_images"] == 100
    assert result["nll"] <= result["neg_elbo"] + 3 * result["neg_elbo_se"]
    assert result["mse"] is None and "no closed-form mean" in result["mse_absent"]
    assert "fd" not in result and "--quality" in result["quality_absent"]
