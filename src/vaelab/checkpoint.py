"""A run folder: ``config.json`` (sorted keys) + ``model.safetensors`` (the weights with the best
validation loss), with the training state (latest weights, optimizer, random generator, epoch)
in ``training_state.safetensors`` and one line per epoch in ``metrics.jsonl``. Every file is
written atomically; loading never unpickles (JSON + safetensors). While a process trains in the
folder it holds a lock on ``.train.lock`` (see RunLock), so a second one cannot write there too.

config.json holds ``{"format": 2, "model": ModelConfig, "train": TrainConfig's own settings}``.
Every change of these formats, and how older files are read, lives here: runs saved by vaelab
0.1.0 (no "format" key) load and resume unchanged (see upgrade_config and upgrade_weights).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from vaelab.config import ModelConfig, TrainConfig, setting_names
from vaelab.device import free_memory
from vaelab.errors import VaelabError
from vaelab.fileio import atomic_output, checked_write, write_json
from vaelab.models import AE, VAE, build_model

try:
    import fcntl
except ImportError:  # Windows: runs are not locked
    fcntl = None  # type: ignore[assignment]

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE = "training_state.safetensors"
METRICS = "metrics.jsonl"
LOCK = ".train.lock"
CONFIG_FORMAT = 2

# What vaelab 0.1.0 meant by a setting missing from its config.json: the behaviour before the
# setting existed (a model saved before `hidden` had no dense layer, and so on).
V1_MODEL_DEFAULTS: dict[str, Any] = {
    "model": "vae", "arch": "conv", "latent_dim": 16, "loss": "bernoulli", "beta": 1.0, "objective": "elbo",
    "iw_samples": 5, "free_bits": 0.0, "image_channels": 1, "image_height": 28, "image_width": 28,
    "conv_channels": [], "mlp_hidden": 400, "hidden": 0, "decoder": "factorized", "ar_channels": 16,
    "ar_layers": 2,
}  # fmt: skip
V1_TRAIN_DEFAULTS: dict[str, Any] = {"lr_warmup_epochs": 0}  # runs saved before the lr warm-up had none


def is_run(run_dir: str | Path) -> bool:
    """True when the folder holds a saved model."""
    return (Path(run_dir) / CONFIG).is_file() and (Path(run_dir) / WEIGHTS).is_file()


def can_resume(run_dir: str | Path) -> bool:
    """True when the folder holds a run's settings and training state (perhaps no model yet)."""
    return (Path(run_dir) / CONFIG).is_file() and (Path(run_dir) / STATE).is_file()


class RunLock:
    """Keeps a second training process out of a run folder while one is training in it.

    acquire() takes an advisory lock (flock) on RUN/.train.lock, held until the `with` block ends.
    The system drops it when the process ends however it ends, so a killed run leaves no stale
    lock and --resume can go on at once. Where locks are unavailable (Windows, some network file
    systems) training goes on unlocked, as before locks existed.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Lock the run folder (which must exist); a VaelabError when another process holds it."""
        if self._file is not None or fcntl is None:
            return
        try:
            file = open(self.run_dir / LOCK, "a+", encoding="utf-8")  # noqa: SIM115 (held past this call)
        except OSError:
            return  # a folder that cannot be written is reported by the caller's own check
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            pid, _, host = file.read().strip().partition(" ")
            file.close()
            holder = f"process {pid} on {host}" if pid and host else "another process"
            raise VaelabError(
                f"{self.run_dir} is being trained by {holder}; wait for it to end (or stop it), "
                "then continue with resume=True (--resume)"
            ) from None
        except OSError:
            file.close()
            return  # this file system has no locks
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()} {socket.gethostname()}\n")
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            self._file.truncate(0)  # no holder named once it has ended
            self._file.close()  # closing drops the lock
            self._file = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The parsed config.json of a run, upgraded to today's format."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise VaelabError(
            f"{run_dir} is not a vaelab run (no {CONFIG}); train one with `vaelab train --out {run_dir}`"
        )
    try:
        return upgrade_config(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, IndexError) as error:
        raise VaelabError(
            f"{path} is not a valid vaelab config ({error}); retrain or restore the file"
        ) from None


def read_model_config(run_dir: str | Path) -> ModelConfig:
    """The settings the run's network was built from."""
    return ModelConfig.from_dict(read_config(run_dir)["model"])


def read_train_config(run_dir: str | Path) -> TrainConfig:
    """Every setting the run was trained with, its model config included."""
    data = read_config(run_dir)
    train = TrainConfig.from_dict(data["train"])
    return dataclasses.replace(train, model_config=ModelConfig.from_dict(data["model"]))


