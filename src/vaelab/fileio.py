"""Atomic file output: every file vaelab writes appears whole or not at all, with the permissions
the user's umask gives any new file (so a colleague or a web server can read it)."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vaelab.errors import VaelabError


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else delete it.

    The temporary name keeps the suffix, so writers that infer a format from it (PIL, matplotlib)
    still work. The file gets mode 0666 less the umask, as `open()` would give it (a temporary
    file starts at 0600). With `durable` its bytes, then the rename, are flushed to disk (fsync),
    so a power cut leaves the old file or the new one, never an empty one: for checkpoints.
    """
    path = Path(path)
    try:
        if path.parent.exists() and not path.parent.is_dir():  # mkdir would say "File exists"
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as error:  # name the file asked for, not the temporary one
        raise type(error)(error.errno, error.strerror, str(path)) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def checked_write(path: str | Path) -> Iterator[None]:
    """Turn a failed write of a run file (disk full, quota, read-only or lost folder) into one
    line that says the previous version of the file is intact (writes are atomic)."""
    try:
        yield
    except OSError as error:
        reason = error.strerror or str(error)
        hint = "free some space" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "check the folder"
        raise VaelabError(
            f"cannot write {path} ({reason}); {hint} and resume: the run folder keeps its last complete checkpoint"
        ) from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | Path, data: Any, durable: bool = False) -> None:
    """Write `data` as indented JSON with sorted keys, atomically (see atomic_output for `durable`)."""
    with atomic_output(path, durable) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def write_csv(path: str | Path, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    """Write a CSV file (header, then rows) atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


RESULT_COMMANDS = ("denoise", "cluster", "anomaly score")


def write_result_record(out: str | Path, command: str, result: dict[str, Any]) -> Path:
    """Save a command's result as JSON beside its picture (OUT with the suffix .json), with the
    command's name, so `vaelab report` can show the figures of whatever a run folder holds."""
    path = Path(out).with_suffix(".json")
    write_json(path, {"command": command, **result})
    return path
