"""The training loop: reproducible, resumable, safe when the loss diverges; its schedules and warnings."""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import json
import math
import multiprocessing
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import vaelab
from conftest import run_cli, write_images, write_shapes_folder
from vaelab import config as training_config
from vaelab import training
from vaelab.checkpoint import read_metrics
from vaelab.config import PIXELCNN_FREE_BITS, PIXELCNN_LR, TrainConfig
from vaelab.data.cache import folder_cache_dir
from vaelab.errors import VaelabError
from vaelab.models import VAE
from vaelab.operators import OperatorLog

FAST = {"arch": "mlp", "latent_dim": 4, "device": "cpu", "progress": False, "batch_size": 256}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_same_seed_same_result_and_another_seed_differs(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        # dynamic binarization draws from the generator, and gives the pixelcnn decoder: one digit's
        # images keep it quick
        vaelab.train(tmp_path / name, epochs=1, seed=seed, binarize="dynamic", classes="1", **FAST)
    assert torch.backends.cudnn.benchmark is False  # set only while training on CUDA, then restored
    a, b, c = (_weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert _metrics(tmp_path / "a")[0]["val_loss"] == _metrics(tmp_path / "b")[0]["val_loss"]


def test_resumed_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    # constant lr: a cosine schedule's horizon is --epochs, which the resumed run changes; the
    # weight average (--ema, on by default) must carry over exactly
    settings = {**FAST, "lr_schedule": "constant", "ema": 0.99}
    vaelab.train(tmp_path / "full", epochs=2, **settings)
    vaelab.train(tmp_path / "split", epochs=1, **settings)
    result = vaelab.train(tmp_path / "split", resume=True, epochs=2, **settings)
    full, split = _weights(tmp_path / "full"), _weights(tmp_path / "split")
    assert all(torch.equal(full[k], split[k]) for k in full)
    assert result["epochs"] == 2 and [m["epoch"] for m in _metrics(tmp_path / "split")] == [1, 2]
    assert _metrics(tmp_path / "full")[1]["val_loss"] == _metrics(tmp_path / "split")[1]["val_loss"]


def test_metrics_have_the_promised_fields_and_the_loss_falls(tmp_path: Path) -> None:
    vaelab.train(tmp_path / "r", epochs=3, **FAST)
    rows = _metrics(tmp_path / "r")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for row in rows:
        for key in ("train_loss", "val_loss", "train_recon", "train_kl", "val_recon", "val_kl"):
            assert isinstance(row[key], float)
        assert row["epoch_seconds"] > 0 and row["images_per_second"] > 0
        assert row["val_loss"] == pytest.approx(row["val_recon"] + row["val_kl"], rel=1e-6)
    assert rows[2]["val_loss"] < rows[0]["val_loss"] < 544  # 544 nats = 784 pixels * log 2, a coin flip


def test_a_training_step_launches_hardly_more_kernels_than_the_network_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a GPU a small network's step is bound by the host issuing its kernels, so the trainer's
    # bookkeeping (the epoch's loss sums, NaN checks, schedules) must not add kernels to every
    # step: the sums wait for the check every CHECK_EVERY steps. The reference is the network's
    # own step (forward, backward, fused Adam) on a float batch.
    settings = {**training_config.PLAIN_TRAINING, "arch": "mlp", "mlp_hidden": 8, "latent_dim": 2}
    recorder, schedule = OperatorLog(), training.warmup_factor  # called as each training step starts

    def marked(*args: Any) -> float:
        recorder.mark()
        return schedule(*args)

    monkeypatch.setattr(training, "warmup_factor", marked)
    with recorder:
        vaelab.train(tmp_path / "r", dataset="mnist-mini", model="vae", epochs=1, device="cpu", progress=False,
                     **{**settings, "batch_size": 64})  # fmt: skip
    steps = recorder.parts()[1:]  # not the first, which makes Adam's moments
    lengths = [len(step) for step in steps]
    trainer = collections.Counter(steps[lengths.index(statistics.median_low(lengths))])

    model = vaelab.build_model(TrainConfig.from_settings(model="vae", **settings).model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x = torch.rand(64, 1, 28, 28)
    for recording in (False, True):  # the first step creates Adam's moments
        reference = OperatorLog()
        with reference if recording else contextlib.nullcontext():
            optimizer.zero_grad()
            model(x).loss.backward()
            optimizer.step()
    extra = collections.Counter(trainer)
    extra.subtract(collections.Counter(reference.names))
    views = {"detach", "slice", "view", "alias"}  # no kernel
    kernels = {name: n for name, n in extra.items() if n and name not in views}
    assert kernels == {"index": 1, "div": 1}  # the batch's gather from the uint8 set, and its conversion
    row = _metrics(tmp_path / "r")[0]  # the sums kept for the check add up as each step's did
    assert row["train_loss"] == pytest.approx(row["train_recon"] + row["train_kl"], rel=1e-6)  # float32 steps


def test_between_epochs_the_trainer_keeps_its_state_in_a_few_multi_tensor_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A finished epoch's best weights and training state wait for the write every SAVE_SECONDS (or
    # for the run's stop) in copies on the device, refreshed by multi-tensor copies: not
    # brought to the host tensor by tensor (on a GPU, a launch per tensor and a wait for the GPU).
    settings = {**training_config.PLAIN_TRAINING, "arch": "mlp", "mlp_hidden": 8, "latent_dim": 2}
    recorder, validation = OperatorLog(), training.mean_losses
    kinds: list[str] = []

    def validated(*args: Any, **kwargs: Any) -> dict[str, float]:
        try:
            return validation(*args, **kwargs)
        finally:
            recorder.mark()
            kinds.append("after validation")

    def marked(*args: Any) -> float:
        recorder.mark()
        kinds.append("step")
        return schedule(*args)

    schedule = training.warmup_factor
    monkeypatch.setattr(training, "mean_losses", validated)
    monkeypatch.setattr(training, "warmup_factor", marked)
    with recorder:
        vaelab.train(tmp_path / "r", dataset="mnist-mini", model="vae", epochs=3, device="cpu", progress=False,
                     **{**settings, "batch_size": 512})  # fmt: skip
    second = [i for i, kind in enumerate(kinds) if kind == "after validation"][
        1
    ]  # the first makes the copies
    between = collections.Counter(recorder.parts()[second])  # up to the third epoch's first step
    between.subtract({"randperm": 1, "lift_fresh": 1})  # the new epoch's order and its loss sums
    best = _metrics(tmp_path / "r")[1]["val_loss"] < _metrics(tmp_path / "r")[0]["val_loss"]
    # one copy per device and type: the training state's floats and its generator's bytes, and
    # the weights if better
    assert +between == {"_foreach_copy_": 2 + best}


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "r"
    vaelab.train(run, epochs=1, **FAST)
    good = _weights(run)
    forward, calls = VAE.forward, {"n": 0}

    def poisoned(self, x, **kwargs):  # NaN on the 3rd step of epoch 2
        out = forward(self, x, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(VAE, "forward", poisoned)
    with pytest.raises(
        vaelab.TrainingDivergedError, match=r"loss became nan at epoch 2, step 3.*keeps epoch 1.*try lr"
    ):
        vaelab.train(run, resume=True, epochs=3, **FAST)
    kept = _weights(run)
    assert all(torch.equal(good[k], kept[k]) for k in good)
    assert len(_metrics(run)) == 1
    assert not list(run.glob(".*tmp*"))  # no half-written files


@pytest.mark.parametrize("copies_fit_on_the_device", [True, False])
def test_a_run_diverging_after_unsaved_epochs_keeps_the_last_finished_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copies_fit_on_the_device: bool
) -> None:
    # The run folder is written every SAVE_SECONDS, not after every epoch: finished epochs wait in
    # copies kept on the device (on the host where the device has too little memory free), which
    # the next epoch's steps must not reach. Here nothing is due before the NaN of epoch 3, so the
    # folder is written when the run stops: with epoch 2 as a two-epoch run leaves it, bit for bit,
    # and not with the NaN weights of epoch 3's steps.
    monkeypatch.setattr(training.checkpoint, "_fit_on_their_devices", lambda *_: copies_fit_on_the_device)
    settings = {**FAST, **training_config.PLAIN_TRAINING}  # no schedule that depends on the epochs asked for
    vaelab.train(tmp_path / "two", epochs=2, **settings)
    monkeypatch.setattr(training, "SAVE_SECONDS", math.inf)
    forward, calls = VAE.forward, {"n": 0}
    steps_per_epoch = _metrics(tmp_path / "two")[0]["optimizer_steps"]

    def poisoned(self, x, **kwargs):
        out = forward(self, x, **kwargs)
        calls["n"] += self.training
        if calls["n"] == 2 * steps_per_epoch + 3:  # epoch 3, step 3
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(VAE, "forward", poisoned)
    with pytest.raises(vaelab.TrainingDivergedError, match=r"at epoch 3, step 3.*keeps epoch 2"):
        vaelab.train(tmp_path / "r", epochs=3, **settings)
    for name in ("model.safetensors", "training_state.safetensors"):
        kept, expected = load_file(str(tmp_path / "r" / name)), load_file(str(tmp_path / "two" / name))
        assert kept.keys() == expected.keys()
        assert all(torch.equal(kept[k], expected[k]) for k in expected), name
    assert [row["val_loss"] for row in _metrics(tmp_path / "r")] == [
        row["val_loss"] for row in _metrics(tmp_path / "two")
    ]


def test_a_colour_run_records_film_and_reloads_with_it(tmp_path: Path) -> None:
    folder, _ = write_shapes_folder(tmp_path / "shapes", 64, 16, {})
    run = tmp_path / "run"
    vaelab.train(run, dataset=f"folder:{folder}", arch="conv", channels=8, hidden=0, latent_dim=4, epochs=1,
                 batch_size=32, loss="dlogistic", device="cpu", progress=False)  # fmt: skip
    saved = json.loads((run / "config.json").read_text())["model"]
    assert saved["film"] is True and saved["image_channels"] == 3
    model = vaelab.load(run)
    assert model.decoder.film is not None
    assert set(load_file(str(run / "model.safetensors"))) == set(model.state_dict())


def test_an_existing_run_is_never_overwritten(tmp_path: Path) -> None:
    vaelab.train(tmp_path / "r", epochs=1, **FAST)
    with pytest.raises(vaelab.VaelabError, match="already holds a run.*--resume"):
        vaelab.train(tmp_path / "r", epochs=1, **FAST)


def test_resume_refuses_changed_settings_and_missing_runs(tmp_path: Path) -> None:
    vaelab.train(tmp_path / "r", epochs=1, **FAST)
    with pytest.raises(vaelab.VaelabError, match="lr 0.1 differs"):
        vaelab.train(tmp_path / "r", resume=True, epochs=2, lr=0.1, **FAST)
    with pytest.raises(vaelab.VaelabError, match="nothing to resume"):
        vaelab.train(tmp_path / "none", resume=True, epochs=2, **FAST)
    with pytest.raises(
        vaelab.VaelabError, match="decoder pixelcnn differs from the resumed run's factorized"
    ):
        vaelab.train(tmp_path / "r", resume=True, epochs=2, decoder="pixelcnn", **FAST)
    # "let vaelab choose", asked again (the same command run again): the run's choice stands
    chosen = {"decoder": "auto", "lr": None, "free_bits": None, "film": None, "mean_scale": None}
    assert vaelab.train(tmp_path / "r", resume=True, epochs=2, **chosen, **FAST)["epochs"] == 2


def test_a_run_keeps_the_learning_rate_and_free_bits_it_started_with(tmp_path: Path) -> None:
    settings = {**FAST, "decoder": "pixelcnn", "binarize": "dynamic", "epochs": 1}
    vaelab.train(tmp_path / "r", **settings)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (saved["train"]["lr"], saved["model"]["free_bits"]) == (PIXELCNN_LR, PIXELCNN_FREE_BITS)
    assert saved["format"] == 2 and "latent_dim" not in saved["train"]  # each setting stored once


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"latent_dim": 0}, "latent_dim must be at least 1"),
        ({"lr": -1.0}, "lr must be positive"),
        ({"loss": "mse"}, "loss 'mse' is not one of"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"colour": "red"}, "unknown setting colour"),
        ({"ema": 1.0}, "ema must be in"),
        ({"hidden": -1}, "hidden must be zero or more"),
        ({"channels": 0}, "channels must be at least 1"),
    ],
)
def test_out_of_range_settings_are_refused_before_anything_is_written(
    tmp_path: Path, settings, message
) -> None:
    with pytest.raises(vaelab.VaelabError, match=message):
        vaelab.train(tmp_path / "r", epochs=1, **{**FAST, **settings})
    assert not (tmp_path / "r").exists()


