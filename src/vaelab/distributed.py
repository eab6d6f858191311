"""Training in several processes with PyTorch's own distributed engine: torchrun starts them
(`vaelab train --nproc N` runs it for you), DistributedDataParallel averages their gradients,
NCCL between GPUs and gloo between CPU processes.

Each process learns its rank from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK).
Every rank draws the epoch's order of the training images the same way (rank 0's, broadcast) and
takes its share of each global batch; only rank 0 writes the run folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from vaelab.config import train_flags
from vaelab.errors import Terminated, VaelabError

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
LAUNCHED = "VAELAB_NPROC_LAUNCHED"  # set for the processes `vaelab train --nproc` starts


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among `world` processes, and whether it started the
    process group (and so must end it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started_group: bool = False

    @property
    def lead(self) -> bool:
        """Rank 0: the one process that writes files, logs and shows progress."""
        return self.rank == 0


def in_torchrun() -> bool:
    """True inside a process started by torchrun (or any launcher that sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def is_lead_process() -> bool:
    """True in a single process and in rank 0 of a torchrun job (before joining its group)."""
    return int(os.environ.get("RANK", "0")) == 0


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group torchrun prepared (a no-op in a single process); the device of this
    rank (cuda:LOCAL_RANK on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun: stop if it goes
        end_with_parent()
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if rank != 0:  # one voice: the others only warn
        logging.getLogger("vaelab").setLevel(logging.WARNING)
    return Context(rank, world, local_rank, started), device


@contextlib.contextmanager
def on_sigterm(handler: Callable[[int, FrameType | None], Any]) -> Iterator[None]:
    """Call `handler` on SIGTERM inside the block, then restore what was there. Only the main
    thread may set signal handlers: elsewhere SIGTERM keeps its handling."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:  # None: a handler set outside Python, which SIG_DFL stands for
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def end_with_parent() -> None:
    """On Linux, have SIGTERM sent to this process when the one that started it ends, even killed
    with SIGKILL (prctl PR_SET_PDEATHSIG): torchrun and its training processes then stop, keeping
    what they saved, instead of training on, orphaned, in a run folder they keep locked."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # no C library to ask: as before
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def sum_(tensor: torch.Tensor, context: Context) -> torch.Tensor:
    """The element-wise sum of `tensor` over all ranks (in place; returned)."""
    if context.world > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def smallest(value: int, context: Context, device: torch.device) -> int:
    """The smallest of every rank's `value` (`device`: this rank's, where its backend reduces)."""
    if context.world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def broadcast(tensor: torch.Tensor, context: Context) -> torch.Tensor:
    """Rank 0's `tensor`, on every rank (in place; returned)."""
    if context.world > 1:
        dist.broadcast(tensor, src=0)
    return tensor


@contextlib.contextmanager
def machine_lead_first(context: Context) -> Iterator[None]:
    """Run the block in each machine's first process (local rank 0) before the others enter it:
    what it caches on the machine's disk (a decoded folder), the others then find."""
    if context.world > 1 and context.local_rank != 0:
        dist.barrier()
    try:
        yield
    finally:
        if context.world > 1 and context.local_rank == 0:
            dist.barrier()


def finish(context: Context) -> None:
    """Wait for every rank, then leave the process group if this process started it."""
    if context.world > 1:
        dist.barrier()
        if context.started_group:
            dist.destroy_process_group()


def launch(out: Path, settings: dict[str, Any], nproc: int, resume: bool, progress: bool) -> None:
    """Run `vaelab train` in `nproc` processes on this machine through torchrun (`--standalone`:
    its own rendezvous on a free port), with the same settings; raise if it fails.

    torchrun runs in a session of its own, out of reach of the terminal's signals, and is told to
    stop exactly once, by SIGTERM (its processes then save and end): on SIGTERM here (then this
    raises Terminated), on Ctrl-C or a notebook's interrupt (KeyboardInterrupt, raised once it
    has stopped), and on any other exception raised while waiting, such as a time limit's."""
    command = [sys.executable, "-m", "vaelab.distributed", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "vaelab", "train", "--out", str(out)]  # fmt: skip
    command += train_flags(settings)
    if resume:
        command.append("--resume")
    if not progress:
        command.append("--quiet")
    logger.info(
        "launching %d training processes: torchrun --standalone --nproc-per-node %d ...", nproc, nproc
    )
    # Rank 0's summary on stdout would repeat the one the caller prints; log lines go to stderr.
    # torchrun gives each process 1 CPU thread unless told: share this machine's among them instead
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, torch.get_num_threads() // nproc))
    env = {**os.environ, "OMP_NUM_THREADS": threads, LAUNCHED: "1"}
    # Its own session: a terminal's Ctrl-C reaches only this process, which tells torchrun once (a
    # second signal would cut short its processes' saving); a notebook's interrupt reaches only
    # this one anyway, and torchrun would train on while this process waits.
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env, start_new_session=True
    )
    terminated = []

    def pass_on(signum: int, frame: FrameType | None) -> None:  # not left training, orphaned, when we go
        if not terminated and process.poll() is None:
            process.send_signal(signal.SIGTERM)
        terminated.append(signum)

    try:
        with on_sigterm(pass_on):
            code = process.wait()
    except BaseException:  # Ctrl-C, or an exception from another signal's handler: stop, then go on
        pass_on(signal.SIGINT, None)
        process.wait()
        raise
    if terminated:
        raise Terminated()
    if code != 0:
        raise VaelabError(f"training in {nproc} processes failed (exit status {code}); see the lines above")


def _not_a_stop(record: logging.LogRecord) -> bool:
    """False for torchrun's log lines about stopping on a signal (`vaelab train` says it once)."""
    return not str(record.msg).startswith(("Received %s death signal", "Sending process %s closing signal"))


def torchrun(argv: list[str]) -> int:
    """PyTorch's torchrun with these arguments, as `vaelab train --nproc` runs it: the same launcher,
    but stopped by a signal it ends with status 128 + the signal, without its own lines about it
    and no traceback (its processes have each said what they saved)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main

    end_with_parent()  # `vaelab train --nproc` killed: stop its processes too
    for name in (
        "torch.distributed.elastic.agent.server.api",
        "torch.distributed.elastic.multiprocessing.api",
    ):
        logging.getLogger(name).addFilter(_not_a_stop)
    try:
        main(argv)
    except SignalException as stop:
        return 128 + int(stop.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(torchrun(sys.argv[1:]))
