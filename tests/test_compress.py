"""Compressing images to latent codes and back."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vaelab
from conftest import run_cli, write_images
from vaelab.apps.compress import dequantize, quantize
from vaelab.runs import weights_hash


def test_int8_codes_are_within_half_a_step() -> None:
    codes = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32) * [1, 2, 3, 4, 5, 6, 7, 0]
    values, extra = quantize(codes, "int8")
    assert values.dtype == np.int8
    restored = dequantize(values, {"dtype": "int8", **extra})
    assert (np.abs(restored - codes) <= np.asarray(extra["scale"]) / 2 + 1e-6).all()


def test_compress_and_decompress_a_dataset(vae_run: Path, tmp_path: Path, capsys) -> None:
    file = tmp_path / "test.vlz"
    code, result, _ = run_cli(["compress", str(vae_run), "-o", str(file), "--dtype", "float16"], capsys)
    assert code == 0 and result["n_images"] == 2000
    assert result["code_bytes_per_image"] == 4  # two float16 numbers
    assert result["bytes_per_image"] == file.stat().st_size / 2000 < 5  # the header is shared
    assert result["ratio_vs_png"] > 20 and 5 < result["psnr"] < 30
    assert result["smallest_jpeg_bytes_per_image"] > 300  # JPEG cannot get near a latent code's size
    assert result["codec_images"] == 500  # JPEG and WebP on a spread of the 2,000: 0.8% from all (benchmarks)
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
    assert code == 0 and result["code_bytes_per_image"] == 2 and result["codec_images"] == 3
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
    digits = tmp_path / "digits"
    digits.mkdir()
    for i, image in enumerate(vaelab.load_dataset("mnist-mini", "test")[0][:100].numpy()):
        Image.fromarray(image[0]).save(digits / f"{i:03d}.png")
    common = ["compress", str(vae_run), "--input", str(digits)]
    _, result16, _ = run_cli([*common, "-o", str(tmp_path / "a.vlz"), "--dtype", "float16"], capsys)
    _, result8, _ = run_cli([*common, "-o", str(tmp_path / "b.vlz"), "--dtype", "int8"], capsys)
    assert abs(result16["psnr"] - result8["psnr"]) < 0.5  # 256 levels per dimension lose almost nothing
    assert result8["bytes_per_image"] < result16["bytes_per_image"]


def test_entropy_coded_files_round_trip_and_shrink_with_the_step(
    vae_run: Path, tmp_path: Path, capsys
) -> None:
    files = write_images(tmp_path / "imgs", 64, (28, 28))
    fine, coarse = tmp_path / "fine.vlz", tmp_path / "coarse.vlz"
    code, result, _ = run_cli(["compress", str(vae_run), "--input", str(tmp_path / "imgs"), "-o", str(fine),
                               "--step", "0.1"], capsys)  # fmt: skip
    assert code == 0 and result["dtype"] == "entropy" and (vae_run / "entropy_prior.safetensors").is_file()
    assert result["file_bytes"] == fine.stat().st_size
    assert result["header_bytes"] < 2 * 64 + 40  # binary fields plus the deflated names
    curve = result["rate_distortion"]
    assert [p["step"] for p in curve] == sorted(p["step"] for p in curve)
    sizes = [p["bytes_per_image"] for p in curve]
    assert sizes == sorted(sizes, reverse=True)  # a coarser step never costs more
    assert curve[0]["psnr"] >= curve[-1]["psnr"]
    assert result["smallest_webp_bytes_per_image"] > 40  # WebP cannot get near a 2-D code's size
    code, result, _ = run_cli(["compress", str(vae_run), "--input", str(tmp_path / "imgs"), "-o", str(coarse),
                               "--step", "2", "--no-report"], capsys)  # fmt: skip
    assert code == 0 and coarse.stat().st_size < fine.stat().st_size

    out = tmp_path / "restored"
    code, result, _ = run_cli(["decompress", str(vae_run), str(fine), "-o", str(out)], capsys)
    assert code == 0 and result["dtype"] == "entropy"
    assert sorted(p.name for p in out.iterdir()) == sorted(f.name for f in files)
    # the decoded image is the model's decoding of the quantized code: within a step of the true one
    model = vaelab.load(vae_run)
    original = np.asarray(Image.open(files[5]), np.float32) / 255
    mu, _ = model.encode(torch.from_numpy(original)[None, None])
    expected = model.decode(mu).squeeze().detach().numpy()
    restored = np.asarray(Image.open(out / files[5].name), np.float32) / 255
    assert np.abs(restored - expected).mean() < 0.05


def test_a_damaged_entropy_prior_in_the_run_is_fitted_again(vae_run: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(vae_run, run)
    (run / "entropy_prior.safetensors").unlink(missing_ok=True)
    assert run_cli(["compress", str(run), "-o", str(tmp_path / "a.vlz"), "--no-report"], capsys)[0] == 0
    fitted = (run / "entropy_prior.safetensors").read_bytes()
    (run / "entropy_prior.safetensors").write_bytes(b"junk" * 3)
    assert run_cli(["compress", str(run), "-o", str(tmp_path / "b.vlz"), "--no-report"], capsys)[0] == 0
    assert (run / "entropy_prior.safetensors").read_bytes() == fitted  # the same fit again, in place
    assert (tmp_path / "b.vlz").read_bytes() == (tmp_path / "a.vlz").read_bytes()


def test_a_damaged_entropy_file_is_refused_and_version_1_files_still_open(
    vae_run: Path, tmp_path: Path, capsys
) -> None:
    file = tmp_path / "a.vlz"
    assert run_cli(["compress", str(vae_run), "-o", str(file), "--no-report"], capsys)[0] == 0
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x10  # one flipped bit in the coded stream
    file.write_bytes(bytes(data))
    code, _, err = run_cli(["decompress", str(vae_run), str(file), "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and "damaged" in err and not (tmp_path / "out").exists()

    codes = np.array([[0.5, -1.0], [1.5, 0.25]], np.float16)  # a file in the first release's layout
    header = {"version": 1, "model_sha256": weights_hash(vae_run), "shape": [1, 28, 28], "latent_dim": 2,
              "dtype": "float16", "count": 2, "names": ["a.png", "b.png"]}  # fmt: skip
    head = json.dumps(header).encode()
    old = tmp_path / "old.vlz"
    old.write_bytes(b"VAELATNT" + struct.pack("<I", len(head)) + head + codes.tobytes())
    code, _, _ = run_cli(["decompress", str(vae_run), str(old), "-o", str(tmp_path / "v1")], capsys)
    assert code == 0 and sorted(p.name for p in (tmp_path / "v1").iterdir()) == ["a.png", "b.png"]
    expected = vaelab.load(vae_run).decode(torch.tensor([[0.5, -1.0]])).squeeze().detach().numpy() * 255
    assert np.abs(np.asarray(Image.open(tmp_path / "v1" / "a.png"), float) - expected).max() <= 1


@pytest.mark.parametrize(
    "names",
    [
        ["00000.png", "00001.png", "00010.png"],
        ["a.png", "a.png", "b c.png"],
        ["één.png", "x" * 300 + ".png", "y.png"],
    ],
)
def test_file_names_are_packed_without_loss(names: list[str]) -> None:
    from vaelab.apps.compress import pack_names, unpack_names

    assert unpack_names(pack_names(names), len(names)) == names


@pytest.mark.parametrize(
    ("names", "most"),
    [
        ([f"digit_{i:04d}.png" for i in range(64)], 16),  # one numbered run: prefix, start, suffix
        ([f"img{i}.jpg" for i in range(7, 120)], 16),  # unpadded numbers that gain digits
        ([f"scan 2024-{i:03d}.tif" for i in range(999, 1003)], 24),
        ([f"digit_{i:04d}.png" for i in range(0, 128, 2)], 80),  # gaps: front-coded, a byte a name
        (["a7.png", "a8.png", "b9.png"], 40),
    ],
)
def test_numbered_names_take_a_few_bytes_and_come_back_exactly(names: list[str], most: int) -> None:
    from vaelab.apps.compress import pack_names, unpack_names

    packed = pack_names(names)
    assert len(packed) <= most and unpack_names(packed, len(names)) == names