def test_static_binarization_trains_on_zeros_and_ones(tmp_path: Path) -> None:
    result = vaelab.train(tmp_path / "r", epochs=1, binarize="static", **FAST)
    assert result["val_loss"] < 544


def test_ema_decay_starts_short_and_reaches_the_asked_decay() -> None:
    assert training.ema_decay(0, 0.999) == pytest.approx(0.1)
    assert training.ema_decay(90, 0.999) == pytest.approx(0.91)
    assert training.ema_decay(10**6, 0.999) == 0.999


def test_update_average_is_the_exponential_moving_average() -> None:
    average, model = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in average.parameters()]
    training.update_average(average, model, 0.75)
    for new, old, live in zip(average.parameters(), before, model.parameters()):
        assert torch.allclose(new, 0.75 * old + 0.25 * live)


def test_ema_run_saves_the_average_not_the_live_weights(tmp_path: Path) -> None:
    vaelab.train(tmp_path / "ema", epochs=1, ema=0.9, **FAST)
    saved, state = _weights(tmp_path / "ema"), load_file(str(tmp_path / "ema" / "training_state.safetensors"))
    assert all(torch.equal(saved[k], state[f"ema.{k}"]) for k in saved)
    assert not all(torch.equal(saved[k], state[f"model.{k}"]) for k in saved)
    vaelab.train(tmp_path / "plain", epochs=1, ema=0.0, **FAST)
    saved, state = (
        _weights(tmp_path / "plain"),
        load_file(str(tmp_path / "plain" / "training_state.safetensors")),
    )
    assert all(torch.equal(saved[k], state[f"model.{k}"]) for k in saved)
    assert not any(name.startswith("ema.") for name in state)


