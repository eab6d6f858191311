"""Which PyTorch operators a piece of code dispatches: the measure of a training step's host work.

On a GPU a small network's training step is bound by the host issuing its kernels, whatever the
batch; the operators a step dispatches are the same on every device, so they can be counted on the
CPU. `benchmarks/ops_per_step.py` and the tests count them with `OperatorLog`.
"""

from __future__ import annotations

import itertools
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode


class OperatorLog(TorchDispatchMode):
    """The name of every operator dispatched while active, in order; below autograd, so backward
    and optimizer operators are named too. `mark()` notes where a part (a training step) starts."""

    MARK = "-- mark --"

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))

    def mark(self) -> None:
        """Note that a part starts here."""
        self.names.append(self.MARK)

    def parts(self) -> list[list[str]]:
        """The operators of each part: from one mark to the next (what follows the last is left out)."""
        marks = [i for i, name in enumerate(self.names) if name == self.MARK]
        return [self.names[a + 1 : b] for a, b in itertools.pairwise(marks)]
