"""Atomic, shareable, durable file output."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vaelab import fileio
from vaelab.fileio import atomic_output, write_csv, write_json


def test_atomic_output_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_the_umask_gives(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        write_csv(tmp_path / "b.csv", ["x"], [[1]])
        (tmp_path / "plain.txt").write_text("made by open()")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    for name in ("a.json", "b.csv", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_durable_output_is_flushed_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[tuple[str, bool]] = []
    target = tmp_path / "weights.bin"

    def record(fd: int) -> None:  # which path was flushed, and whether the target existed yet
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), target.exists()))

    monkeypatch.setattr(fileio.os, "fsync", record)
    with atomic_output(target, durable=True) as tmp:
        tmp.write_bytes(b"abc")
    assert target.read_bytes() == b"abc"
    assert len(synced) == 2
    (file_path, existed), (dir_path, after) = synced
    assert Path(file_path).parent == tmp_path and Path(file_path) != target and not existed
    assert Path(dir_path) == tmp_path and after  # then the folder, so the rename itself is on disk
    synced.clear()
    write_json(tmp_path / "plain.json", {})
    assert synced == []  # figures and reports are not forced to disk