def test_warmup_and_cosine_factors() -> None:
    assert [training.warmup_factor(s, 10) for s in (0, 5, 10, 50)] == [0.0, 0.5, 1.0, 1.0]
    assert training.warmup_factor(3, 0) == 1.0
    assert training.lr_factor("cosine", 0, 100) == 1.0
    assert training.lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert training.lr_factor("cosine", 100, 100) == pytest.approx(0.0)
    assert training.lr_factor("constant", 70, 100) == 1.0
    # lr warm-up: step s of a 4-step ramp runs at (s + 1) / 4, times the schedule's own factor.
    assert [training.lr_factor("constant", s, 100, 4) for s in (0, 1, 3, 50)] == [0.25, 0.5, 1.0, 1.0]
    cosine_at_1 = 0.5 * (1.0 + math.cos(math.pi * 1 / 100))
    assert training.lr_factor("cosine", 1, 100, 4) == pytest.approx(0.5 * cosine_at_1)


def test_a_run_with_warmup_and_cosine_records_both(tmp_path: Path) -> None:
    vaelab.train(
        tmp_path / "r",
        epochs=3,
        kl_warmup_epochs=2,
        lr_schedule="cosine",
        lr_warmup_epochs=0,
        beta=2.0,
        **FAST,
    )
    rows = read_metrics(tmp_path / "r")
    weights = [row["kl_weight"] for row in rows]
    assert 0 < weights[0] < 1.0 < weights[1] < 2.0 and weights[2] == 2.0
    lrs = [row["lr"] for row in rows]
    assert 1e-3 > lrs[0] > lrs[1] > lrs[2] > 0


