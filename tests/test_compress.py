"""Compressing images to latent codes and back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vaelab
from conftest import run_cli, write_images
from vaelab.apps.compress import dequantize, quantize


def test_int8_codes_are_within_half_a_step() -> None:
    codes = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32) * [1, 2, 3, 4, 5, 6, 7, 0]
    values, extra = quantize(codes, "int8")
    assert values.dtype == np.int8
    restored = dequantize(values, {"dtype": "int8", **extra})
    assert (np.abs(restored - codes) <= np.asarray(extra["scale"]) / 2 + 1e-6).all()


def test_compress_and_decompress_a_dataset(vae_run: Path, tmp_path: Path, capsys) -> None:
    file = tmp_path / "test.vlz"
    code, result, _ = run_cli(["compress", str(vae_run), "-o", str(file)], capsys)
    assert code == 0 and result["n_images"] == 2000
    assert result["code_bytes_per_image"] == 4  # two float16 numbers
    assert result["bytes_per_image"] == file.stat().st_size / 2000 < 5  # the header is shared
    assert result["ratio_vs_png"] > 20 and 5 < result["psnr"] < 30
    assert result["smallest_jpeg_bytes_per_image"] > 300  # JPEG cannot get near a latent code's size
    assert Path(result["rd_plot"]).is_file()

    out = tmp_path / "restored"
    code, result, _ = run_cli(["decompress", str(vae_run), str(file), "-o", str(out)], capsys)
    assert code == 0 and result["n_images"] == 2000
    restored = np.asarray(Image.open(out / "00007.png"))
    model = vaelab.load(vae_run)
    images, _ = vaelab.load_dataset("mnist-mini", "test")
    mu, _ = model.encode(images[7:8].float() / 255)
    expected = (model.decode(mu.half().float()) * 255).round().squeeze().detach().numpy()
    assert np.abs(restored.astype(float) - expected).max() <= 1


def test_file_names_survive_and_decompressing_needs_the_same_model(
    vae_run: Path, ae_run: Path, tmp_path: Path, capsys
) -> None:
    files = write_images(tmp_path / "imgs", 3, (28, 28))
    file = tmp_path / "mine.vlz"
    code, result, _ = run_cli(
        ["compress", str(vae_run), "--input", *map(str, files), "-o", str(file), "--dtype", "int8"], capsys
    )
    assert code == 0 and result["code_bytes_per_image"] == 2
    code, _, err = run_cli(["decompress", str(ae_run), str(file), "-o", str(tmp_path / "x")], capsys)
    assert code == 2 and "another model" in err and not (tmp_path / "x").exists()
    code, _, _ = run_cli(["decompress", str(vae_run), str(file), "-o", str(tmp_path / "y")], capsys)
    assert code == 0 and sorted(p.name for p in (tmp_path / "y").iterdir()) == [f.name for f in files]
    code, _, err = run_cli(["decompress", str(vae_run), str(file), "-o", str(tmp_path / "y")], capsys)
    assert code == 2 and "already exists" in err


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_files_are_refused(vae_run: Path, tmp_path: Path, damage: str, capsys) -> None:
    file = tmp_path / "a.vlz"
    assert run_cli(["compress", str(vae_run), "-o", str(file), "--no-report"], capsys)[0] == 0
    data = file.read_bytes()
    file.write_bytes(data[:-10] if damage == "truncate" else b"PK\x03\x04" + data[4:])
    code, _, err = run_cli(["decompress", str(vae_run), str(file), "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and (
        "truncated" in err if damage == "truncate" else "not a vaelab compressed file" in err
    )
    assert not (tmp_path / "out").exists()


def test_int8_round_trip_through_the_model_is_close(vae_run: Path, tmp_path: Path, capsys) -> None:
    _, result16, _ = run_cli(["compress", str(vae_run), "-o", str(tmp_path / "a.vlz")], capsys)
    _, result8, _ = run_cli(
        ["compress", str(vae_run), "-o", str(tmp_path / "b.vlz"), "--dtype", "int8"], capsys
    )
    assert abs(result16["psnr"] - result8["psnr"]) < 0.5  # 256 levels per dimension lose almost nothing
    assert result8["bytes_per_image"] < result16["bytes_per_image"]
