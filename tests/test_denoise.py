"""Synthetic noise and the denoising command."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import vaelab
from conftest import run_cli
from vaelab.data.noise import parse_noise

N = 200_000  # pixels per statistical check


def test_gaussian_noise_has_the_requested_spread() -> None:
    clean = torch.full((N,), 0.5)
    noisy = parse_noise("gaussian:0.05").apply(clean, torch.Generator().manual_seed(0))
    diff = noisy - clean  # at 10 sigma from the clip limits, clipping never happens
    assert abs(diff.mean().item()) < 4 * 0.05 / math.sqrt(N)
    assert diff.std().item() == pytest.approx(0.05, rel=0.01)


def test_salt_and_pepper_hits_the_requested_share_half_white() -> None:
    clean = torch.full((N,), 0.5)
    noisy = parse_noise("salt-pepper:0.2").apply(clean, torch.Generator().manual_seed(1))
    hit = noisy != 0.5
    assert hit.float().mean().item() == pytest.approx(0.2, abs=4 * math.sqrt(0.2 * 0.8 / N))
    assert set(noisy[hit].unique().tolist()) == {0.0, 1.0}
    assert (noisy[hit] == 1).float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_mask_drops_the_requested_share() -> None:
    noisy = parse_noise("mask:0.3").apply(torch.ones(N), torch.Generator().manual_seed(2))
    assert (noisy == 0).float().mean().item() == pytest.approx(0.3, abs=4 * math.sqrt(0.3 * 0.7 / N))


@pytest.mark.parametrize("spec", ["gauss:0.3", "gaussian", "gaussian:abc", "mask:1.5", "salt-pepper:-1", ""])
def test_bad_noise_specs_are_refused(spec: str) -> None:
    with pytest.raises(vaelab.VaelabError, match="noise"):
        parse_noise(spec)


def test_a_denoising_autoencoder_cleans_images(tmp_path: Path, capsys) -> None:
    run = tmp_path / "dae"
    code, _, _ = run_cli(["train", "--model", "ae", "--latent-dim", "32", "--noise", "gaussian:0.3",
                          "--epochs", "4", "--batch-size", "32", "--out", str(run)], capsys)  # fmt: skip
    assert code == 0
    code, result, _ = run_cli(
        ["denoise", str(run), "--n-images", "300", "-o", str(tmp_path / "d.png")], capsys
    )
    assert code == 0 and result["noise"] == "gaussian:0.3" and result["n_images"] == 300
    assert result["psnr"]["noisy"] == pytest.approx(13.3, abs=0.5)  # what sigma 0.3 does to MNIST digits
    assert result["psnr"]["model"] > result["psnr"]["noisy"] + 3
    assert result["ssim"]["model"] > result["ssim"]["noisy"]
    assert (tmp_path / "d.png").is_file()


def test_denoise_needs_a_noise_spec(vae_run: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["denoise", str(vae_run), "-o", str(tmp_path / "d.png")], capsys)
    assert code == 2 and "give noise" in err
    code, _, err = run_cli(["train", "--noise", "blur:2", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "does not parse" in err and not (tmp_path / "r").exists()
