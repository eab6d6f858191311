"""The Gaussian mixture fitted to a run's latents: it recovers a known mixture, is stored in the run
and refitted when the weights change, and its latents decode closer to the data than N(0, I)'s."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import vaelab
from conftest import png, run_cli
from vaelab import latent_density as density_module
from vaelab.config import PLAIN_TRAINING
from vaelab.errors import VaelabError
from vaelab.latent_density import DENSITY_FILE, LatentDensity, fit_latent_density, latent_density
from vaelab.runs import open_run

MEANS = torch.tensor([[-4.0, 0.0, 1.0], [4.0, 2.0, -1.0]], dtype=torch.float64)
COVS = torch.stack([torch.diag(torch.tensor([1.0, 0.25, 0.5])), torch.tensor([[1.0, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 0.3]])]).double()  # fmt: skip
WEIGHTS = torch.tensor([0.3, 0.7], dtype=torch.float64)
KNOWN = LatentDensity(WEIGHTS, MEANS, torch.linalg.cholesky(COVS))


def test_the_fit_recovers_a_known_mixture_and_its_draws_follow_it() -> None:
    n = 20_000
    z = KNOWN.sample(n, torch.Generator().manual_seed(1)).double()
    share_first = (z[:, 0] < 0).double().mean()
    # the draws: component shares within 4 binomial standard errors, means within 4 standard errors
    assert abs(share_first - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)
    first = z[z[:, 0] < 0]
    assert torch.allclose(first.mean(0), MEANS[0], atol=4 * math.sqrt(1.0 / len(first)))
    assert torch.allclose(torch.cov(first.T), COVS[0], atol=0.05)
    fitted = fit_latent_density(z.float(), components=2, seed=0)
    order = fitted.means[:, 0].argsort()  # components come in any order
    assert torch.allclose(fitted.weights[order], WEIGHTS, atol=0.02)
    assert torch.allclose(fitted.means[order], MEANS, atol=0.05)
    covs = fitted.scale_tril @ fitted.scale_tril.transpose(1, 2)
    assert torch.allclose(covs[order], COVS, atol=0.06)
    # the density: a mixture's log_prob is the log of the weighted sum of the Gaussians' densities
    point = torch.tensor([[0.5, 1.0, 0.0]], dtype=torch.float64)
    by_hand = sum(
        w * torch.distributions.MultivariateNormal(m, c).log_prob(point).exp()
        for w, m, c in zip(WEIGHTS, MEANS, COVS)
    )
    assert KNOWN.log_prob(point).item() == pytest.approx(math.log(by_hand.item()), rel=1e-9)


def test_fitting_takes_fewer_components_than_points_and_refuses_nonsense() -> None:
    codes = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [3.0, 1.0]])
    assert len(fit_latent_density(codes, components=10).weights) == 2  # at least 2 latents per component
    constant = torch.zeros(50, 3)  # an unused coordinate (here all) must not make a covariance singular
    assert torch.isfinite(fit_latent_density(constant, components=1).scale_tril).all()
    with pytest.raises(VaelabError, match="components must be at least 1"):
        fit_latent_density(codes, components=0)
    with pytest.raises(VaelabError, match="at least 2 images"):
        fit_latent_density(codes[:1])


def test_the_density_is_saved_in_the_run_and_fitted_again_when_the_weights_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "ae"
    settings = {
        "model": "ae",
        "arch": "mlp",
        "latent_dim": 4,
        "classes": "0,1",
        "device": "cpu",
        "progress": False,
    }
    vaelab.train(run, epochs=1, **settings)
    model, config = open_run(run, "cpu")
    first = latent_density(run, model, config, components=3)
    assert (run / DENSITY_FILE).is_file() and len(first.weights) == 3
    fits = []
    real_fit = density_module.fit_latent_density
    monkeypatch.setattr(
        density_module, "fit_latent_density", lambda *a, **k: fits.append(len(a[0])) or real_fit(*a, **k)
    )
    again = latent_density(run, model, config, components=3)
    assert not fits and torch.equal(again.means, first.means)  # read back, not fitted
    latent_density(run, model, config, components=4)
    assert len(fits) == 1  # other settings: fitted again
    labels = vaelab.load_images("mnist-mini", "train").labels
    assert fits[0] == int((labels <= 1).sum())  # the latents of the classes it trained on, 0 and 1
    vaelab.train(run, resume=True, epochs=2, progress=False)  # new weights
    model, config = open_run(run, "cpu")
    latent_density(run, model, config, components=4)
    assert len(fits) == 2
    (run / DENSITY_FILE).write_bytes(b"not a safetensors file")
    assert len(latent_density(run, model, config, components=4).weights) == 4 and len(fits) == 3


def test_sample_from_the_fitted_density_on_the_cli(ae_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "fitted.png"
    code, result, _ = run_cli(
        ["sample", str(ae_run), "--latents", "fitted", "-n", "16", "-o", str(out)], capsys
    )
    assert code == 0 and result["latents"] == "fitted" and Path(result["density"]).is_file()
    first = png(out)
    assert first.std() > 10  # a PNG that decodes, not a blank grid
    code, _, _ = run_cli(["sample", str(ae_run), "--latents", "fitted", "-n", "16", "-o", str(out)], capsys)
    assert np.array_equal(png(out), first)  # same seed, same images
    code, _, err = run_cli(["sample", str(ae_run), "--latents", "fitted", "--components", "0"], capsys)
    assert code == 2 and "components must be at least 1" in err
    with pytest.raises(VaelabError, match="latents 'gmm' is not one of: prior, fitted"):
        vaelab.sample(ae_run, latents="gmm", out=tmp_path / "x.png")


def test_an_ae_generates_digits_from_the_fitted_density_not_from_the_prior(tmp_path: Path, capsys) -> None:
    run = tmp_path / "ae16"
    vaelab.train(run, model="ae", latent_dim=16, epochs=4, device="cpu", progress=False, **PLAIN_TRAINING)
    code, result, _ = run_cli(["evaluate", str(run), "--n-images", "500"], capsys)
    # measured 1,102 from N(0, I) against 121 from the fitted density (train vs test images: 17)
    assert code == 0 and result["fd_fitted"] < 0.25 * result["fd"]
