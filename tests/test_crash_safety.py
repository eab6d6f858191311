"""Crash-safe training: mid-epoch checkpoints (--save-every), a run killed with SIGKILL goes on
from its last checkpoint and ends with the weights of an uninterrupted run, and failures to write
are one line that leaves the last checkpoint intact."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import vaelab
from conftest import run_cli
from vaelab import checkpoint, distributed, training
from vaelab.errors import Terminated, VaelabError

# constant lr and no warm-ups, so nothing depends on when the run was told its length; batch 64
# gives 113 steps per epoch of mnist-mini
SETTINGS = {"arch": "mlp", "latent_dim": 4, "device": "cpu", "batch_size": 64, "lr_schedule": "constant",
            "binarize": "dynamic", "ema": 0.99}  # fmt: skip


def state_tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / checkpoint.STATE))


def progress_of(run: Path) -> dict:
    with safe_open(str(run / checkpoint.STATE), framework="pt") as f:
        return json.loads(f.metadata()["progress"])


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def interrupt_training(
    monkeypatch: pytest.MonkeyPatch, run: Path, step: int, epochs: int, save_every: int = 20
) -> None:
    """Train `run` with a checkpoint every `save_every` steps and stop it (Ctrl-C) at global step `step`."""
    calls = {"n": 0}
    real = training.warmup_factor

    def stop(*args: object) -> float:  # called once per step
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return real(*args)

    with monkeypatch.context() as patch:
        patch.setattr(training, "warmup_factor", stop)
        with pytest.raises(KeyboardInterrupt):
            vaelab.train(run, epochs=epochs, save_every=save_every, progress=False, **SETTINGS)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("crash") / "full"
    vaelab.train(run, epochs=2, progress=False, **SETTINGS)
    return run


def test_an_interrupted_epoch_goes_on_from_its_last_checkpoint_to_the_same_weights(
    uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "split"
    interrupt_training(monkeypatch, run, 150, epochs=2)  # 10 steps past the checkpoint at step 140
    saved = progress_of(run)
    assert saved["epoch"] == 1 and saved["partial"]["step"] == 140 - 113  # global step 140, in epoch 2
    vaelab.train(run, resume=True, progress=False)
    assert same(state_tensors(run), state_tensors(uninterrupted))  # weights, average, Adam, generator
    assert same(
        load_file(str(run / "model.safetensors")), load_file(str(uninterrupted / "model.safetensors"))
    )
    ours, theirs = (checkpoint.read_metrics(r) for r in (run, uninterrupted))
    assert [m["val_loss"] for m in ours] == [m["val_loss"] for m in theirs]
    assert ours[1]["train_loss"] == pytest.approx(theirs[1]["train_loss"], rel=1e-12)  # partial sums kept
    assert "partial" not in progress_of(run)


def test_an_epoch_longer_than_the_save_rhythm_is_saved_within_itself(
    uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No --save-every: an epoch that outlasts SAVE_SECONDS (here 0 s, as if every step came 10 s
    # after the last save) saves its state within itself, so a crash loses about SAVE_SECONDS of
    # training (and a step), not the epoch
    monkeypatch.setattr(training, "SAVE_SECONDS", 0.0)
    run = tmp_path / "long"
    interrupt_training(monkeypatch, run, 113 + 40, epochs=2, save_every=0)  # step 40 of epoch 2
    saved = progress_of(run)
    assert saved["epoch"] == 1 and saved["partial"]["step"] == 39  # the step before
    vaelab.train(run, resume=True, progress=False)
    assert same(state_tensors(run), state_tensors(uninterrupted))


def test_a_resume_asking_for_fewer_epochs_than_a_saved_part_keeps_the_run_as_it_is(
    uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "split"
    interrupt_training(monkeypatch, run, 150, epochs=2)  # epoch 1 and 27 steps of epoch 2 saved
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    assert vaelab.train(run, resume=True, epochs=1, progress=False)["epochs"] == 1  # nothing to train
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before  # config.json kept epochs 2
    vaelab.train(run, resume=True, progress=False)  # later: the rest of epoch 2, as if never stopped
    assert same(state_tensors(run), state_tensors(uninterrupted))


def test_a_run_killed_with_sigkill_resumes_to_the_same_weights(uninterrupted: Path, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
    process = subprocess.Popen(
        [sys.executable, "-m", "vaelab", "train", *flags, "--epochs", "2", "--save-every", "10", "--out",
         str(run), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:  # kill it as soon as a mid-epoch checkpoint exists
        if (run / checkpoint.STATE).exists() and "partial" in progress_of(run):
            break
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no mid-epoch checkpoint within 120 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    vaelab.train(run, resume=True, progress=False)
    assert same(
        load_file(str(run / "model.safetensors")), load_file(str(uninterrupted / "model.safetensors"))
    )
    assert [m["epoch"] for m in checkpoint.read_metrics(run)] == [1, 2]


def test_sigterm_saves_where_the_run_is_and_the_same_command_again_ends_with_the_same_weights(
    uninterrupted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "preempted"
    # the one command of a job that a scheduler stops and later runs again (e.g. Slurm --requeue)
    command = ["train", *(f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()), "--epochs", "2",
               "--out", str(run), "--resume", "auto"]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "vaelab", *command, "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run / checkpoint.CONFIG).exists():  # written just before the first step
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "training did not start within 120 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)  # as a scheduler's time limit does; no --save-every asked
    err = process.communicate(timeout=120)[1]
    assert process.returncode == 143, err
    assert re.fullmatch(
        r"vaelab train: stopped by SIGTERM (at epoch 1, step (\d+) of 113; saved there|after epoch 1; saved) "
        r"\(continue with --resume\)\n",
        err,
    )
    progress = progress_of(run)
    if "at epoch" in err:  # the state of the step it stopped at, not of an epoch's end
        assert progress["epoch"] == 0 and progress["partial"]["step"] == int(re.search(r"step (\d+)", err)[1])
    code, result, _ = run_cli(command, capsys)  # run again: it goes on from where it stopped
    assert code == 0 and result["epochs"] == 2
    assert same(
        load_file(str(run / "model.safetensors")), load_file(str(uninterrupted / "model.safetensors"))
    )
    assert [m["epoch"] for m in checkpoint.read_metrics(run)] == [1, 2]
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    code, result, _ = run_cli(command, capsys)  # and once more, done: nothing to train, nothing written
    assert code == 0 and result["epochs"] == 2 and {p.name: p.read_bytes() for p in run.iterdir()} == before


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:  # field 4: the parent's pid
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):  # gone meanwhile
            pass
    return found


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="finds processes in /proc")
def test_sigterm_to_every_process_of_a_streamed_run_still_saves_and_stops_in_one_line(tmp_path: Path) -> None:
    from conftest import write_images

    write_images(tmp_path / "photos", 400, (8, 8), mode="RGB")
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "vaelab", "train", "--dataset", f"folder:{tmp_path / 'photos'}", "--max-memory",
         "0", "--workers", "2", "--arch", "mlp", "--batch-size", "4", "--epochs", "50", "--out", str(run),
         "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(children(process.pid)) < 2:  # the folder is streamed: its reading workers have started
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "no reading workers within 120 s"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)  # as Slurm signals a job step: every process of it
    err = process.communicate(timeout=120)[1]
    assert process.returncode == 143, err
    # one line: no traceback of a worker killed by the signal, and no decoding bar under --quiet
    assert re.fullmatch(r"vaelab train: stopped by SIGTERM (at epoch \d+, step \d+ of \d+; saved there|after "
                        r"epoch \d+; saved) \(continue with --resume\)\n", err), err  # fmt: skip
    assert checkpoint.can_resume(run)


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="workers are forked on POSIX only")
def test_a_sigterm_to_a_reading_worker_still_starting_waits_for_its_handler(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Slurm signals every process of the job at once, also a reading worker started a moment ago,
    # before its handler (which lets the first SIGTERM pass) is in place: that moment made wide
    import threading

    import numpy as np

    from vaelab.data import stream

    real = stream._leave_sigterm_to_the_trainer

    def slow_start(worker_id: int) -> None:
        time.sleep(1.0)
        real(worker_id)

    monkeypatch.setattr(stream, "_leave_sigterm_to_the_trainer", slow_start)
    data = np.arange(8 * 3 * 4 * 4, dtype=np.uint8).reshape(8, 3, 4, 4)
    data.tofile(tmp_path / "images.u8")
    images = stream.DiskImages(stream.ImageFile(str(tmp_path / "images.u8"), data.shape), torch.arange(8), 1)
    batches = images.batches(torch.arange(8), 4, 8, torch.device("cpu"))
    parent = os.getpid()

    def terminate_the_starting_worker() -> None:
        deadline = time.monotonic() + 60
        while not children(parent) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # within its start
        for pid in children(parent):
            os.kill(pid, signal.SIGTERM)

    threading.Thread(target=terminate_the_starting_worker, daemon=True).start()
    first = next(batches)  # was: RuntimeError, DataLoader worker (pid N) exited unexpectedly
    assert torch.equal(first, torch.from_numpy(data[:4]))
    batches.close()


def test_resume_auto_is_checked(tmp_path: Path) -> None:
    with pytest.raises(VaelabError, match="resume must be True, False or 'auto', got 'yes'"):
        vaelab.train(tmp_path / "r", resume="yes")  # type: ignore[arg-type]
    assert not (tmp_path / "r").exists()


def test_sigterm_stops_at_once_before_the_run_is_written_and_when_sent_twice() -> None:
    def deliver() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # the handler runs between bytecodes of the main thread
            time.sleep(0.001)

    previous = signal.getsignal(signal.SIGTERM)
    sigterm = training.SigtermStop()
    with distributed.on_sigterm(sigterm.handle):
        with pytest.raises(Terminated, match="^stopped by SIGTERM; finished epochs are saved"):
            deliver()
        sigterm.defer = True
        deliver()  # noted: the loop saves at the end of its step
        assert sigterm.requested
        with pytest.raises(Terminated):
            deliver()  # a second one stops at once
    assert signal.getsignal(signal.SIGTERM) is previous


def test_an_unwritable_run_folder_is_refused_before_training(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(["train", "--arch", "mlp", "--epochs", "1", "--out", str(blocker / "run")], capsys)
    assert code == 2 and "cannot write to" in err and len(err.strip().splitlines()) == 1


def test_a_full_disk_is_one_line_and_the_last_checkpoint_survives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    settings = {**SETTINGS, "batch_size": 256, "decoder": "factorized"}  # any model: the writes matter
    vaelab.train(run, epochs=1, progress=False, **settings)
    before = state_tensors(run)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(VaelabError, match=r"No space left on device\); free some space and resume") as error:
        vaelab.train(run, resume=True, epochs=2, progress=False)
    assert "\n" not in str(error.value)
    assert same(state_tensors(run), before) and progress_of(run)["epoch"] == 1
    assert not list(run.glob(".*tmp*"))  # the temporary file was removed
    monkeypatch.undo()
    vaelab.train(run, resume=True, epochs=2, progress=False)  # and the run goes on from there
    assert [m["epoch"] for m in checkpoint.read_metrics(run)] == [1, 2]


def test_a_checkpoint_without_its_epoch_order_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    interrupt_training(monkeypatch, run, 30, epochs=1)
    tensors = state_tensors(run)
    with safe_open(str(run / checkpoint.STATE), framework="pt") as f:
        metadata = f.metadata()
    del tensors["epoch_order"]
    from safetensors.torch import save_file

    save_file(tensors, str(run / checkpoint.STATE), metadata=metadata)
    with pytest.raises(VaelabError, match="lacks its image order"):
        vaelab.train(run, resume=True, progress=False)


def test_short_epochs_write_the_run_once_but_an_interrupt_still_saves_the_last_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []  # the epoch of every training state written at an epoch's end
    real_write = checkpoint.write_training_state

    def counted(run_dir: Path, tensors: dict, metadata: dict) -> None:
        progress = json.loads(metadata["progress"])
        if "partial" not in progress:  # not a save within an epoch (SAVE_SECONDS 0: at every step)
            writes.append(progress["epoch"])
        real_write(run_dir, tensors, metadata)

    monkeypatch.setattr(checkpoint, "write_training_state", counted)
    settings = {**SETTINGS, "classes": "1", "progress": False}
    monkeypatch.setattr(training, "SAVE_SECONDS", 0.0)  # every epoch, as with epochs longer than it
    vaelab.train(tmp_path / "each", epochs=3, **settings)
    assert writes == [1, 2, 3]
    writes.clear()
    monkeypatch.setattr(training, "SAVE_SECONDS", 1e9)  # epochs far shorter than the interval
    vaelab.train(tmp_path / "once", epochs=3, **settings)
    assert writes == [3]  # after the last epoch only, and the same files
    assert progress_of(tmp_path / "once")["epoch"] == 3
    assert same(state_tensors(tmp_path / "once"), state_tensors(tmp_path / "each"))
    timings = ("epoch_seconds", "images_per_second")
    assert [
        {k: v for k, v in row.items() if k not in timings}
        for row in checkpoint.read_metrics(tmp_path / "once")
    ] == [
        {k: v for k, v in row.items() if k not in timings}
        for row in checkpoint.read_metrics(tmp_path / "each")
    ]

    # Ctrl-C at the first step of epoch 3, nothing written yet: epoch 2 is saved on the way out
    writes.clear()
    steps_per_epoch = checkpoint.read_metrics(tmp_path / "each")[0]["optimizer_steps"]
    real_warmup = training.warmup_factor

    def stop_in_epoch_3(done: int, warmup_steps: int) -> float:
        if done == 2 * steps_per_epoch:
            raise KeyboardInterrupt
        return real_warmup(done, warmup_steps)

    with monkeypatch.context() as patch:
        patch.setattr(training, "warmup_factor", stop_in_epoch_3)
        with pytest.raises(KeyboardInterrupt):
            vaelab.train(tmp_path / "stopped", epochs=3, **settings)
    assert writes == [2] and progress_of(tmp_path / "stopped")["epoch"] == 2
    assert [row["epoch"] for row in checkpoint.read_metrics(tmp_path / "stopped")] == [1, 2]
    vaelab.train(tmp_path / "stopped", resume=True, epochs=3, **settings)
    assert same(state_tensors(tmp_path / "stopped"), state_tensors(tmp_path / "each"))


def hold_lock(run: Path) -> subprocess.Popen:
    """Another process that holds the run's lock, as a training process does, until it is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from vaelab import checkpoint; "
         "lock = checkpoint.RunLock(sys.argv[1]); lock.acquire(); print('locked', flush=True); time.sleep(600)", str(run)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    return holder


