"""A run folder: ``config.json`` (sorted keys) + ``model.safetensors`` (the weights with the best
validation loss), with the training state (latest weights, optimizer, random generator, epoch)
in ``training_state.safetensors`` and one line per epoch in ``metrics.jsonl``. Every file is written atomically; loading never unpickles (JSON + safetensors).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from vaelab.config import ModelConfig, TrainConfig
from vaelab.errors import VaelabError
from vaelab.fileio import atomic_output, write_json
from vaelab.models import AE, VAE, build_model

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE = "training_state.safetensors"
METRICS = "metrics.jsonl"


def is_run(run_dir: str | Path) -> bool:
    """True when the folder holds a saved model."""
    return (Path(run_dir) / CONFIG).is_file() and (Path(run_dir) / WEIGHTS).is_file()


def read_run_config(run_dir: str | Path) -> tuple[ModelConfig, TrainConfig]:
    """The model and training settings saved in a run folder."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise VaelabError(
            f"{run_dir} is not a vaelab run (no {CONFIG}); train one with `vaelab train --out {run_dir}`"
        )
    try:
        data = json.loads(path.read_text())
        return ModelConfig.from_dict(data["model"]), TrainConfig.from_dict(data["train"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise VaelabError(
            f"{path} is not a valid vaelab config ({error}); retrain or restore the file"
        ) from None


def save_model(run_dir: Path, model: AE | VAE, train_config: TrainConfig, epoch: int) -> None:
    """Write the weights (as of `epoch`) and config.json of `model` into run_dir, atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_output(run_dir / WEIGHTS, durable=True) as tmp:
        save_file(state, str(tmp), metadata={"epoch": str(epoch), "format": "vaelab"})
    write_json(
        run_dir / CONFIG, {"model": model.config.to_dict(), "train": train_config.to_dict()}, durable=True
    )


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> AE | VAE:
    """Rebuild the model saved in run_dir from config.json + model.safetensors, in eval mode."""
    model_config, _ = read_run_config(run_dir)
    path = Path(run_dir) / WEIGHTS
    if not path.is_file():
        raise VaelabError(f"{run_dir} has no {WEIGHTS}: training never finished an epoch; train it again")
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as error:
        raise VaelabError(
            f"{path} is not a readable safetensors file ({error}); retrain or restore it"
        ) from None
    model = build_model(model_config)
    _load_state(model, upgrade_weights(state), path)
    return model.to(device).eval()


def upgrade_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights saved by earlier releases under today's names: the pixelcnn layers were `head.*`
    before pixel distributions became modules of their own (`pixels.*`)."""
    return {
        ("pixels." + k.removeprefix("head.") if k.startswith("head.") else k): v for k, v in state.items()
    }


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing[:3])}" if missing else "",
                f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
                f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, config needs "
                f"{tuple(expected[wrong[0]].shape)}"
                if wrong
                else "",
            )
            if part
        )
        raise VaelabError(
            f"{path} does not match its {CONFIG} ({detail}); the files come from different runs"
        )
    model.load_state_dict(state)


def save_training_state(
    run_dir: Path,
    model: AE | VAE,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    progress: dict[str, Any],
    ema: AE | VAE | None = None,
) -> None:
    """Write what --resume needs: the latest weights (model.safetensors holds the best ones),
    Adam's moments, the random generator, the weight average if any (`ema`), and `progress`
    (epoch, best validation loss, ...)."""
    optim_state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng_state": generator.get_state().cpu()}
    for prefix, module in (("model", model), ("ema", ema)):
        for name, value in module.state_dict().items() if module is not None else ():
            tensors[f"{prefix}.{name}"] = value.detach().contiguous().cpu()
    for index, slots in optim_state["state"].items():
        for key, value in slots.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    metadata = {"progress": json.dumps(progress), "param_groups": json.dumps(optim_state["param_groups"])}
    with atomic_output(run_dir / STATE, durable=True) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_training_state(
    run_dir: Path,
    model: AE | VAE,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    ema: AE | VAE | None = None,
) -> dict[str, Any]:
    """Restore what save_training_state wrote into model, optimizer, generator and `ema` (left as
    the restored model's weights if the state holds no average); return `progress`."""
    path = run_dir / STATE
    if not path.is_file():
        raise VaelabError(
            f"{run_dir} has no {STATE}, so it cannot be resumed; train it again without --resume"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
        progress = json.loads(metadata["progress"])
        param_groups = json.loads(metadata["param_groups"])
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        raise VaelabError(f"{path} is unreadable ({error}); train again without --resume") from None
    weights = upgrade_weights(
        {name.removeprefix("model."): v for name, v in tensors.items() if name.startswith("model.")}
    )
    _load_state(model, weights, path)
    if ema is not None:
        averaged = upgrade_weights(
            {name.removeprefix("ema."): v for name, v in tensors.items() if name.startswith("ema.")}
        )
        _load_state(ema, averaged or weights, path)
    optim: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            optim.setdefault(int(index), {})[key] = (
                value  # load_state_dict moves it to the parameter's device
            )
    optimizer.load_state_dict({"state": optim, "param_groups": param_groups})
    generator.set_state(tensors["rng_state"])
    return progress


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch metrics of a run, oldest first."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl atomically (it is small: one line per epoch)."""
    with atomic_output(run_dir / METRICS, durable=True) as tmp:
        tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