def upgrade_config(data: dict[str, Any]) -> dict[str, Any]:
    """A config.json of any release in today's format. Format 1 (vaelab 0.1.0) had a flat
    training config repeating the model's settings, and conv channels as a list per stage."""
    if data.get("format") == CONFIG_FORMAT:
        return data
    if "format" in data:
        raise VaelabError(f"config format {data['format']} is newer than this vaelab; upgrade vaelab")
    model = {**V1_MODEL_DEFAULTS, **data["model"]}
    stages = model.pop("conv_channels")
    train = {**V1_TRAIN_DEFAULTS, **data["train"]}
    model["channels"] = stages[0] if stages else 32  # an empty list meant 32 (or an mlp)
    if stages and ModelConfig.from_dict(model).conv_channels() != stages:
        raise VaelabError(f"conv channels {stages} cannot be expressed by one channels setting")
    train = {k: v for k, v in train.items() if k not in setting_names(ModelConfig)}
    return {"format": CONFIG_FORMAT, "model": model, "train": train}


def to_host(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of `tensors`. From a GPU every copy is queued at once (non-blocking,
    into pinned memory) and the host waits once for all of them, not once per tensor."""
    copies = {k: v.detach().contiguous().to("cpu", non_blocking=True, copy=True) for k, v in tensors.items()}
    devices = {v.device for v in tensors.values() if v.device.type == "cuda"}
    for device in devices:
        torch.cuda.current_stream(device).synchronize()
    return copies


class KeptCopies:
    """Copies of tensors kept on the tensors' own devices (a GPU's for a GPU run), refreshed in
    place by one multi-tensor copy per device and type, to be brought to the host (`to_host`) only
    when written.

    Between epochs the trainer keeps the last finished epoch's weights and training state this way:
    a run writes its folder every few seconds, not after every epoch, and a copy to the host is one
    operator and one transfer per tensor plus a wait for the GPU, where this is a few. On a
    GPU the copies take more of its memory; where they would take more than DEVICE_SHARE of the
    memory it has free, they are made on the host instead (`to_host`, at every `take`)."""

    DEVICE_SHARE = 0.25

    def __init__(self) -> None:
        self._layout: list[tuple[str, torch.Size, torch.dtype, torch.device]] = []
        self._copies: dict[str, torch.Tensor] = {}
        self._groups: list[list[str]] = []  # names of one device and type: one multi-tensor copy each
        self._on_host = False

    def take(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copy `tensors` (name -> tensor) into the kept copies, made anew (and where they are kept
        decided anew) when names, shapes, types or devices change; return the copies (valid until
        the next `take`)."""
        layout = [(name, t.shape, t.dtype, t.device) for name, t in tensors.items()]
        if layout != self._layout:
            self._layout = layout
            self._on_host = not _fit_on_their_devices(tensors, self.DEVICE_SHARE)
            self._copies = (
                {}
                if self._on_host
                else {
                    k: torch.empty_like(v, memory_format=torch.contiguous_format) for k, v in tensors.items()
                }
            )
            # one multi-tensor copy per device and type, as optimizers group their foreach
            # operators: a GPU run's generator state is on the host, and Adam's step counts may be
            groups: dict[tuple[torch.device, torch.dtype], list[str]] = {}
            for name, _, dtype, device in layout:
                groups.setdefault((device, dtype), []).append(name)
            self._groups = list(groups.values())
        if self._on_host:
            return to_host(tensors)
        with torch.no_grad():
            for names in self._groups:
                torch._foreach_copy_([self._copies[n] for n in names], [tensors[n] for n in names])
        return self._copies


def _fit_on_their_devices(tensors: dict[str, torch.Tensor], share: float) -> bool:
    """Whether a copy of `tensors` takes at most `share` of the free memory of each GPU they are on."""
    needed: dict[torch.device, int] = {}
    for tensor in tensors.values():
        if tensor.device.type == "cuda":
            needed[tensor.device] = needed.get(tensor.device, 0) + tensor.numel() * tensor.element_size()
    return all(size <= share * free_memory(device) for device, size in needed.items())


def write_model(
    run_dir: Path,
    weights: dict[str, torch.Tensor],
    model_config: ModelConfig,
    train_config: TrainConfig,
    epoch: int,
) -> None:
    """Write `weights` (a snapshot, as of `epoch`) and config.json into run_dir, atomically."""
    with checked_write(run_dir / WEIGHTS), atomic_output(run_dir / WEIGHTS, durable=True) as tmp:
        save_file(weights, str(tmp), metadata={"epoch": str(epoch), "format": "vaelab"})
    write_config(run_dir, model_config, train_config)


