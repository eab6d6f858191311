"""Run folders: loading without unpickling, precise mismatch errors, files others can read, and runs
saved by earlier releases."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

import vaelab
from vaelab import checkpoint
from vaelab.apps.run_report import evaluation_section
from vaelab.cli import main
from vaelab.distributions import Bernoulli


def test_load_rebuilds_the_model_in_eval_mode_from_json_and_safetensors(vae_run: Path) -> None:
    model = vaelab.load(vae_run)
    assert isinstance(model, vaelab.VAE) and not model.training
    config = json.loads((vae_run / "config.json").read_text())
    assert list(config) == ["format", "model", "train"] and config["model"]["latent_dim"] == 2
    x = torch.rand(4, 1, 28, 28)
    mu, log_var = model.encode(x)
    assert mu.shape == log_var.shape == (4, 2)
    image = model.decode(mu)
    assert image.shape == (4, 1, 28, 28) and image.min() >= 0 and image.max() <= 1
    torch.testing.assert_close(torch.sigmoid(model.logits(mu, image)), image)


def test_ae_encode_returns_z(ae_run: Path) -> None:
    model = vaelab.load(ae_run)
    assert isinstance(model, vaelab.AE) and model.encode(torch.rand(3, 1, 28, 28)).shape == (3, 2)


def test_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(vaelab.VaelabError, match="is not a vaelab run"):
        vaelab.load(tmp_path)


def test_weights_that_do_not_match_the_config(vae_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    shutil.copytree(vae_run, run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["latent_dim"] = 3
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(vaelab.VaelabError, match="does not match its config.json.*shape"):
        vaelab.load(run)


def test_corrupt_weights(vae_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    shutil.copytree(vae_run, run)
    (run / "model.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(vaelab.VaelabError, match="not a readable safetensors file"):
        vaelab.load(run)


def test_a_damaged_metrics_file_is_one_line_and_the_report_notes_a_damaged_eval(
    vae_run: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "r"
    shutil.copytree(vae_run, run)
    good = (run / "metrics.jsonl").read_text().splitlines()
    for damage, problem in (
        ("garbage\n", "line 1: Expecting value"),
        (good[0] + "\n[3]\n", "line 2: not an epoch's figures"),
        (good[0] + "\n\x81\n", "line 2: 'utf-8' codec can't decode"),
    ):
        (run / "metrics.jsonl").write_bytes(damage.encode("latin-1"))
        with pytest.raises(vaelab.VaelabError, match=f"metrics.jsonl is damaged \\({problem}"):
            checkpoint.read_metrics(run)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "9", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith("restore it from a copy, or train the run again")
    assert "(line 2: 'utf-8' codec" in err  # the last damage
    for damage in ("[1, 2", "[1, 2]"):
        (run / "eval.json").write_text(damage)
        section = evaluation_section(run)
        assert section.explanation.startswith("eval.json is unreadable (") and section.table is None
        assert section.explanation.endswith(f"run `vaelab evaluate {run}` again and write the report again.")


def test_run_files_can_be_shared(vae_run: Path) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    for path in vae_run.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path.name


FIXTURE = Path(__file__).parent / "fixtures" / "run-0.1.0"  # a pixelcnn VAE saved by vaelab 0.1.0


def test_a_run_saved_by_vaelab_0_1_0_loads_and_resumes(tmp_path: Path) -> None:
    run = tmp_path / "old"
    shutil.copytree(FIXTURE, run)
    config = checkpoint.read_train_config(run)
    model_config = config.model_config
    assert (model_config.decoder, model_config.channels, model_config.conv_channels()) == (
        "pixelcnn",
        4,
        [4, 8],
    )
    assert (model_config.free_bits, config.lr, config.lr_warmup_epochs) == (0.25, 0.002, 2)
    model = vaelab.load(run)  # its pixelcnn weights were saved as head.*
    x = (torch.rand(4, 1, 28, 28) > 0.5).float()
    mu, _ = model.encode(x)
    assert torch.isfinite(model.reconstruction_loss(mu, x)).all()
    result = vaelab.train(run, resume=True, epochs=2, device="cpu", progress=False)
    assert result["epochs"] == 2 and len(checkpoint.read_metrics(run)) == 2
    assert json.loads((run / "config.json").read_text())["format"] == checkpoint.CONFIG_FORMAT


def test_settings_an_old_config_lacks_mean_what_they_meant_then() -> None:
    old = {
        "model": {
            "model": "vae",
            "arch": "conv",
            "latent_dim": 4,
            "conv_channels": [32, 64],
        },  # before hidden
        "train": {"epochs": 3, "latent_dim": 4, "free_bits": None},  # before the lr warm-up
    }
    upgraded = checkpoint.upgrade_config(old)
    assert upgraded["model"]["hidden"] == 0 and upgraded["model"]["decoder"] == "factorized"
    assert upgraded["model"]["channels"] == 32 and upgraded["train"] == {"epochs": 3, "lr_warmup_epochs": 0}
    net = vaelab.build_model(vaelab.ModelConfig.from_dict(upgraded["model"]))
    assert isinstance(net.encoder.head, torch.nn.Linear) and isinstance(net.pixels, Bernoulli)
    with pytest.raises(vaelab.VaelabError, match="newer than this vaelab"):
        checkpoint.upgrade_config({"format": 99, "model": {}, "train": {}})


def test_background_writer_writes_in_order_and_raises_a_failed_write() -> None:
    writer = checkpoint.BackgroundWriter()
    written: list[int] = []
    for index in range(5):
        writer.submit(written.append, index)

    def full_disk() -> None:
        raise vaelab.VaelabError("cannot write model.safetensors (No space left on device)")

    writer.submit(full_disk)
    with pytest.raises(vaelab.VaelabError, match="No space left"):
        writer.close()
    assert written == [0, 1, 2, 3, 4]


def test_kept_copies_are_refreshed_in_place_and_training_cannot_change_them() -> None:
    model = vaelab.build_model(vaelab.ModelConfig(arch="conv", latent_dim=2))
    model.to(memory_format=torch.channels_last)
    kept = checkpoint.KeptCopies()
    copies = kept.take(checkpoint.live_state(model))
    first = {k: v.data_ptr() for k, v in copies.items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    assert all(not torch.equal(copies[k], v) for k, v in model.state_dict().items() if v.is_floating_point())
    again = kept.take(checkpoint.live_state(model))  # the same memory, now with the new values
    assert {k: v.data_ptr() for k, v in again.items()} == first
    assert all(torch.equal(again[k], v) and again[k].is_contiguous() for k, v in model.state_dict().items())
    assert not any(v.requires_grad for v in again.values())
    other = kept.take({"w": torch.ones(3)})  # other tensors: new copies
    assert list(other) == ["w"] and torch.equal(other["w"], torch.ones(3))


def test_kept_copies_too_big_for_the_device_are_made_on_the_host_at_every_take(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(checkpoint, "_fit_on_their_devices", lambda *_: False)
    weights = {"w": torch.arange(4.0)}
    kept = checkpoint.KeptCopies()
    first = kept.take(weights)
    weights["w"].add_(1.0)
    second = kept.take(weights)
    assert torch.equal(first["w"], torch.arange(4.0)) and torch.equal(second["w"], torch.arange(4.0) + 1)
    assert first["w"].device.type == "cpu" and first["w"].data_ptr() != second["w"].data_ptr()


def test_what_goes_to_the_host_is_a_copy_that_training_cannot_change() -> None:
    model = vaelab.build_model(vaelab.ModelConfig(arch="mlp", latent_dim=2))
    saved = checkpoint.to_host(model.state_dict())  # on the CPU already: copied all the same
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    assert all(not torch.equal(saved[k], v) for k, v in model.state_dict().items())
