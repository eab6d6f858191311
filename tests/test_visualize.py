"""Training, then every command that draws a model: samples, reconstructions, walks, latent maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vaelab
from conftest import png, run_cli, write_images
from vaelab.cli import main


def test_train_then_every_viewing_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    code, result, _ = run_cli(
        ["train", "--model", "vae", "--arch", "mlp", "--latent-dim", "2", "--epochs", "2", "--loss", "bernoulli",
         "--binarize", "dynamic", "--batch-size", "128", "--lr", "0.001", "--seed", "1", "--device", "cpu",
         "--dataset", "mnist-mini", "--out", str(run)],
        capsys,
    )  # fmt: skip
    assert code == 0 and result["epochs"] == 2 and Path(result["model"]).is_file()
    assert result["val_loss"] < 300

    code, result, _ = run_cli(["sample", str(run), "-n", "16", "-o", str(tmp_path / "s.png")], capsys)
    assert code == 0 and result["n"] == 16
    samples = png(result["output"])
    assert samples.std() > 20  # digits on black, not a blank or uniform grid

    code, result, _ = run_cli(["reconstruct", str(run), "-n", "8", "-o", str(tmp_path / "r.png")], capsys)
    assert code == 0 and 0 < result["mse_per_pixel"] < 0.1
    assert png(result["output"]).shape[0] > png(result["output"]).shape[1] / 8  # two rows

    out = tmp_path / "i.png"
    code, result, _ = run_cli(
        ["interpolate", str(run), "--from-class", "1", "--to-class", "7", "--steps", "6", "--method", "slerp",
         "-o", str(out)],
        capsys,
    )  # fmt: skip
    assert code == 0 and result["steps"] == 6 and result["latent_distance"] > 0
    strip = png(out)
    assert strip.shape[1] > 5 * strip.shape[0]  # one row of six

    code, result, _ = run_cli(["latent-plot", str(run), "-o", str(tmp_path / "l.png")], capsys)
    assert code == 0 and result["n_points"] == 2000 and result["projection"] == "none"
    assert png(result["output"]).std() > 10

    code, result, _ = run_cli(["latent-grid", str(run), "-n", "5", "-o", str(tmp_path / "g.png")], capsys)
    assert code == 0 and result["x_range"][0] < result["x_range"][1]


def test_interpolate_without_ends_walks_from_a_1_to_a_7(
    vae_run: Path, tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    code, default, _ = run_cli(["interpolate", str(vae_run), "-o", str(tmp_path / "d.png")], capsys)
    assert code == 0 and (default["from_class"], default["to_class"]) == (1, 7)
    code, _, _ = run_cli(
        ["interpolate", str(vae_run), "--from-class", "1", "--to-class", "7", "-o", str(tmp_path / "g.png")],
        capsys,
    )
    assert code == 0 and np.array_equal(png(tmp_path / "d.png"), png(tmp_path / "g.png"))
    with caplog.at_level("INFO", logger="vaelab.apps.visualize"):  # said when picked, not when given
        vaelab.interpolate(vae_run, out=tmp_path / "e.png")
        vaelab.interpolate(vae_run, out=tmp_path / "f.png", from_class=3, to_class=8)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("from a typical")]
    assert len(said) == 1 and said[0].startswith("from a typical 1 to a typical 7 (test images ")


def test_interpolate_on_named_classes_names_them(tmp_path: Path, capsys) -> None:
    write_images(tmp_path / "data" / "cat", 6, (12, 12))
    write_images(tmp_path / "data" / "dog", 6, (12, 12), seed=1)
    run = tmp_path / "run"
    vaelab.train(
        run, dataset=f"folder:{tmp_path / 'data'}", arch="mlp", latent_dim=2, epochs=1, progress=False
    )
    code, result, _ = run_cli(["interpolate", str(run), "-o", str(tmp_path / "i.png")], capsys)
    assert code == 0 and (result["from_class"], result["to_class"]) == (0, 1)
    code = main(
        ["interpolate", str(run), "--from-class", "0", "--to-class", "5", "-o", str(tmp_path / "j.png")]
    )
    assert code == 2 and capsys.readouterr().err.strip().endswith(
        "class 5 has no test images; known classes: 0 (cat), 1 (dog)"
    )
    assert not (tmp_path / "j.png").exists()
    # by name, as the folder names them: the same ends as by number
    code, result, _ = run_cli(
        ["interpolate", str(run), "--from-class", "dog", "--to-class", "cat", "-o", str(tmp_path / "n.png")],
        capsys,
    )
    assert code == 0 and (result["from_class"], result["to_class"]) == (1, 0)
    vaelab.interpolate(run, out=tmp_path / "m.png", from_class=1, to_class=0)
    assert (tmp_path / "n.png").read_bytes() == (tmp_path / "m.png").read_bytes()
    code = main(
        ["interpolate", str(run), "--from-class", "dgo", "--to-class", "cat", "-o", str(tmp_path / "k.png")]
    )
    assert code == 2 and capsys.readouterr().err.strip().endswith(
        "no class is named 'dgo'; known classes: 0 (cat), 1 (dog)"
    )


def test_samples_go_to_a_folder_of_pngs_or_an_array_with_their_latents(
    vae_run: Path, tmp_path: Path, capsys
) -> None:
    import torch

    arrays = {}
    for out in ("s.npy", "s.npz", "folder"):
        code, result, _ = run_cli(
            ["sample", str(vae_run), "-n", "12", "--seed", "3", "-o", str(tmp_path / out)], capsys
        )
        assert code == 0 and result["n"] == 12
        arrays[out] = tmp_path / out
    images = np.load(arrays["s.npy"])
    saved = np.load(arrays["s.npz"])
    assert images.shape == (12, 1, 28, 28) and images.dtype == np.uint8 and images.std() > 10
    assert np.array_equal(saved["images"], images) and saved["latents"].shape == (12, 2)
    files = sorted(arrays["folder"].iterdir())
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(12)]
    assert np.array_equal(np.stack([np.asarray(Image.open(f))[None] for f in files]), images)
    # the latents are the ones drawn, as model.sample draws them: the grid's images are as before
    model = vaelab.load(vae_run)
    with torch.no_grad():
        again = model.generate(torch.from_numpy(saved["latents"]))
        drawn = model.sample(12, torch.Generator().manual_seed(3))
    assert np.abs((again.numpy() * 255).round() - images).max() <= 1
    assert np.abs((drawn.numpy() * 255).round() - images).max() <= 1
    # a folder holding them already is refused before any work, and so is an unknown suffix
    code = main(["sample", str(vae_run), "-n", "12", "-o", str(arrays["folder"])])
    assert code == 2 and "00000.png already exists; choose an empty or new folder" in capsys.readouterr().err
    code, _, err = run_cli(["sample", str(vae_run), "-n", "1025", "-o", str(tmp_path / "big.png")], capsys)
    assert code == 0 and "a grid of 1025 images is one picture of 33 x 32 of them; -o FOLDER" in err
    code, _, err = run_cli(["sample", str(vae_run), "-n", "1024", "-o", str(tmp_path / "fine.png")], capsys)
    assert code == 0 and "a grid of" not in err
    code = main(["sample", str(vae_run), "-o", str(tmp_path / "s.gif")])
    assert (
        code == 2
        and ".tiff (a picture of the grid), .npy or .npz (an array), or a folder (a name without a suffix)"
        in capsys.readouterr().err
    )


def test_a_folder_of_three_images_has_a_latent_plot_grid_and_report(tmp_path: Path, capsys) -> None:
    # one test image: no principal plane to speak of, but pictures, not an IndexError
    write_images(tmp_path / "data", 3, (12, 12))
    run = tmp_path / "run"
    vaelab.train(
        run, dataset=f"folder:{tmp_path / 'data'}", arch="mlp", latent_dim=4, epochs=1, progress=False
    )
    code, result, _ = run_cli(["latent-plot", str(run), "-o", str(tmp_path / "l.png")], capsys)
    assert code == 0 and result["n_points"] == 1 and png(result["out"]).std() > 10
    code, result, _ = run_cli(["latent-grid", str(run), "-n", "3", "-o", str(tmp_path / "g.png")], capsys)
    assert code == 0 and result["x_range"][1] - result["x_range"][0] == pytest.approx(2.0)
    code, result, _ = run_cli(["report", str(run)], capsys)
    assert code == 0 and Path(result["out"]).is_file()


def test_reconstruct_shows_the_first_n_image_files_given_in_their_order(
    vae_run: Path, tmp_path: Path, capsys
) -> None:
    for name, value in (("black.png", 0), ("white.png", 255), ("grey.png", 128)):
        Image.fromarray(np.full((28, 28), value, dtype=np.uint8)).save(tmp_path / name)
    for first, second in (("black", "white"), ("white", "black")):
        files = [str(tmp_path / f"{name}.png") for name in (first, second, "grey")]
        out = tmp_path / f"{first}-first.png"
        code, result, _ = run_cli(
            ["reconstruct", str(vae_run), "--input", *files, "-n", "2", "-o", str(out)], capsys
        )
        assert code == 0 and result["n"] == 2
        grid = png(out)  # the two images above their reconstructions
        top = grid[: grid.shape[0] // 2]
        left, right = top[:, : top.shape[1] // 2].mean(), top[:, top.shape[1] // 2 :].mean()
        assert (left < 60 and right > 200) if first == "black" else (left > 200 and right < 60), (left, right)


def test_interpolate_between_two_image_files(vae_run: Path, tmp_path: Path, capsys) -> None:
    for name, value in (("a.png", 0), ("b.png", 255)):
        Image.fromarray(np.full((28, 28), value, dtype=np.uint8)).save(tmp_path / name)
    code, result, _ = run_cli(
        ["interpolate", str(vae_run), "--from-image", str(tmp_path / "a.png"), "--to-image", str(tmp_path / "b.png"),
         "-o", str(tmp_path / "i.png")],
        capsys,
    )  # fmt: skip
    assert code == 0 and result["steps"] == 10


def test_latent_plot_of_a_wide_latent_says_pca(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert (
        main(["train", "--arch", "mlp", "--latent-dim", "5", "--epochs", "1", "--out", str(run), "--quiet"])
        == 0
    )
    code, result, _ = run_cli(["latent-plot", str(run), "-o", str(tmp_path / "l.png")], capsys)
    assert code == 0 and result["projection"] == "pca"


@pytest.mark.parametrize("size", [64, 128, 256])
def test_colour_folders_of_64_to_256_px_train_sample_and_reconstruct(
    size: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vaelab.data import shapes

    folder = tmp_path / "colour"
    folder.mkdir()
    factors = {name: values[:10] for name, values in shapes.factor_table("test").items()}
    for i, image in enumerate(shapes.render(factors, size).permute(0, 2, 3, 1).numpy()):
        Image.fromarray(image).save(folder / f"{i}.png")
    run = tmp_path / "run"
    code, result, _ = run_cli(
        ["train", "-o", str(run), "--dataset", f"folder:{folder}", "--arch", "conv", "--hidden", "0",
         "--channels", "8", "--loss", "dlogistic", "--epochs", "1", "--batch-size", "4", "--device", "cpu"],
        capsys,
    )  # fmt: skip
    assert code == 0 and np.isfinite(result["val_loss"])
    recorded = json.loads((run / "config.json").read_text())["train"]
    assert recorded["lr"] == (1e-3 if size <= 64 else 5e-4)  # the default rate halves above 64 x 64 pixels
    assert recorded["mean_scale"] == pytest.approx(0.0498, abs=1e-4)  # dlogistic's means: a fixed scale
    code, result, _ = run_cli(["sample", str(run), "-n", "4", "-o", str(tmp_path / "s.png")], capsys)
    assert code == 0
    with Image.open(tmp_path / "s.png") as grid:
        assert grid.mode == "RGB" and grid.width >= 2 * size  # 2 x 2 colour images
    code, result, _ = run_cli(["reconstruct", str(run), "-n", "2", "-o", str(tmp_path / "r.png")], capsys)
    assert code == 0 and png(tmp_path / "r.png").shape[0] >= 2 * size
