"""Training in two CPU processes (torchrun, gloo, DistributedDataParallel) against one process
with the same global batch size."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
import torch

import vaelab
from conftest import run_cli
from vaelab import checkpoint, distributed, training

SETTINGS = {"arch": "mlp", "latent_dim": 4, "epochs": 2, "batch_size": 256, "device": "cpu",
            "lr_schedule": "constant"}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("distributed")
    vaelab.train(folder / "one", progress=False, **SETTINGS)
    vaelab.train(folder / "two", nproc=2, progress=False, **SETTINGS)
    return folder / "one", folder / "two"


def test_two_processes_match_one_with_the_same_global_batch(runs: tuple[Path, Path]) -> None:
    one, two = (checkpoint.read_metrics(run) for run in runs)
    assert [m["optimizer_steps"] for m in two] == [m["optimizer_steps"] for m in one] == [29, 58]
    assert [m["images_seen"] for m in two] == [
        7200,
        14400,
    ]  # all ranks together: mnist-mini's 7,200 per epoch
    # The two differ only in their random draws (each rank samples its own z), so after two epochs
    # the validation losses agree to Monte-Carlo noise: within 2% (measured: 0.01%).
    for key in ("val_loss", "val_recon", "train_loss"):
        assert two[-1][key] == pytest.approx(one[-1][key], rel=0.02), key
    assert json.loads((runs[1] / "config.json").read_text())["train"]["world_size"] == 2
    assert json.loads((runs[0] / "config.json").read_text())["train"]["world_size"] == 1
    vaelab.load(runs[1])  # rank 0 wrote an ordinary run folder


def _check_on_rank(rank: int, store: str, rank0_due: bool, answers: Any) -> None:
    """One of two gloo processes: a loss check of two steps, rank 0 saying whether a save is due."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        context = distributed.Context(rank=rank, world=2)
        steps = [
            training.Unchecked(n, 2, torch.tensor(10.0 * (rank + n)), torch.ones(2), torch.zeros(2))
            for n in (1, 2)
        ]
        totals = torch.zeros(3, dtype=torch.float64)
        loss, due = training._check_losses(
            steps, totals, context, Path("run"), None, 1, rank0_due and rank == 0
        )
        answers.put((rank, loss, due))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("rank0_due", [True, False])
def test_every_rank_learns_from_the_loss_check_whether_rank_0_saves_now(
    tmp_path: Path, rank0_due: bool
) -> None:
    # Within a long epoch rank 0's clock says when the training state is saved; saving needs every
    # rank (the epoch's sums are added up over them), so the check's sum carries the decision
    spawn = multiprocessing.get_context("spawn")
    answers = spawn.Queue()
    ranks = [
        spawn.Process(target=_check_on_rank, args=(r, tmp_path / "store", rank0_due, answers)) for r in (0, 1)
    ]
    for process in ranks:
        process.start()
    results = sorted(answers.get(timeout=120) for _ in ranks)
    for process in ranks:
        process.join(timeout=60)
    # the last step's loss, averaged over the ranks: (20 + 30) / 2; the same decision on both
    assert results == [(0, 25.0, rank0_due), (1, 25.0, rank0_due)]


def _budget_on_rank(rank: int, store: str, available: int, max_memory: str | None, answers: Any) -> None:
    """One of two gloo processes on one machine, seeing `available` bytes of free memory."""
    import torch.distributed as dist

    from vaelab.config import TrainConfig
    from vaelab.data import imageset

    os.environ["LOCAL_WORLD_SIZE"] = "2"
    os.environ.pop("VAELAB_MAX_MEMORY", None)
    imageset.available_memory = lambda: available  # what this process measured
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        config = TrainConfig(dataset="folder:photos", max_memory=max_memory)
        agreed = training.agreed_budget(config, distributed.Context(rank, 2, rank), torch.device("cpu"))
        answers.put((rank, agreed.max_memory))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("max_memory", "agreed"), [(None, "1500000000"), ("3GB", "3000000000")])
