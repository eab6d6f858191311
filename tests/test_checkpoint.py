from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

import vaelab


def test_load_rebuilds_the_model_in_eval_mode_from_json_and_safetensors(vae_run: Path) -> None:
    model = vaelab.load(vae_run)
    assert isinstance(model, vaelab.VAE) and not model.training
    config = json.loads((vae_run / "config.json").read_text())
    assert list(config) == ["model", "train"] and config["model"]["latent_dim"] == 2
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


def test_run_files_can_be_shared(vae_run: Path) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    for path in vae_run.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path.name