def write_config(run_dir: Path, model_config: ModelConfig, train_config: TrainConfig) -> None:
    """Write config.json: written when training starts (so a run killed in its first epoch can be
    resumed from its training state) and again with every saved model."""
    config = {"format": CONFIG_FORMAT, "model": model_config.to_dict(), "train": train_config.to_dict()}
    with checked_write(run_dir / CONFIG):
        write_json(run_dir / CONFIG, config, durable=True)


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> AE | VAE:
    """Rebuild the model saved in run_dir from config.json + model.safetensors, in eval mode."""
    model_config = read_model_config(run_dir)
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


def weights_epoch(run_dir: str | Path) -> int | None:
    """The epoch whose weights model.safetensors holds (from its metadata); None when unknown."""
    try:
        with safe_open(str(Path(run_dir) / WEIGHTS), framework="pt") as f:
            return int((f.metadata() or {})["epoch"])
    except (SafetensorError, OSError, KeyError, ValueError):
        return None


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


def training_state(
    model: AE | VAE,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    progress: dict[str, Any],
    ema: AE | VAE | None = None,
    epoch_order: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """What --resume needs: the latest weights (model.safetensors holds the best ones), Adam's
    moments, the random generator's state, the weight average if any (`ema`), and `progress` (epoch,
    best validation loss, ...); within an epoch, `progress["partial"]` says how far it got and
    `epoch_order` is the epoch's order of the training images. The tensors are the live ones (but
    the generator's state): copy them (`to_host`, `KeptCopies.take`) before training goes on, then
    write the copies with write_training_state."""
    optim_state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng_state": generator.get_state()}
    if epoch_order is not None:
        tensors["epoch_order"] = epoch_order
    for prefix, module in (("model", model), ("ema", ema)):
        if module is not None:
            tensors.update({f"{prefix}.{name}": value for name, value in live_state(module).items()})
    for index, slots in optim_state["state"].items():
        for key, value in slots.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value)
    metadata = {"progress": json.dumps(progress), "param_groups": json.dumps(optim_state["param_groups"])}
    return tensors, metadata


def live_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state_dict without a `detach` of each tensor (an operator each): the parameters
    and buffers themselves, to copy (`KeptCopies.take`, `to_host`), never to change."""
    return module.state_dict(keep_vars=True)


def write_training_state(run_dir: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a copy of a training_state into run_dir, atomically and durably."""
    with checked_write(run_dir / STATE), atomic_output(run_dir / STATE, durable=True) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


class BackgroundWriter:
    """Writes run files in one background thread, in the order they were handed over, so a
    training step never waits for the disk. Hand over snapshots (copies), never live tensors.
    A failed write is raised by the next `submit` or by `close`, which waits for every write."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vaelab-writer")
        self._pending: list[concurrent.futures.Future[None]] = []

    def submit(self, write: Callable[..., None], *args: Any) -> None:
        self._raise_failed()
        self._pending.append(self._pool.submit(write, *args))

    def _raise_failed(self) -> None:
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for future in done:
            future.result()  # re-raises the write's error

    def close(self) -> None:
        """Wait for every write; raise the first that failed."""
        try:
            for future in self._pending:
                future.result()
        finally:
            self._pending = []
            self._pool.shutdown(wait=True)


def saved_progress(run_dir: Path) -> dict[str, Any] | None:
    """The `progress` of the run's training state (epoch, best validation loss, ...) read from the
    file's header alone, or None when there is no readable state (load_training_state says why)."""
    try:
        with safe_open(str(run_dir / STATE), framework="pt") as f:
            return json.loads((f.metadata() or {})["progress"])
    except (SafetensorError, OSError, KeyError, ValueError):
        return None


def load_training_state(
    run_dir: Path,
    model: AE | VAE,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    ema: AE | VAE | None = None,
) -> dict[str, Any]:
    """Restore what write_training_state wrote into model, optimizer, generator and `ema` (left as
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
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, slots in optim.items():
        moment = slots.get("exp_avg")
        if index >= len(params) or (moment is not None and moment.shape != params[index].shape):
            raise VaelabError(
                f"{path} holds optimizer state for another network; train again without --resume"
            )
    optimizer.load_state_dict({"state": optim, "param_groups": param_groups})
    generator.set_state(tensors["rng_state"])
    if "partial" in progress:
        if "epoch_order" not in tensors:
            raise VaelabError(
                f"{path} stops within an epoch but lacks its image order; train again without --resume"
            )
        progress["partial"]["order"] = tensors["epoch_order"]
    return progress


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch metrics of a run, oldest first; a damaged file is one line naming it."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
            row, problem = None, str(error)
        else:
            problem = "not an epoch's figures"
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            raise VaelabError(
                f"{path} is damaged (line {number}: {problem}); restore it from a copy, or train the run again"
            )
        rows.append(row)
    return rows


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl atomically (it is small: one line per epoch)."""
    with checked_write(run_dir / METRICS), atomic_output(run_dir / METRICS, durable=True) as tmp:
        tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