def test_the_processes_of_a_machine_share_its_memory_budget_and_all_go_by_the_smallest(
    tmp_path: Path, max_memory: str | None, agreed: str
) -> None:
    # Each process holds its own copy of a folder read into memory: by default they share half the
    # free memory (8 GB seen: 8 / 2 / 2 processes = 2 GB each). Measured before any reads, the
    # smallest budget (6 GB seen by the other: 1.5 GB) holds for all, so all read the folder into
    # memory or all stream it. A budget given is each process's own.
    spawn = multiprocessing.get_context("spawn")
    answers = spawn.Queue()
    ranks = [
        spawn.Process(target=_budget_on_rank, args=(r, str(tmp_path / "store"), a, max_memory, answers))
        for r, a in ((0, 8 * 10**9), (1, 6 * 10**9))
    ]
    for process in ranks:
        process.start()
    results = sorted(answers.get(timeout=120) for _ in ranks)
    for process in ranks:
        process.join(timeout=60)
    assert results == [(0, agreed), (1, agreed)]


def test_on_a_gpu_a_folder_is_read_into_memory_only_if_it_takes_at_most_half_its_free_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A folder read into memory is copied onto the GPU: a card with less free memory than the
    # host's budget lowers it, so the folder is streamed instead of failing to fit there
    from vaelab.config import TrainConfig
    from vaelab.data import imageset

    monkeypatch.delenv("VAELAB_MAX_MEMORY", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(imageset, "available_memory", lambda: 8 * 10**9)  # host budget: 4 GB
    monkeypatch.setattr(training, "free_memory", lambda device: 3 * 10**9)  # the card's: 1.5 GB
    one, cuda = distributed.Context(), torch.device("cuda")
    config = TrainConfig(dataset="folder:photos")
    assert training.agreed_budget(config, one, cuda).max_memory == "1500000000"
    assert training.agreed_budget(config, one, torch.device("cpu")) is config  # the host's alone
    given = TrainConfig(dataset="folder:photos", max_memory="1GB")
    assert training.agreed_budget(given, one, cuda).max_memory == "1000000000"  # within the card's
    monkeypatch.setattr(imageset, "available_memory", lambda: 2 * 10**9)
    assert training.agreed_budget(config, one, cuda).max_memory == "1000000000"  # the host's, smaller


def test_nproc_is_checked_and_a_failing_rank_is_one_line(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["train", "--nproc", "0", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "nproc must be at least 1" in err
    code, _, err = run_cli(["train", "--arch", "mlp", "--batch-size", "1", "--nproc", "2", "--device", "cpu",
                            "--out", str(tmp_path / "r")], capsys)  # fmt: skip
    assert code == 2 and "training in 2 processes failed" in err.strip().splitlines()[-1]


@pytest.mark.parametrize("workers", [2, 0])  # 0: read in the training process itself
def test_two_processes_stream_a_large_folder_from_one_decoded_file(tmp_path: Path, workers: int) -> None:
    from conftest import write_images
    from vaelab.data.cache import folder_cache_dir

    write_images(tmp_path / "photos", 40, (8, 8), mode="RGB")
    before = set(folder_cache_dir().glob("folder-*.u8"))
    settings = {**SETTINGS, "dataset": f"folder:{tmp_path / 'photos'}", "batch_size": 8, "max_memory": "0",
                "workers": workers}  # fmt: skip
    vaelab.train(tmp_path / "two", nproc=2, progress=False, **settings)
    assert len(set(folder_cache_dir().glob("folder-*.u8")) - before) == 1
    assert [m["images_seen"] for m in checkpoint.read_metrics(tmp_path / "two")] == [
        29,
        58,
    ]  # 32 training files, 3 held out


def _note_sigterm_blocked(worker_id: int) -> None:
    """A reading worker's start, in the test below: whether SIGTERM is blocked there, then the
    worker's own start (the function this one stands in for)."""
    import os
    import signal

    from vaelab.data import stream

    blocked = signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    Path(os.environ["VAELAB_TEST_NOTES"], f"{os.getpid()}").write_text(str(blocked))
    stream._leave_sigterm_to_the_trainer(worker_id)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="workers are forked on POSIX only")
def test_reading_workers_of_one_of_several_processes_start_from_a_fork_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Forked from a process whose gloo threads held a lock at that moment, a worker waited for it
    # forever: two-process training on a streamed folder hung at a validation pass, now and then.
    import numpy as np
    import torch.distributed as dist

    from vaelab.data import stream

    data = np.arange(8 * 3 * 4 * 4, dtype=np.uint8).reshape(8, 3, 4, 4)
    data.tofile(tmp_path / "images.u8")
    images = stream.DiskImages(stream.ImageFile(str(tmp_path / "images.u8"), data.shape), torch.arange(8), 2)
    assert stream.worker_start() is None  # one process: forked, as before
    notes = tmp_path / "notes"
    notes.mkdir()
    monkeypatch.setenv("VAELAB_TEST_NOTES", str(notes))
    monkeypatch.setattr(stream, "_leave_sigterm_to_the_trainer", _note_sigterm_blocked)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert stream.worker_start().get_start_method() == "forkserver"
        for _ in range(2):  # a new pair of workers for every pass, as every epoch
            read = torch.cat(list(images.batches(torch.arange(8), 4, 8, torch.device("cpu"))))
            assert torch.equal(read, torch.from_numpy(data))
    finally:
        dist.destroy_process_group()
    # every worker began with SIGTERM blocked (a scheduler's SIGTERM waits for its handler)
    assert sorted(note.read_text() for note in notes.iterdir()) == ["True"] * 4


def test_the_processes_torchrun_starts_get_every_setting_as_given(monkeypatch, tmp_path: Path) -> None:
    import subprocess
    from types import SimpleNamespace

    from vaelab import distributed
    from vaelab.cli import build_parser

    settings = {"film": False, "amp": True, "compile": False, "lr": 3e-4, "mean_scale": 1 / 3, "classes": "1,7",
                "noise": "gaussian:0.3", "dataset": f"folder:{tmp_path / 'my photos'}", "latent_dim": 8,
                "decoder": "factorized", "max_memory": "2GB"}  # fmt: skip
    commands, threads = [], []

    def popen(command: list[str], env: dict[str, str], **_: object) -> SimpleNamespace:
        commands.append(command)
        threads.append(env["OMP_NUM_THREADS"])
        return SimpleNamespace(wait=lambda: 0)

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    distributed.launch(tmp_path / "run", settings, 2, resume=True, progress=False)
    (command,) = commands
    assert threads == [str(max(1, torch.get_num_threads() // 2))]  # this machine's threads shared, not 1 each
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    distributed.launch(tmp_path / "run", settings, 2, resume=True, progress=False)
    assert threads[1] == "3"  # as the user set it
    assert command[command.index("--nproc-per-node=2") + 1 : command.index("train") + 1] == [
        "-m",
        "vaelab",
        "train",
    ]
    args = vars(build_parser("train").parse_args(command[command.index("train") :]))
    assert {name: args.get(name) for name in settings} == settings | {"compile": None}  # off: no flag
    assert args["out"] == str(tmp_path / "run") and args["resume"] and args["quiet"]


def _training_in(run: Path) -> list[str]:
    """The processes whose command names `run`: torchrun and the ranks it started."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(run).encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:  # gone meanwhile
            pass
    return found


def _wait_until_training(run: Path, process: Any = None, written: str = checkpoint.CONFIG) -> None:
    """Until `written` is in the run folder (config.json: rank 0 is about to take its first step)."""
    import time

    deadline = time.monotonic() + 120
    while not (run / written).exists():
        assert process is None or process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "training did not start within 120 s"
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="finds processes in /proc")
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL", "SIGINT", "SIGINT to the group"])
def test_vaelab_train_stopped_stops_the_processes_it_started(tmp_path: Path, stop: str) -> None:
    # SIGINT alone is a notebook's interrupt or `kill -INT`; to the group, a terminal's Ctrl-C
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**SETTINGS, "epochs": 1000}.items()]  # minutes
    process = subprocess.Popen(
        [sys.executable, "-m", "vaelab", "train", "--nproc", "2", *flags, "--out", str(run), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_until_training(run, process)
        if stop == "SIGINT to the group":
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(getattr(signal, stop))
        err = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:  # the processes it started end with it
            process.kill()
    if stop == "SIGTERM":  # passed on to torchrun, which stops its processes
        assert process.returncode == 143, err
        assert err.endswith(
            "vaelab train: stopped by SIGTERM; finished epochs are saved (continue with --resume)\n"
        )
        assert err.count("stopped by SIGTERM") == 1  # by the launcher; its processes leave it to it
    elif stop == "SIGKILL":  # nothing to pass on: torchrun learns it from the system (its parent ended)
        assert process.returncode == -signal.SIGKILL
    else:  # passed on as SIGTERM, once, to torchrun (in a session of its own)
        assert process.returncode == 130, err
        assert err.endswith("vaelab train: interrupted; finished epochs are saved (continue with --resume)\n")
        assert err.count("interrupted") == 1 and "SIGTERM" not in err
    assert "Traceback" not in err  # torchrun's own, for the signal that stopped it, is left out
    assert "death signal" not in err and "closing signal" not in err  # nor torchrun's own lines

    stopped = time.monotonic()
    while _training_in(run):  # none left behind, training on its own, holding the run
        assert time.monotonic() < stopped + 20, f"still running: {_training_in(run)}"
        time.sleep(0.1)
    with checkpoint.RunLock(run) as lock:
        lock.acquire()  # free


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="finds processes in /proc")
def test_an_exception_while_waiting_for_the_processes_stops_them_before_it_goes_on(tmp_path: Path) -> None:
    # As a caller's time limit does (pytest-timeout, a notebook cell's), from a signal's handler
    import signal
    import threading

    run = tmp_path / "run"

    def time_is_up(signum: int, frame: Any) -> None:
        raise TimeoutError("the caller's time is up")

    def when_training() -> None:
        _wait_until_training(run, written=checkpoint.METRICS)  # an epoch is saved
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, time_is_up)
    try:
        threading.Thread(target=when_training, daemon=True).start()
        with pytest.raises(TimeoutError, match="time is up"):
            vaelab.train(run, nproc=2, progress=False, **{**SETTINGS, "epochs": 1000})
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert _training_in(run) == []  # ended before the exception went on, not training on their own
    with checkpoint.RunLock(run) as lock:
        lock.acquire()  # free
    assert len(checkpoint.read_metrics(run)) >= 1 and (run / checkpoint.WEIGHTS).exists()


def test_two_machines_through_torchrun_rendezvous_train_as_two_local_processes(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    # The README's multi-node command, both "machines" on this one: two torchrun launchers, one
    # process each, meeting at a c10d rendezvous endpoint, sharing the run folder's path.
    import socket
    import subprocess
    import sys

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    run = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "vaelab-test",
               "-m", "vaelab", "train", *flags, "--out", str(run), "--quiet"]  # fmt: skip
    machines = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"
    ]
    outputs = [machine.communicate(timeout=300) for machine in machines]
    assert [machine.returncode for machine in machines] == [0, 0], outputs
    two, nodes = checkpoint.read_metrics(runs[1]), checkpoint.read_metrics(run)
    assert [m["images_seen"] for m in nodes] == [7200, 14400]
    assert [m["optimizer_steps"] for m in nodes] == [29, 58]
    assert json.loads((run / "config.json").read_text())["train"]["world_size"] == 2
    # the same ranks, shards and random draws as two processes started by --nproc 2
    for key in ("val_loss", "val_recon", "train_loss"):
        assert nodes[-1][key] == pytest.approx(two[-1][key], rel=1e-5), key
    vaelab.load(run)