def test_the_learning_rate_ramps_up_over_its_warmup_epochs(tmp_path: Path) -> None:
    vaelab.train(tmp_path / "r", epochs=3, lr=1e-3, lr_warmup_epochs=2, lr_schedule="constant", **FAST)
    lrs = [row["lr"] for row in read_metrics(tmp_path / "r")]  # each at its epoch's last step
    assert lrs == pytest.approx([0.5e-3, 1e-3, 1e-3])  # halfway up after epoch 1 of 2, then flat


def test_iwae_trains_and_reports_a_bound_tighter_than_its_elbo(tmp_path: Path) -> None:
    result = vaelab.train(tmp_path / "r", epochs=2, objective="iwae", iw_samples=5, **FAST)
    assert result["val_loss"] < result["val_recon"] + result["val_kl"]


def test_early_stopping_keeps_the_best_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = training.mean_losses
    val_losses = iter([300.0, 200.0, 250.0, 260.0, 270.0, 280.0])

    def scripted(*args, **kwargs):
        real(*args, **kwargs)
        value = next(val_losses)
        return {"loss": value, "recon": value, "kl": 0.0}

    monkeypatch.setattr(training, "mean_losses", scripted)
    monkeypatch.setattr(training, "LOG_SECONDS", math.inf)  # epochs faster than the log interval
    with caplog.at_level("INFO", logger="vaelab.training"):
        result = vaelab.train(tmp_path / "r", epochs=6, patience=2, **FAST)
    assert result["epochs"] == 4 and result["best_epoch"] == 2 and result["best_val_loss"] == 200.0
    lines = [r.getMessage() for r in caplog.records if r.levelname == "INFO" and "/6 " in r.getMessage()]
    lines += [r.getMessage() for r in caplog.records if r.getMessage().startswith("early stop")]
    assert [line.split()[1] for line in lines] == ["1/6", "4/6", "stop:"]  # the first, the stopping one
    assert "val 260.00 (best 200.00, epoch 2)" in lines[1] and lines[2].endswith("holds the best, epoch 2")
    best = load_file(str(tmp_path / "r" / "model.safetensors"))
    last = {
        k.removeprefix("model."): v
        for k, v in load_file(str(tmp_path / "r" / "training_state.safetensors")).items()
        if k.startswith("model.")
    }
    assert set(best) == set(last) and not all(torch.equal(best[k], last[k]) for k in best)
    loaded = vaelab.load(tmp_path / "r")
    assert all(torch.equal(loaded.state_dict()[k], best[k]) for k in best)


def test_a_run_on_a_relative_folder_records_it_absolute_and_works_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_images(tmp_path / "data" / "imgs", 12, (8, 8))
    monkeypatch.chdir(tmp_path / "data")
    vaelab.train("run", dataset="folder:imgs", epochs=1, **FAST)
    recorded = json.loads((tmp_path / "data" / "run" / "config.json").read_text())["train"]["dataset"]
    assert recorded == f"folder:{tmp_path / 'data' / 'imgs'}"
    monkeypatch.chdir(tmp_path)  # elsewhere: the run still finds its images
    assert Path(vaelab.reconstruct("data/run", out="r.png", n=2)["out"]).is_file()
    result = vaelab.train("data/run", resume=True, epochs=2, dataset=f"folder:{tmp_path / 'data' / 'imgs'}")
    assert result["epochs"] == 2
    (tmp_path / "data" / "imgs").rename(tmp_path / "moved")
    with pytest.raises(
        VaelabError, match=f"trained on folder:{tmp_path / 'data' / 'imgs'}, which is not there;"
    ):
        vaelab.reconstruct("data/run", out="r2.png", n=2)


