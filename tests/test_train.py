from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vaelab
from vaelab import training
from vaelab.config import PIXELCNN_FREE_BITS, PIXELCNN_LR
from vaelab.models import VAE

FAST = {"arch": "mlp", "latent_dim": 4, "device": "cpu", "progress": False, "batch_size": 256}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_same_seed_same_result_and_another_seed_differs(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        vaelab.train(tmp_path / name, epochs=1, seed=seed, binarize="dynamic", **FAST)
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
