"""--log tensorboard|mlflow: the per-epoch figures of metrics.jsonl and a few sample grids, read
back through each project's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import vaelab
from conftest import run_cli
from vaelab.tracking import sample_epochs

FAST = {"arch": "mlp", "latent_dim": 4, "device": "cpu", "progress": False, "batch_size": 256}


def test_sample_grids_go_to_a_few_epochs_the_last_included() -> None:
    assert sample_epochs(1) == {1}
    assert sample_epochs(4) == {1, 2, 3, 4}
    assert sample_epochs(10) == {2, 4, 6, 8, 10}
    assert sample_epochs(45) == {11, 22, 33, 44, 45}


def test_tensorboard_gets_every_epochs_figures_and_sample_grids(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    vaelab.train(run, epochs=3, log="tensorboard", **FAST)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key, group in (("val_loss", "loss"), ("train_kl", "loss"), ("lr", "train")):
        logged = events.Scalars(f"{group}/{key}")
        assert [e.step for e in logged] == [1, 2, 3]
        assert np.allclose([e.value for e in logged], [row[key] for row in metrics], rtol=1e-6)
    grids = events.Images("samples")
    assert [g.step for g in grids] == [1, 2, 3] and grids[0].width > 8 * 28
    assert "latent_dim" in events.Tensors("settings/text_summary")[0].tensor_proto.string_val[0].decode()


def test_mlflow_gets_params_metrics_and_grids_and_a_resume_continues_the_same_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # MLflow's artifacts go beside the database by default
    run = tmp_path / "run"
    vaelab.train(run, epochs=2, log="mlflow", **FAST)
    vaelab.train(run, epochs=3, resume=True, log="mlflow", progress=False)
    client = MlflowClient(tracking_uri=uri)
    run_id = (run / "mlflow_run_id").read_text().strip()
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    assert logged.data.params["latent_dim"] == "4" and logged.data.params["log"] == "mlflow"
    history = client.get_metric_history(run_id, "val_loss")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m.step for m in history] == [1, 2, 3]  # one run across the resume
    assert np.allclose([m.value for m in history], [row["val_loss"] for row in metrics])
    artifacts = {a.path for a in client.list_artifacts(run_id, "samples")}
    assert {"samples/epoch_0002.png", "samples/epoch_0003.png"} <= artifacts


def test_an_unreachable_mlflow_is_one_line_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    code, _, err = run_cli(["train", "--arch", "mlp", "--epochs", "1", "--log", "mlflow", "--out",
                            str(tmp_path / "r")], capsys)  # fmt: skip
    assert code == 2 and "cannot log to MLflow" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "model.safetensors").exists()