def test_resuming_a_run_that_has_its_epochs_trains_and_writes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "r"
    vaelab.train(run, epochs=2, **FAST)
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    with caplog.at_level("INFO", logger="vaelab.training"):
        result = vaelab.train(run, resume=True, epochs=1, progress=False)
    assert result["epochs"] == 2 and {path.name: path.read_bytes() for path in run.iterdir()} == before
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.endswith("has trained 2 epochs, as many as asked (epochs 1): nothing to train; pass epochs N "
                          "(--epochs) above 2 to go on") for m in messages)  # fmt: skip
    assert not any(m.startswith("training ") for m in messages)


@pytest.mark.parametrize("warmup", [4, 1])
def test_the_log_says_what_the_kl_weighs_while_it_warms_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, warmup: int
) -> None:
    with caplog.at_level("INFO", logger="vaelab.training"):
        vaelab.train(tmp_path / "r", epochs=2, kl_warmup_epochs=warmup, beta=2.0, **FAST)
    messages = [r.getMessage() for r in caplog.records]
    steps = math.ceil(7200 / FAST["batch_size"])
    # The weight of step d (from 0) is beta * min(1, d / (warmup * steps)); an epoch's training loss
    # weighs the KL by its mean over the epoch's steps: for an epoch inside the warm-up, the mean of
    # an arithmetic series, beta * (first + last) / 2 / (warmup * steps).
    weights = [
        2.0 * ((e - 1) * steps + e * steps - 1) / 2 / (warmup * steps) if e <= warmup else 2.0 for e in (1, 2)
    ]
    lines = [m for m in messages if m.startswith(("epoch 1/2", "epoch 2/2"))]
    assert len(lines) == 2 and weights[0] < 1.0
    for line, weight in zip(lines, weights, strict=True):
        said = f"kl {line.split('kl ')[1].split()[0]} weighted {weight:.2f} on average in warm-up)"
        assert (said in line) == (weight < 2)
    notes = [m for m in messages if m.startswith("the KL warm-up")]
    if warmup == 4:  # 2 of 4 epochs: the second weighs the KL 2 * (3 * steps - 1) / 2 / (4 * steps) ~ 0.75
        assert len(notes) == 1 and notes[0].startswith(
            f"the KL warm-up (4 epochs) lasts the whole run, so the last epoch weighs the KL by {weights[1]:.2f} "
            "on average, short of beta = 2,"
        )
        assert notes[0].endswith(
            "--kl-warmup-epochs 1 or fewer trains the last epoch with the whole objective"
        )
    else:
        assert notes == [] and weights[1] == 2.0


def test_a_one_epoch_run_with_a_one_epoch_warmup_is_told_its_mean_kl_weight(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="vaelab.training"):
        vaelab.train(tmp_path / "r", epochs=1, kl_warmup_epochs=1, **FAST)
    steps = math.ceil(7200 / FAST["batch_size"])
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("the KL warm-up")]
    assert notes == [
        f"the KL warm-up (1 epoch) lasts the whole run, so the last epoch weighs the KL by "
        f"{(steps - 1) / 2 / steps:.2f} on average, short of beta = 1, and its training loss counts less KL than "
        "the validation loss; --kl-warmup-epochs 0 trains the last epoch with the whole objective"
    ]


@pytest.mark.parametrize("model", ["vae", "ae"])
def test_a_collapsed_latent_is_warned_about_once_after_the_lr_warmup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, model: str
) -> None:
    real = training.mean_losses
    val_kls = iter([0.5, 0.4, 0.3])  # nats per image: below COLLAPSED_KL from the first epoch on

    def scripted(*args, **kwargs):
        losses = real(*args, **kwargs)
        return {**losses, "kl": next(val_kls)}

    monkeypatch.setattr(training, "mean_losses", scripted)
    with caplog.at_level("WARNING", logger="vaelab.training"):
        vaelab.train(tmp_path / "r", epochs=3, lr_warmup_epochs=1, model=model, **FAST)
    warnings = [r.getMessage() for r in caplog.records if "posterior collapse" in r.getMessage()]
    if model == "ae":  # an AE has no KL to collapse
        assert warnings == []
    else:  # not during the warm-up (epoch 1), then once, not again at epoch 3
        assert len(warnings) == 1 and warnings[0].startswith("epoch 2: validation KL is 0.40")


def test_iwae_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(vaelab.VaelabError, match="objective iwae needs model vae"):
        vaelab.train(tmp_path / "r", objective="iwae", beta=2.0, **FAST)
    with pytest.raises(vaelab.VaelabError, match="iw_samples must be at least 1"):
        vaelab.train(tmp_path / "r", objective="iwae", iw_samples=0, **FAST)


