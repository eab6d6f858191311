"""Training images read from a file of decoded images batch by batch, by DataLoader worker processes.

A folder larger than the memory budget (`max_memory`) is decoded once into a uint8 file (see
``vaelab.data.cache``); the trainer then reads each step's images from it in the order it would
have taken them from memory, so a streamed run and an in-memory run of the same images train the
same weights.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import multiprocessing.context
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import BinaryIO

import numpy as np
import torch
from torch.utils.data import DataLoader


@dataclass(frozen=True)
class ImageFile:
    """Where a decoded image array lives: the raw uint8 file and its full [N, C, H, W] shape, and
    the shared lock that keeps `vaelab cache clear` from deleting it while it is in use (held by
    the process that opened it for as long as this object lives; see vaelab.data.cache.Held)."""

    path: str
    shape: tuple[int, int, int, int]
    held: object = field(default=None, compare=False, repr=False)


class _Rows:
    """A map-style dataset over rows of an ImageFile. Each worker opens the file itself (so nothing
    large is pickled to it) and reads a batch's rows with plain reads, telling the system they are
    random. Not a memory map: its pages count to the process that maps them and were mapped well
    around each row read (8 MB of read-ahead, large page-cache folios), so on a folder larger than
    a job's memory limit the workers filled the limit and were killed; pages read are clean page
    cache, which the kernel drops first."""

    def __init__(self, file: ImageFile) -> None:
        self.file = file
        self._handle: BinaryIO | None = None

    def __len__(self) -> int:
        return self.file.shape[0]

    def __getitems__(self, rows: list[int]) -> torch.Tensor:
        if self._handle is None:
            self._handle = open(self.file.path, "rb", buffering=0)  # noqa: SIM115 (held across batches)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(self._handle.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        size = math.prod(self.file.shape[1:])
        out = np.empty((len(rows), size), dtype=np.uint8)
        for i, row in enumerate(rows):
            self._handle.seek(row * size)
            if self._handle.readinto(out[i]) != size:
                raise OSError(
                    f"{self.file.path} ends before image {row}; delete it to decode the folder again"
                )
        return torch.from_numpy(out).view(len(rows), *self.file.shape[1:])

    def __getitem__(self, row: int) -> torch.Tensor:
        return self.__getitems__([row])[0]

    def __del__(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _leave_sigterm_to_the_trainer(worker_id: int) -> None:
    """A scheduler's SIGTERM reaches every process of the job (Slurm signals the whole step): a
    worker that died of it would stop the trainer mid-step with an error, before it could save. So
    a worker lets the first SIGTERM pass and ends on the next, which is the trainer ending it. The
    worker starts with SIGTERM blocked (see `_sigterm_blocked`), so one sent before this handler
    is in place waits for it."""
    signal.signal(signal.SIGTERM, _end_on_the_next_sigterm)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _end_on_the_next_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def worker_start() -> multiprocessing.context.BaseContext | None:
    """How reading workers start: forked from this process (the platform's default), but from a
    fork server once this process is one of several (torchrun): its process group's threads
    (gloo's) may hold a lock at the moment of a fork, and a worker forked then waits for it
    forever (seen at a validation pass right after an all-reduce). The server loads
    `vaelab.data.worker_server` first: workers start at once, with SIGTERM blocked."""
    several = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not several or "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["vaelab.data.worker_server"])
    return context


@contextlib.contextmanager
def _sigterm_blocked() -> Iterator[None]:
    """SIGTERM held back from this thread meanwhile (a signal sent then is delivered on leaving).
    Workers started meanwhile begin with it blocked: PyTorch's own handler, in place from their
    start until `_leave_sigterm_to_the_trainer` replaces it, would let SIGTERM kill them."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: workers are spawned, not forked
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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
            multiprocessing_context=worker_start() if self.workers else None,
        )
        with _sigterm_blocked():
            batches = iter(loader)  # starts the workers
        for batch in batches:
            yield batch.to(device, non_blocking=True)
