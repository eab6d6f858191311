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
INFERENCE_BATCH = 512  # images per forward pass when nothing else is asked for
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


@torch.no_grad()
def map_batches(
    fn: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    device: torch.device,
    batch_size: int = INFERENCE_BATCH,
) -> torch.Tensor:
    """fn applied to `inputs` in batches on `device`, concatenated on the CPU (float32).

    uint8 inputs reach `fn` as floats in [0, 1]; float inputs (images or latents) as they are.
    """
    parts = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size].to(device, non_blocking=True)
        if batch.dtype == torch.uint8:
            batch = to_unit(batch)
        parts.append(fn(batch).float().cpu())
    if not parts:
        return torch.empty(0)
    return torch.cat(parts)
