"""The command line: one-line errors, help, and flags that are the library functions' parameters."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import png, run_cli
from vaelab.apps import visualize
from vaelab.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--dataset", "nope", "--out", "{tmp}/r"], "unknown dataset 'nope'"),
        (["train", "--latent-dim", "0", "--out", "{tmp}/r"], "latent_dim must be at least 1"),
        (["train", "--dataset", "folder:{tmp}/missing", "--out", "{tmp}/r"], "is not a directory"),
        (["sample", "{tmp}", "-o", "{tmp}/s.png"], "is not a vaelab run"),
        (["interpolate", "{run}", "--from-class", "1", "-o", "{tmp}/i.png"], "give both ends as classes"),
        (
            ["interpolate", "{run}", "--to-image", "{tmp}/b.png", "-o", "{tmp}/i.png"],
            "give both ends as files",
        ),
        (
            ["interpolate", "{run}", "--from-class", "1", "--to-class", "12", "-o", "{tmp}/i.png"],
            "class 12 has no",
        ),
        (["sample", "{run}", "-n", "0", "-o", "{tmp}/s.png"], "n must be at least 1, got 0"),
        (["latent-grid", "{run1}", "-o", "{tmp}/g.png"], "needs a latent of 2 or more"),
        (["sample", "{run}", "-o", "{tmp}/s.txt"], "-o {tmp}/s.txt: choose a file ending in .png, .jpg"),
        (["latent-plot", "{run}", "-o", "{tmp}/p"], "-o {tmp}/p: choose a file ending in"),
        (
            ["sample", "{run}", "-o", "{tmp}/taken/s.png"],
            "{tmp}/taken/s.png: Not a directory; check the path",
        ),
        (["train", "--image-size", "100000", "--out", "{tmp}/r"], "GB in memory, more than the"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    args: list[str], message: str, tmp_path: Path, vae_run: Path, capsys, request
) -> None:
    run1 = tmp_path / "run1"
    if "{run1}" in args:
        command = [
            "train",
            "--arch",
            "mlp",
            "--latent-dim",
            "1",
            "--epochs",
            "1",
            "--out",
            str(run1),
            "--quiet",
        ]
        assert main(command) == 0
    (tmp_path / "taken").write_text("a file where a folder is asked for")
    filled = [a.format(tmp=tmp_path, run=vae_run, run1=run1) for a in args]
    code, _, err = run_cli(filled, capsys)
    assert code == 2
    assert (
        message.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    )
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob("*.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) in (["taken"], ["run1", "taken"])


@pytest.mark.parametrize(
    ("command", "suffix"),
    [
        ("sample", ".txt"),
        ("reconstruct", ".pngx"),
        ("interpolate", ""),
        ("latent-plot", ".csv"),
        ("latent-grid", ".npy"),
        ("traverse", ".html"),
        ("edit", ".txt"),
        ("denoise", ".txt"),
        ("cluster", ".csv"),
        ("anomaly score", ".png"),
    ],
)
def test_a_wrong_picture_suffix_is_an_error_before_any_work(
    command: str, suffix: str, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped -o is told at once, before a model is loaded (cluster or denoise would otherwise
    work for seconds first); anomaly score's CSV must end in .csv, its picture goes beside it."""
    import vaelab.apps.anomaly as anomaly
    import vaelab.runs as runs

    def no_work(*args, **kwargs):
        raise AssertionError("the command started its work before checking -o")

    for module in ("visualize", "steer", "denoise", "cluster"):
        monkeypatch.setattr(f"vaelab.apps.{module}.open_run", no_work)
    monkeypatch.setattr(runs, "open_run", no_work)
    monkeypatch.setattr(anomaly, "load_detector", no_work)
    out = tmp_path / f"picture{suffix}"
    extra = ["--attribute", "size"] if command == "edit" else []
    code, _, err = run_cli([*command.split(), str(tmp_path / "run"), *extra, "-o", str(out)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"-o {out}: choose a file ending in" in err
    assert list(tmp_path.iterdir()) == []


def test_sampling_from_the_prior_says_when_the_latents_sit_elsewhere(
    ae_run: Path, tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    """An AE's codes are not fitted to N(0, I): `sample` says so and points to --latents fitted;
    the figure comes with the JSON result."""
    code, result, _ = run_cli(["sample", str(ae_run), "-n", "4", "-o", str(tmp_path / "s.png")], capsys)
    assert code == 0 and result["prior_mismatch_nats"] > 2
    warned = [r.getMessage() for r in caplog.records if "far from N(0, I)" in r.getMessage()]
    assert len(warned) == 1 and f"{result['prior_mismatch_nats']:.1f} nats apart" in warned[0]
    assert warned[0].endswith("--latents fitted draws where the images sit")
    caplog.clear()
    code, result, _ = run_cli(
        ["sample", str(ae_run), "-n", "4", "--latents", "fitted", "-o", str(tmp_path / "f.png")], capsys
    )
    assert code == 0 and "prior_mismatch_nats" not in result
    assert not [r for r in caplog.records if "far from N(0, I)" in r.getMessage()]


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: 3 GB"),
        MemoryError(),
    ],
)
def test_running_out_of_memory_is_one_line_and_exit_code_2(
    error: Exception, vae_run: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    @functools.wraps(visualize.sample)  # the same parameters, so the same flags
    def sample(*args, **kwargs):
        raise error

    monkeypatch.setattr(visualize, "sample", sample)
    code, _, err = run_cli(["sample", str(vae_run), "-o", str(tmp_path / "s.png")], capsys)
    assert code == 2 and err.startswith("vaelab sample: error: out of memory (")
    assert "smaller --batch-size or --image-size" in err and len(err.strip().splitlines()) == 1


def test_a_diverged_run_ends_with_its_error_line_not_its_progress_bar(tmp_path: Path) -> None:
    import re

    done = subprocess.run(
        [sys.executable, "-m", "vaelab", "train", "--arch", "mlp", "--epochs", "1", "--lr", "1e9",
         "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    shown = [part for part in re.split(r"[\r\n]", done.stderr) if part.strip()]  # as a terminal ends
    assert done.returncode == 1 and "step/s" in done.stderr  # the bar was shown
    last = shown[-1]
    assert re.match(r"vaelab train: error: loss became (nan|inf) at epoch 1, step \d+;", last), shown[-3:]


@pytest.mark.parametrize(
    ("message", "code", "said"),
    [
        ("DataLoader worker (pid 25313) is killed by signal: Terminated. ", 143, "killed by SIGTERM"),
        ("DataLoader worker (pid 7) is killed by signal: Killed. ", 1, "killed by SIGKILL"),
    ],
)
def test_a_reading_worker_killed_by_a_signal_is_one_line(
    message: str, code: int, said: str, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PyTorch raises this in the trainer when a worker dies of a signal (a job's processes each
    # sent SIGTERM twice, say); the trainer has kept its last finished epoch by then
    import vaelab.training

    def train(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(vaelab.training, "train", train)
    got, _, err = run_cli(["train", "--out", str(tmp_path / "r")], capsys)
    assert got == code and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.strip() == (
        f"vaelab train: error: a process reading images was {said}; finished epochs are saved (continue with --resume)"
    )


def test_other_runtime_errors_are_not_called_out_of_memory(
    vae_run: Path, tmp_path: Path, monkeypatch
) -> None:
    @functools.wraps(visualize.sample)  # the same parameters, so the same flags
    def sample(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(visualize, "sample", sample)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["sample", str(vae_run), "-o", str(tmp_path / "s.png")])


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


def test_a_command_imports_only_the_libraries_it_uses(vae_run: Path, tmp_path: Path) -> None:
    # `vaelab sample` draws no chart and fits no estimator: scikit-learn, SciPy, matplotlib and
    # torchvision (seconds of start-up each) stay unimported, as the other commands' modules do
    script = (
        "import sys\nfrom vaelab.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print(code, *sorted(m for m in ('sklearn', 'scipy', 'matplotlib', 'torchvision', 'vaelab.apps.anomaly',"
        " 'vaelab.apps.serve', 'vaelab.training') if m in sys.modules))"
    )
    out = tmp_path / "s.png"
    done = subprocess.run(
        [sys.executable, "-c", script, "sample", str(vae_run), "-n", "4", "-o", str(out), "--quiet"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.splitlines()[-1] == "0", done.stdout
    assert png(out).shape == (118, 118)  # 2 x 2 digits, upscaled to 56 px, 2 px borders


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
        flagged = [p.name for p in required if "Required()" in str(p.annotation)]
        positional = ["X"] * (len(required) - len(flagged))
        flags = [item for flag in flagged for item in ("--" + flag.replace("_", "-"), "X")]
        args = vars(parser.parse_args([*name.split(), *positional, *flags]))
        given = set(args) - {"command", "action", "command_name", "json", "quiet"}
        assert given == set(parameters) - {"progress"}, name
        for parameter in parameters.values():  # the CLI's defaults are the function's
            if parameter.default is not inspect.Parameter.empty and parameter.name != "progress":
                assert args[parameter.name] == parameter.default, (name, parameter.name)


def test_train_says_when_the_weights_it_kept_are_an_earlier_epochs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from vaelab.cli import _print_human, commands

    result = {"out": "runs/r", "epochs": 4, "val_loss": 260.0, "best_epoch": 2, "best_val_loss": 200.0}
    _print_human("train", commands()["train"], result)
    _print_human("train", commands()["train"], {**result, "best_epoch": 4, "best_val_loss": 260.0})
    _print_human(
        "train", commands()["train"], {"out": "runs/s", "epochs": 1, "val_loss": 9.0, "best_epoch": 1}
    )
    assert capsys.readouterr().out.splitlines() == [
        "trained 4 epochs into runs/r  (val loss 260.00 per image; kept epoch 2's weights, val loss 200.00)",
        "trained 4 epochs into runs/r  (val loss 260.00 per image)",
        "trained 1 epoch into runs/s  (val loss 9.00 per image)",
    ]
