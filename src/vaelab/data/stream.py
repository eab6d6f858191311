"""Training images read from a memory-mapped file batch by batch, by DataLoader worker processes.

A folder larger than the memory budget (`max_memory`) is decoded once into a uint8 file (see
``vaelab.data.cache``); the trainer then reads each step's images from it in the order it would
have taken them from memory, so a streamed run and an in-memory run of the same images train the
same weights.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType

import numpy as np
import torch
from torch.utils.data import DataLoader


@dataclass(frozen=True)
class ImageFile:
    """Where a memory-mapped image array lives: the raw uint8 file and its full [N, C, H, W] shape."""

    path: str
    shape: tuple[int, int, int, int]

    def open(self) -> np.ndarray:
        return np.memmap(self.path, dtype=np.uint8, mode="r", shape=self.shape)


class _Rows:
    """A map-style dataset over rows of an ImageFile; each worker opens the file itself (so nothing
    large is pickled to it), and a whole batch is read in one fancy index."""

    def __init__(self, file: ImageFile) -> None:
        self.file = file
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return self.file.shape[0]

    def __getitems__(self, rows: list[int]) -> torch.Tensor:
        if self._array is None:
            self._array = self.file.open()
        return torch.from_numpy(np.ascontiguousarray(self._array[np.asarray(rows)]))

    def __getitem__(self, row: int) -> torch.Tensor:
        return self.__getitems__([row])[0]


def _leave_sigterm_to_the_trainer(worker_id: int) -> None:
    """A scheduler's SIGTERM reaches every process of the job (Slurm signals the whole step): a
    worker that died of it would stop the trainer mid-step with an error, before it could save. So
    a worker lets the first SIGTERM pass and ends on the next, which is the trainer ending it."""
    signal.signal(signal.SIGTERM, _end_on_the_next_sigterm)


def _end_on_the_next_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _whole(batch: torch.Tensor) -> torch.Tensor:
    return batch


class DiskImages:
    """Rows `rows` of an ImageFile: what the trainer uses in place of an in-memory uint8 tensor."""

    def __init__(self, file: ImageFile, rows: torch.Tensor, workers: int) -> None:
        self.file, self.rows, self.workers = file, rows, workers

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.file.shape[1:])

    def batches(
        self,
        order: torch.Tensor,
        batch_size: int,
        stop: int,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
        skip: int = 0,
    ) -> Iterator[torch.Tensor]:
        """uint8 batches on `device`: positions order[start:start + batch_size] (this rank's share)
        for each start below `stop`, after the first `skip` batches; read ahead by the workers."""
        order = order.cpu()
        plan = [
            self.rows[order[start : min(start + batch_size, stop)][rank::world]].tolist()
            for start in range(0, stop, batch_size)
        ][skip:]
        loader = DataLoader(
            _Rows(self.file),
            batch_sampler=plan,
            collate_fn=_whole,
            num_workers=self.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            worker_init_fn=_leave_sigterm_to_the_trainer,
        )
        for batch in loader:
            yield batch.to(device, non_blocking=True)
