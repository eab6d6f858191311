"""Each command end to end through the real entry point, on small runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaelab.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict | None, str]:
    """Run `vaelab ARGS --json --quiet`; return exit code, the last stdout line as JSON, stderr."""
    code = main([*args, "--json", "--quiet"])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 else None), captured.err


def png(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("L"), dtype=np.float64)


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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--dataset", "nope", "--out", "{tmp}/r"], "unknown dataset 'nope'"),
        (["train", "--latent-dim", "0", "--out", "{tmp}/r"], "latent_dim must be at least 1"),
        (["train", "--dataset", "folder:{tmp}/missing", "--out", "{tmp}/r"], "is not a directory"),
        (["sample", "{tmp}", "-o", "{tmp}/s.png"], "is not a vaelab run"),
        (["interpolate", "{run}", "-o", "{tmp}/i.png"], "give from_class and to_class"),
        (
            ["interpolate", "{run}", "--from-class", "1", "--to-class", "12", "-o", "{tmp}/i.png"],
            "class 12 has no",
        ),
        (["sample", "{run}", "-n", "0", "-o", "{tmp}/s.png"], "n must be at least 1, got 0"),
        (["latent-grid", "{run16}", "-o", "{tmp}/g.png"], "needs a 2-D latent"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    args: list[str], message: str, tmp_path: Path, vae_run: Path, capsys, request
) -> None:
    run16 = tmp_path / "run16"
    if "{run16}" in args:
        assert main(["train", "--arch", "mlp", "--epochs", "1", "--out", str(run16), "--quiet"]) == 0
    filled = [a.format(tmp=tmp_path, run=vae_run, run16=run16) for a in args]
    code, _, err = run_cli(filled, capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob("*.png"))


def test_demo_writes_every_figure_and_an_index(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    code, result, _ = run_cli(["demo", "--out", str(out), "--epochs", "1", "--device", "cpu"], capsys)
    assert code == 0 and Path(result["index"]).is_file()
    html = Path(result["index"]).read_text()
    for name, path in result["figures"].items():
        if name != "loss_curves":
            assert Path(path).name in html
        assert png(path).std() > 10, name
    assert set(result["runs"]) == {"ae-2d", "vae-2d", "vae-16d"}
    # a second demo into the same folder replaces it; a foreign non-empty folder is refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, _, err = run_cli(["demo", "--out", str(other), "--epochs", "1"], capsys)
    assert code == 2 and "not empty" in err and (other / "notes.txt").read_text() == "mine"


def test_help_documents_the_interface() -> None:
    top = subprocess.run(
        [sys.executable, "-m", "vaelab.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("train", "sample", "reconstruct", "interpolate", "latent-plot", "demo"):
        assert command in top.stdout
    train = subprocess.run(
        [sys.executable, "-m", "vaelab.cli", "train", "--help"], capture_output=True, text=True, check=True
    )
    for flag in ("--model", "--arch", "--dataset", "--data-dir", "--latent-dim", "--loss", "--binarize", "--epochs",
                 "--batch-size", "--lr", "--seed", "--device", "--out", "--resume", "--json"):  # fmt: skip
        assert flag in train.stdout


def test_readme_documents_every_training_flag() -> None:

    from vaelab.config import ModelConfig, TrainConfig, setting_names

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in setting_names(ModelConfig) | setting_names(TrainConfig):
        assert f"`--{name.replace('_', '-')}" in readme, name


def test_every_command_is_an_exported_function_and_its_flags_are_its_parameters() -> None:
    import inspect

    import vaelab
    from vaelab.cli import build_parser, commands

    parser = build_parser()
    for name, command in commands().items():
        function = command.function
        assert getattr(vaelab, function.__name__) is function and function.__name__ in vaelab.__all__, name
        if name == "train":
            continue
        parameters = inspect.signature(function).parameters
        required = [p for p in parameters.values() if p.default is inspect.Parameter.empty]
        args = vars(parser.parse_args([*name.split(), *["X"] * len(required)]))
        given = set(args) - {"command", "action", "command_name", "json", "quiet"}
        assert given == set(parameters) - {"progress"}, name
        for parameter in parameters.values():  # the CLI's defaults are the function's
            if parameter.default is not inspect.Parameter.empty and parameter.name != "progress":
                assert args[parameter.name] == parameter.default, (name, parameter.name)
