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
    code, _, _ = run_cli(["train", "--model", "ae", "--latent-dim", "32", "--noise", "gaussian:0.3", "--arch", "conv",
                          "--hidden", "0", "--epochs", "4", "--batch-size", "32", "--out", str(run)], capsys)  # fmt: skip
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
    assert code == 2 and "not trained with noise; give the noise to add (--noise gaussian:0.3, say)" in err
    code, _, err = run_cli(["train", "--noise", "blur:2", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "does not parse" in err and not (tmp_path / "r").exists()


def test_corrupt_reports_the_pixels_it_replaced() -> None:
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    for spec in ("salt-pepper:0.3", "mask:0.4"):
        noisy, hit = parse_noise(spec).corrupt(images, torch.Generator().manual_seed(4))
        assert torch.equal(noisy[~hit], images[~hit])  # untouched pixels keep their values
        assert torch.equal(noisy, parse_noise(spec).apply(images, torch.Generator().manual_seed(4)))
    noisy, hit = parse_noise("mask:0.4").corrupt(images, torch.Generator().manual_seed(4))
    assert bool((noisy[hit] == 0).all())


def test_inpainting_restores_a_smooth_image_from_dropped_pixels() -> None:
    from vaelab.apps.denoise import inpaint

    y, x = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
    smooth = (0.25 + 0.5 * x * y)[None, None].repeat(2, 3, 1, 1).double()  # a bilinear ramp
    noisy, hit = parse_noise("mask:0.3").corrupt(smooth, torch.Generator().manual_seed(5))
    restored = inpaint(noisy.numpy(), hit.numpy())
    assert restored.shape == smooth.shape
    # a biharmonic fill follows a bilinear surface closely (edges worst); every dropped zero was
    # at least 0.25 away from it
    error = abs(restored - smooth.numpy())
    assert error.max() < 0.05 and error.mean() < 0.005
    assert abs(noisy - smooth)[hit].min().item() >= 0.25


def test_untouched_pixels_are_the_ones_the_noise_cannot_have_written() -> None:
    images = torch.rand(3, 1, 10, 10, generator=torch.Generator().manual_seed(6)) * 0.8 + 0.1
    for spec in ("salt-pepper:0.3", "mask:0.4"):
        noise = parse_noise(spec)
        noisy, hit = noise.corrupt(images, torch.Generator().manual_seed(7))
        assert torch.equal(noise.untouched(noisy), ~hit)  # no clean pixel is exactly 0 or 1 here
    assert parse_noise("gaussian:0.1").untouched(images) is None