def test_classes_keep_only_the_named_labels() -> None:

    from vaelab.config import TrainConfig

    _, labels = vaelab.load_dataset("mnist-mini", "train")
    config = TrainConfig(classes="1,7").validate()
    train_images, val_images = training.split_train_val(config, torch.device("cpu"))
    assert len(train_images) + len(val_images) == int(((labels == 1) | (labels == 7)).sum())
    with pytest.raises(vaelab.VaelabError, match="classes names no class"):
        TrainConfig(classes=" , ").validate()
    with pytest.raises(vaelab.VaelabError, match="'one' is neither a class number nor a class name of "
                       "mnist-mini; its classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9$"):  # fmt: skip
        training.split_train_val(TrainConfig(classes="1,one").validate(), torch.device("cpu"))
    with pytest.raises(vaelab.VaelabError, match="no training image"):
        training.split_train_val(TrainConfig(classes="42"), torch.device("cpu"))


def test_classes_of_a_folder_are_named_by_its_sub_folders(tmp_path: Path, capsys) -> None:
    for name, count in (("cats", 6), ("dogs", 7), ("owls", 8)):
        write_images(tmp_path / "data" / name, count, (12, 12), seed=count)
    dataset = f"folder:{tmp_path / 'data'}"
    by_name = TrainConfig(dataset=dataset, classes="owls, cats").validate()
    by_number = TrainConfig(dataset=dataset, classes="2,0").validate()
    labels = vaelab.load_dataset(dataset, "train")[1]
    for config in (by_name, by_number):
        train, val = training.split_train_val(config, torch.device("cpu"))
        assert len(train) + len(val) == int(((labels == 0) | (labels == 2)).sum()) > 0  # cats and owls
    assert all(torch.equal(a, b) for a, b in zip(*(training.split_train_val(c, torch.device("cpu"))
                                                   for c in (by_name, by_number))))  # fmt: skip
    code, _, err = run_cli(["train", "--dataset", dataset, "--classes", "cats,bats", "--out", str(tmp_path / "r")],
                           capsys)  # fmt: skip
    assert code == 2 and err.strip().endswith(
        f"classes 'cats,bats': 'bats' is neither a class number nor a class name of {dataset}; "
        "its classes: cats, dogs, owls"
    )
    assert not (tmp_path / "r").exists()


