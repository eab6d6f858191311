"""`vaelab embed`: latent means of a dataset or of image files, out to .npy, .npz or .csv."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vaelab
from conftest import run_cli, write_images
from vaelab.cli import main


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv"])
def test_embed_writes_the_latent_means(vae_run: Path, tmp_path: Path, suffix: str, capsys) -> None:
    out = tmp_path / f"emb{suffix}"
    code, result, _ = run_cli(["embed", str(vae_run), "-o", str(out)], capsys)
    assert code == 0 and result["n_images"] == 2000 and result["latent_dim"] == 2
    images, labels = vaelab.load_dataset("mnist-mini", "test")
    mu, _ = vaelab.load(vae_run).encode(images[:5].float() / 255)
    if suffix == ".npy":
        latents = np.load(out)
    elif suffix == ".npz":
        with np.load(out) as data:
            latents = data["latents"]
            assert np.array_equal(data["labels"], labels.numpy())
    else:
        rows = list(csv.reader(out.read_text().splitlines()))
        assert rows[0] == ["name", "label", "z0", "z1"] and len(rows) == 2001
        assert rows[1][1] == str(int(labels[0]))
        latents = np.array([[float(v) for v in row[2:]] for row in rows[1:]])
    assert latents.shape == (2000, 2)
    np.testing.assert_allclose(latents[:5], mu.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_embed_image_files_keeps_their_names(vae_run: Path, tmp_path: Path, capsys) -> None:
    files = write_images(tmp_path / "imgs", 3, (28, 28))
    out = tmp_path / "emb.csv"
    code, result, _ = run_cli(
        ["embed", str(vae_run), "--input", str(tmp_path / "imgs"), "-o", str(out)], capsys
    )
    assert code == 0 and result["n_images"] == 3 and not result["labels"]
    assert main(["embed", str(vae_run), "--input", str(tmp_path / "imgs"), "-o", str(out), "--quiet"]) == 0
    latent_dim = result["latent_dim"]
    assert capsys.readouterr().out == f"wrote the {latent_dim}-D latents of 3 images to {out}\n"
    assert [row[0] for row in list(csv.reader(out.read_text().splitlines()))[1:]] == [str(f) for f in files]


def test_embed_bad_input(vae_run: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["embed", str(vae_run), "-o", str(tmp_path / "e.txt")], capsys)
    assert code == 2 and ".npy, .npz, .csv" in err
    code, _, err = run_cli(
        ["embed", str(vae_run), "--input", str(tmp_path / "none.png"), "-o", str(tmp_path / "e.npy")], capsys
    )
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    code, _, err = run_cli(
        ["embed", str(vae_run), "--input", str(tmp_path / "empty"), "-o", str(tmp_path / "e.npy")], capsys
    )
    assert code == 2 and err.strip().endswith(
        f"input {tmp_path / 'empty'} holds no images (.bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp); "
        "give image files or folders that hold them"
    )
    assert not (tmp_path / "e.npy").exists()


def test_images_of_another_size_and_mode_are_converted_to_what_the_model_takes(
    vae_run: Path, tmp_path: Path, capsys
) -> None:
    Image.fromarray(np.full((10, 12), 77, dtype=np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.full((40, 30, 3), 77, dtype=np.uint8)).save(tmp_path / "colour.png")
    out = tmp_path / "e.npy"
    code, result, _ = run_cli(
        [
            "embed",
            str(vae_run),
            "--input",
            str(tmp_path / "small.png"),
            str(tmp_path / "colour.png"),
            "-o",
            str(out),
        ],
        capsys,
    )
    assert code == 0 and result["n_images"] == 2
    mu, _ = vaelab.load(vae_run).encode(torch.full((1, 1, 28, 28), 77 / 255))  # a flat image stays flat
    np.testing.assert_allclose(np.load(out), mu.detach().numpy().repeat(2, axis=0), rtol=1e-4, atol=1e-5)


def test_image_files_over_the_memory_budget_are_decoded_once_into_a_file(
    vae_run: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `vaelab embed RUN photos/` read every file into memory, however many: now files past the
    # budget are decoded once into $VAELAB_CACHE/folders, as a dataset folder is, and read from it.
    from vaelab.data.cache import folder_cache_dir

    inputs = tmp_path / "photos"
    write_images(inputs, 12, (28, 28))
    write_images(inputs / "colour", 3, (30, 20), mode="RGB")  # converted and resized either way
    in_memory = tmp_path / "memory.npy"
    code, _, err = run_cli(["embed", str(vae_run), "--input", str(inputs), "-o", str(in_memory)], capsys)
    assert code == 0, err
    monkeypatch.setattr("vaelab.data.imageset.available_memory", lambda: 2 * 14 * 28 * 28)  # 14 images
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    streamed = tmp_path / "streamed.npy"
    code, result, err = run_cli(["embed", str(vae_run), "--input", str(inputs), "-o", str(streamed)], capsys)
    assert code == 0 and result["n_images"] == 15, err
    np.testing.assert_allclose(np.load(streamed), np.load(in_memory), rtol=1e-5, atol=1e-6)
    (data,) = folder_cache_dir().glob("files-*.u8")
    assert data.stat().st_size == 15 * 28 * 28
    decoded_at = data.stat().st_mtime_ns
    code, _, _ = run_cli(["embed", str(vae_run), "--input", str(inputs), "-o", str(streamed)], capsys)
    assert code == 0 and data.stat().st_mtime_ns == decoded_at  # reused while the files are unchanged
    (inputs / "broken.png").write_bytes(b"not a png")  # one line naming it; no partial file left
    code, _, err = run_cli(
        ["embed", str(vae_run), "--input", str(inputs), "-o", str(tmp_path / "e.npy")], capsys
    )
    assert (
        code == 2
        and f"cannot read image {inputs / 'broken.png'}" in err
        and len(err.strip().splitlines()) == 1
    )
    assert sorted(p.name for p in folder_cache_dir().iterdir()) == [data.with_suffix(".json").name, data.name]


def test_commands_take_their_memory_budget_from_vaelab_max_memory(
    vae_run: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # commands have no --max-memory: $VAELAB_MAX_MEMORY sets their budget (and training's default)
    from vaelab.data.cache import folder_cache_dir

    inputs, out = tmp_path / "photos", str(tmp_path / "e.npy")
    write_images(inputs, 6, (28, 28))
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VAELAB_MAX_MEMORY", "1GB")  # 6 images fit: read into memory, nothing decoded to disk
    code, _, err = run_cli(["embed", str(vae_run), "--input", str(inputs), "-o", out], capsys)
    assert code == 0 and not list(folder_cache_dir().glob("files-*.u8")), err
    monkeypatch.setenv("VAELAB_MAX_MEMORY", "0")  # always from a decoded file
    code, result, err = run_cli(["embed", str(vae_run), "--input", str(inputs), "-o", out], capsys)
    assert code == 0 and result["n_images"] == 6, err
    (data,) = folder_cache_dir().glob("files-*.u8")
    assert data.stat().st_size == 6 * 28 * 28
    vaelab.train(tmp_path / "run", dataset=f"folder:{inputs}", arch="mlp", batch_size=4, epochs=1, device="cpu",
                 progress=False)  # fmt: skip
    assert len(list(folder_cache_dir().glob("folder-*.u8"))) == 1  # training streamed the folder too
    for bad in ("lots", "-1GB"):
        monkeypatch.setenv("VAELAB_MAX_MEMORY", bad)
        code, _, err = run_cli(["embed", str(vae_run), "--input", str(inputs), "-o", out], capsys)
        assert code == 2 and f"VAELAB_MAX_MEMORY={bad!r} is not a size" in err
        assert len(err.strip().splitlines()) == 1
