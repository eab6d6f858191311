"""Where models run, and the one loop that feeds them: batches in, results back on the CPU.

Images are uint8 [N, C, H, W] (converted to floats in [0, 1] on the device) or floats already;
latents [N, D].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vaelab.data.transforms import to_unit
from vaelab.errors import VaelabError

DEVICES = ("auto", "cpu", "cuda", "mps")
INFERENCE_BATCH = 512  # at most this many images per forward pass when nothing else is asked for
# Values (sub-pixels: images x channels x height x width) a pass of map_batches takes in or gives
# out: 512 digits of 28 x 28 on a CPU, where larger passes are slower (see DECODE_BUDGET), 16 times
# as many on a GPU. A fixed count of images made a pass of 512 colour images of 256 px hold GBs.
INFERENCE_VALUES = {"cpu": 512 * 28 * 28, "cuda": 16 * 512 * 28 * 28}
# Pixels decoded per pass when scoring many latent draws. On a CPU, tensors beyond a few MB are
# mapped fresh from the kernel at every allocation and the page faults cost more than the
# arithmetic: 128 decodes of 28 x 28 ran 2.5-3x faster than 4,096 (docs/benchmarks.md).
DECODE_BUDGET = {"cpu": 128 * 28 * 28, "cuda": 4096 * 28 * 28}


def resolve_device(name: str | torch.device) -> torch.device:
    """'auto' -> CUDA, then Apple MPS, then CPU; a named device must be available."""
    if isinstance(name, torch.device):
        return name
    if name not in DEVICES and not name.startswith("cuda:"):
        raise VaelabError(f"device {name!r} is not one of: {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VaelabError(f"device {name!r} was asked for but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if name == "mps" and not torch.backends.mps.is_available():
        raise VaelabError("device 'mps' was asked for but Apple MPS is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def decode_budget(device: torch.device) -> int:
    """Image pixels (images x channels x height x width) to decode in one pass on `device`."""
    return DECODE_BUDGET.get(device.type, DECODE_BUDGET["cpu"])


def model_device(model: nn.Module) -> torch.device:
    """The device a model's weights live on."""
    return next(model.parameters()).device


def free_memory(device: torch.device) -> int:
    """Bytes free on a GPU (beyond what PyTorch holds in its cache)."""
    return torch.cuda.mem_get_info(device)[0]


@torch.no_grad()
def map_batches(
    fn: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    device: torch.device,
    batch_size: int | None = None,
) -> torch.Tensor:
    """fn applied to `inputs` in batches on `device`, concatenated on the CPU (float32).

    uint8 inputs reach `fn` as floats in [0, 1]; float inputs (images or latents) as they are.
    Without a `batch_size`, the first pass takes one row, to see how many values a row brings in
    and out, and later passes as many rows as keep both within INFERENCE_VALUES (at most
    INFERENCE_BATCH), so that large images take small batches.
    """
    rows = Rows(len(inputs))
    start, size = 0, batch_size or 1
    while start < len(inputs):
        batch = inputs[start : start + size].to(device, non_blocking=True)
        if batch.dtype == torch.uint8:
            batch = to_unit(batch)
        result = fn(batch).float()
        rows.put("out", start, result)
        if batch_size is None and start == 0:  # the one-row pass: how many rows each later pass takes
            per_row = max(batch.numel(), result.numel())
            values = INFERENCE_VALUES.get(device.type, INFERENCE_VALUES["cpu"])
            size = max(1, min(INFERENCE_BATCH, values // per_row))
        start += len(batch)
    return rows.get("out") if len(inputs) else torch.empty(0)


class Rows:
    """Per-image results of a pass in batches, written into CPU tensors of all `n` rows, each
    allocated when its first batch arrives.

    Keeping each batch's small result and concatenating at the end, the usual way, leaves a small
    live allocation in each hole that the batch's large temporaries left in glibc's heap, so the
    holes cannot be merged and reused: a process grew by ~100 KB per 64 px image scored (700 MB
    for 6,000 images), memory no memory limit gives back."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.tensors: dict[str, torch.Tensor] = {}

    def put(self, name: str, start: int, values: torch.Tensor) -> None:
        """Rows start.. of `name` are `values` [B, ...] (copied to the CPU)."""
        if name not in self.tensors:
            self.tensors[name] = torch.empty((self.n, *values.shape[1:]), dtype=values.dtype)
        self.tensors[name][start : start + len(values)].copy_(values)

    def get(self, name: str) -> torch.Tensor | None:
        """All rows of `name`, or None if no batch gave any."""
        return self.tensors.get(name)