def _assert_same_loss_and_gradients(
    reference: torch.nn.Module, other: torch.nn.Module, x: torch.Tensor
) -> None:
    """One step of each on x with the same draws: losses equal and gradients close up to float32
    rounding (sums taken in another order)."""
    losses = []
    for model in (reference, other):
        out = model(x, generator=torch.Generator().manual_seed(1))
        out.loss.backward()
        losses.append(out.loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for (name, a), b in zip(reference.named_parameters(), other.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-5), name


def test_channels_last_computes_the_same_loss_and_gradients() -> None:
    torch.manual_seed(0)
    config = vaelab.ModelConfig(
        arch="resnet", latent_dim=8, image_channels=3, image_height=20, image_width=20
    )
    plain = vaelab.build_model(config)
    fast = vaelab.build_model(config)
    fast.load_state_dict(plain.state_dict())
    training.speed_up(fast, channels_last=True)
    conv = fast.encoder.convs[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    # the same sums in another memory order: equal up to float32 rounding
    _assert_same_loss_and_gradients(plain, fast, torch.rand(6, 3, 20, 20))
    assert set(fast.state_dict()) == set(plain.state_dict())  # loads into the model as saved


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile on a CPU needs a C compiler")
def test_compiled_training_matches_eager_training(tmp_path: Path) -> None:
    settings = {**FAST, "arch": "conv", "hidden": 0, "classes": "1", "ema": 0.0, "epochs": 2}
    vaelab.train(tmp_path / "eager", **settings)
    vaelab.train(tmp_path / "compiled", compile=True, **settings)
    eager, compiled = _metrics(tmp_path / "eager"), _metrics(tmp_path / "compiled")
    # fused kernels add in another order: float32 rounding, amplified a little by two epochs of
    # Adam (measured: 1e-6 relative)
    for a, b in zip(eager, compiled):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["train"]["compile"] is True
    assert set(_weights(tmp_path / "compiled")) == set(_weights(tmp_path / "eager"))


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile on a CPU needs a C compiler")
def test_compiling_also_compiles_the_pixel_loss_and_keeps_losses_and_gradients() -> None:
    config = vaelab.TrainConfig.from_settings(
        arch="conv", hidden=0, channels=8, loss="dlogistic"
    ).model_config
    config = dataclasses.replace(config, image_channels=3, image_height=16, image_width=16).resolved()
    torch.manual_seed(0)
    eager = VAE(config)
    compiled = copy.deepcopy(eager)
    training.speed_up(compiled, compile_=True)
    assert "loss" in vars(compiled.pixels) and "loss" not in vars(eager.pixels)  # compiled, on the instance
    _assert_same_loss_and_gradients(eager, compiled, torch.rand(4, 3, 16, 16))  # fused: rounding only


def test_gradient_clipper_cuts_norms_above_a_multiple_of_their_running_average() -> None:
    weight = torch.nn.Parameter(torch.zeros(4))
    clipper = training.GradientClipper([weight], factor=4.0, device=torch.device("cpu"))
    weight.grad = torch.tensor([0.6, 0.8, 0.0, 0.0])  # norm 1 starts the average, nothing is cut
    assert clipper.clip().item() == pytest.approx(1.0) and torch.equal(
        weight.grad, torch.tensor([0.6, 0.8, 0, 0])
    )
    assert clipper.average.item() == pytest.approx(1.0)
    weight.grad = torch.tensor([0.0, 0.0, 60.0, 80.0])  # norm 100 > 4 x 1: cut to norm 4, direction kept
    assert clipper.clip().item() == pytest.approx(100.0)
    assert weight.grad.tolist() == pytest.approx([0, 0, 2.4, 3.2])
    assert clipper.average.item() == pytest.approx(0.99 * 1 + 0.01 * 4)  # the cut norm, not 100
    weight.grad = torch.tensor([math.nan, 0.0, 0.0, 0.0])  # a NaN step leaves the average alone
    clipper.clip()
    assert clipper.average.item() == pytest.approx(1.03)
    assert clipper.take_count() == 1 and clipper.take_count() == 0


def test_clipped_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    settings = {**FAST, "lr_schedule": "constant", "ema": 0.0, "grad_clip": 1.5, "save_every": 10}
    vaelab.train(tmp_path / "full", epochs=2, **settings)
    vaelab.train(tmp_path / "split", epochs=1, **settings)
    vaelab.train(tmp_path / "split", resume=True, epochs=2, **settings)
    full, split = _weights(tmp_path / "full"), _weights(tmp_path / "split")
    assert all(torch.equal(full[k], split[k]) for k in full)
    rows = _metrics(tmp_path / "full")
    assert all(0 < row["clipped_steps"] <= 29 for row in rows)  # 1.5x the average is cut now and then
    with pytest.raises(vaelab.VaelabError, match="grad_clip must be 0"):
        vaelab.train(tmp_path / "bad", grad_clip=0.5, **FAST)


def test_a_streamed_folder_trains_the_same_weights_as_one_in_memory(tmp_path: Path) -> None:
    from conftest import write_images

    write_images(tmp_path / "photos", 50, (12, 12), mode="RGB")
    settings = {**FAST, "dataset": f"folder:{tmp_path / 'photos'}", "batch_size": 8, "epochs": 2,
                "lr_schedule": "constant", "ema": 0.0}  # fmt: skip
    vaelab.train(tmp_path / "runs" / "memory", **settings)
    readers_at_validation = []
    real_mean_losses = training.mean_losses

    def counting_readers(*args: Any, **kwargs: Any) -> dict[str, float]:
        readers_at_validation.append(len(multiprocessing.active_children()))
        return real_mean_losses(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "mean_losses", counting_readers)
        vaelab.train(tmp_path / "runs" / "disk", max_memory="0", workers=2, **settings)
    assert readers_at_validation == [0, 0]  # the epoch's reading workers ended before validation's start
    # decoded into the cache folder, where every later run and command finds it
    assert 50 * 3 * 12 * 12 in [cache.stat().st_size for cache in folder_cache_dir().glob("folder-*.u8")]
    memory, disk = _weights(tmp_path / "runs" / "memory"), _weights(tmp_path / "runs" / "disk")
    assert all(torch.equal(memory[k], disk[k]) for k in memory)  # the same batches in the same order
    assert (
        _metrics(tmp_path / "runs" / "memory")[1]["val_loss"]
        == _metrics(tmp_path / "runs" / "disk")[1]["val_loss"]
    )
    # interrupted after a mid-epoch checkpoint (step 3 of 6) and resumed: the same weights again
    steps = iter(range(100))
    real = training.warmup_factor

    def interrupt_at_step_5(step: int, warmup_steps: int) -> float:
        if next(steps) == 4:
            raise KeyboardInterrupt
        return real(step, warmup_steps)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(training, "warmup_factor", interrupt_at_step_5)
        vaelab.train(tmp_path / "runs" / "split", max_memory="0", save_every=3, **settings)
    vaelab.train(tmp_path / "runs" / "split", resume=True, progress=False)
    split = _weights(tmp_path / "runs" / "split")
    assert all(torch.equal(memory[k], split[k]) for k in memory)
    with pytest.raises(vaelab.VaelabError, match="binarize dynamic needs the images in memory"):
        vaelab.train(tmp_path / "runs" / "bin", max_memory="0", binarize="dynamic", **settings)


def test_the_default_learning_rate_halves_above_64_px_and_an_explicit_one_is_kept(tmp_path: Path) -> None:
    folder, _ = write_shapes_folder(tmp_path / "data", 8, 72, {})
    small = {"dataset": f"folder:{folder}", "arch": "conv", "hidden": 0, "channels": 4, "batch_size": 4,
             "device": "cpu", "progress": False}  # fmt: skip

    def recorded_lr(run: Path) -> float:
        return json.loads((run / "config.json").read_text())["train"]["lr"]

    vaelab.train(tmp_path / "auto", epochs=1, **small)
    assert recorded_lr(tmp_path / "auto") == 5e-4  # 72 x 72 pixels: half of 1e-3
    vaelab.train(tmp_path / "auto", resume=True, epochs=2, **small)
    assert recorded_lr(tmp_path / "auto") == 5e-4  # a resumed run keeps what it recorded
    vaelab.train(tmp_path / "explicit", epochs=1, lr=1e-3, **small)
    assert recorded_lr(tmp_path / "explicit") == 1e-3


def test_colour_and_large_images_defaults_apply_to_new_runs_only_and_flags_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_images(tmp_path / "colour", 10, (16, 16), mode="RGB")
    write_images(tmp_path / "grey", 10, (16, 16))
    write_images(tmp_path / "large-grey", 10, (36, 36))
    monkeypatch.setitem(training_config.IMAGE_DEFAULTS, "epochs", 1)  # short
    monkeypatch.setattr(training, "IMAGE_MIN_STEPS", 3)
    small = {"channels": 4, "latent_dim": 4, "device": "cpu", "progress": False}

    def recorded(run: str) -> dict:
        saved = json.loads((tmp_path / run / "config.json").read_text())
        return {**saved["model"], **saved["train"]}

    vaelab.train(tmp_path / "colour-run", dataset=f"folder:{tmp_path / 'colour'}", **small)
    colour = recorded("colour-run")  # 7 training images, batch 32: 1 step an epoch, so 3 epochs
    assert (colour["loss"], colour["arch"], colour["hidden"], colour["batch_size"], colour["epochs"]) == (
        "dlogistic", "conv", 0, 32, 3
    )  # fmt: skip
    vaelab.train(tmp_path / "grey-run", dataset=f"folder:{tmp_path / 'grey'}", epochs=1, **small)
    grey = recorded("grey-run")  # small grey images keep the digits' defaults
    assert (grey["loss"], grey["arch"], grey["batch_size"]) == ("bernoulli", "resnet", 128)
    vaelab.train(tmp_path / "large-grey-run", dataset=f"folder:{tmp_path / 'large-grey'}", **small)
    large = recorded("large-grey-run")  # grey images above 32 x 32 pixels: as colour ones
    assert (large["loss"], large["arch"], large["batch_size"], large["epochs"]) == (
        "dlogistic",
        "conv",
        32,
        3,
    )
    assert large["image_channels"] == 1 and not large["film"]
    vaelab.train(tmp_path / "flags", dataset=f"folder:{tmp_path / 'colour'}", loss="l2", epochs=1, **small)
    flags = recorded("flags")  # what is given wins; the rest are colour defaults
    assert (flags["loss"], flags["epochs"], flags["arch"]) == ("l2", 1, "conv")

    monkeypatch.setitem(training_config.IMAGE_DEFAULTS, "batch_size", 64)
    vaelab.train(tmp_path / "colour-run", resume=True, epochs=4, progress=False)
    assert recorded("colour-run")["batch_size"] == 32  # as recorded
    steps = [row["optimizer_steps"] for row in _metrics(tmp_path / "colour-run")]
    assert steps == [1, 2, 3, 4]


def test_colour_and_large_images_train_for_enough_steps_on_a_small_set() -> None:
    colour, grey, least = (3, 64, 64), (1, 28, 28), training.IMAGE_MIN_STEPS
    epochs = {n: training.new_run_config({}, colour, n).epochs for n in (18_000, 2_160, 100)}
    # shapes' 18,000 images: 563 steps an epoch, the default 10 epochs are 5,630 steps
    assert epochs == {18_000: 10, 2_160: math.ceil(least / 68), 100: math.ceil(least / 4)}
    assert training.new_run_config({"epochs": 3}, colour, 2_160).epochs == 3  # given: kept
    assert training.new_run_config({"batch_size": 8}, colour, 2_160).epochs == math.ceil(least / 270)
    assert training.new_run_config({}, grey, 100).epochs == TrainConfig().epochs  # small grey: unchanged
    assert training.new_run_config({}, (1, 64, 64), 100).epochs == math.ceil(least / 4)  # large grey
    # a run raised to the floor stops once IMAGE_PATIENCE_STEPS steps bring no better validation loss
    patience = {n: training.new_run_config({}, colour, n).patience for n in (18_000, 2_160, 100)}
    assert patience == {18_000: 0, 2_160: math.ceil(training.IMAGE_PATIENCE_STEPS / 68), 100: 250}
    assert training.new_run_config({"patience": 3}, colour, 100).patience == 3  # given: kept
    assert training.new_run_config({"epochs": 3}, colour, 100).patience == 0  # epochs given: no floor
    assert training.new_run_config({"binarize": "dynamic"}, colour, 100).epochs == TrainConfig().epochs