def test_a_run_being_trained_is_not_trained_by_a_second_process(
    uninterrupted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    holder = hold_lock(run)
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    try:
        code, _, err = run_cli(["train", "--out", str(run), "--resume", "--epochs", "3"], capsys)
        assert code == 2 and err.strip() == (
            f"vaelab train: error: {run} is being trained by process {holder.pid} on {socket.gethostname()}; wait for it "
            "to end (or stop it), then continue with resume=True (--resume)"
        )
        assert {path.name: path.read_bytes() for path in run.iterdir()} == before
    finally:
        holder.kill()  # as a crash would: the system drops the lock, none is left behind
        holder.wait()
    code, _, _ = run_cli(["train", "--out", str(run), "--resume", "--epochs", "3"], capsys)
    assert code == 0 and [m["epoch"] for m in checkpoint.read_metrics(run)] == [1, 2, 3]


def test_a_new_run_is_not_started_where_another_is_in_its_first_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()  # what a new run holds before it saves its first epoch: its lock
    holder = hold_lock(run)
    try:
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
        code, _, err = run_cli(["train", *flags, "--epochs", "1", "--out", str(run)], capsys)
        assert code == 2 and f"{run} is being trained by process {holder.pid}" in err
        assert len(err.strip().splitlines()) == 1 and [p.name for p in run.iterdir()] == [checkpoint.LOCK]
    finally:
        holder.kill()
        holder.wait()
