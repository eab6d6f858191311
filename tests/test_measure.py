"""`vaelab evaluate` end to end: eval.json, what is absent and why, sample quality."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli, write_images
from vaelab.cli import main

D, P, SIGMA = 2, 6, 0.5


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
    # Grey digits under the Bernoulli loss have no normalized density: no bits per dimension.
    assert result["bits_per_dim"] is None and "no bits per dimension" in result["note"]
    assert 0 < result["png_bits_per_dim"] < 8 and 0 < result["ssim"] <= 1


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
