"""The one in-memory form every image source ends as."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaelab.data.stream import ImageFile
from vaelab.errors import VaelabError


@dataclass
class ImageSet:
    """Images of one split: uint8 [N, C, H, W], int64 labels [N] or None, and where they came from."""

    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: list[str] | None = None
    paths: list[str] | None = None  # one per image, for folder datasets
    # Known characteristics of each image, name -> array [N]: the generative factors of `shapes`, or
    # the attribute columns of a folder's labels CSV.
    factors: dict[str, np.ndarray] | None = None
    # Names of the values of categorical factors (value i is named names[i]), e.g. background.
    factor_value_names: dict[str, list[str]] | None = None
    # For a folder too large for memory: the decoded file, and the row of it where this split
    # starts. `images` is then a view of the memory-mapped file: index it, never copy it whole.
    file: ImageFile | None = None
    file_start: int = 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.images.shape[1:]
        return int(channels), int(height), int(width)

    def __len__(self) -> int:
        return len(self.images)


MEMORY_SHARE = 0.8  # at most this share of the available memory may hold one dataset


def available_memory() -> int | None:
    """Bytes of memory available to new allocations, or None if unknown: the machine's (Linux:
    MemAvailable) or, for a process under a memory limit (a container's, a Kubernetes pod's, a
    Slurm job's: a cgroup), what is left under that limit, whichever is smaller."""
    known = [b for b in (_machine_available(), cgroup_headroom()) if b is not None]
    return min(known) if known else None


def _machine_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


CGROUP_ROOT, CGROUP_MEMBERSHIP = Path("/sys/fs/cgroup"), Path("/proc/self/cgroup")
NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a number near 2**63


def cgroup_headroom() -> int | None:
    """Bytes left under the tightest memory limit of this process's cgroup and the cgroups above it
    (v2: memory.max, v1: memory.limit_in_bytes), counting the file cache the kernel would drop as
    free; None where no limit applies or none can be read (not Linux, say)."""
    root = CGROUP_ROOT
    try:
        lines = CGROUP_MEMBERSHIP.read_text().splitlines()
    except OSError:
        return None
    headrooms = []
    for line in lines:  # "0::/path" (v2), "7:memory:/path" (v1)
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if not path:
            continue
        if controllers == "":
            base, files = root, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            base, files = (
                root / "memory",
                ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
            )
        else:
            continue
        folder = base / path.lstrip("/")
        if not folder.is_dir():  # a container shows its own cgroup as the root of the mount
            folder = base
        while True:
            headroom = _headroom(folder, *files)
            if headroom is not None:
                headrooms.append(headroom)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(headrooms) if headrooms else None


def _headroom(folder: Path, limit_file: str, usage_file: str, cache_key: str) -> int | None:
    try:
        text = (folder / limit_file).read_text().strip()
        if text == "max" or int(text) >= NO_LIMIT:
            return None
        used = int((folder / usage_file).read_text())
    except (OSError, ValueError):
        return None
    cache = 0
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == cache_key:
                cache = int(value)
    except (OSError, ValueError):
        pass
    return max(int(text) - max(used - cache, 0), 0)


MAX_MEMORY_VARIABLE = "VAELAB_MAX_MEMORY"  # the budget of commands, which have no flag for it


def memory_budget(max_memory: str | None) -> int | None:
    """Bytes a decoded dataset may take in memory: `max_memory` ("8GB", "500MB", "0", or a number of
    bytes), else $VAELAB_MAX_MEMORY, else half of the memory available now (None when unknown),
    shared among the processes torchrun started on this machine, as each holds its own copy."""
    if max_memory is None and os.environ.get(MAX_MEMORY_VARIABLE, "").strip():
        value = os.environ[MAX_MEMORY_VARIABLE].strip()
        try:
            return parse_bytes(value)
        except VaelabError:
            raise VaelabError(
                f"{MAX_MEMORY_VARIABLE}={value!r} is not a size of zero or more; set it to e.g. 8GB, 500MB or 0, "
                "or unset it"
            ) from None
    if max_memory is None:
        available = available_memory()
        return None if available is None else available // (2 * local_processes())
    return parse_bytes(max_memory)


def local_processes() -> int:
    """Processes torchrun started on this machine (LOCAL_WORLD_SIZE; 1 outside torchrun), which
    share its memory and cores."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:  # not a number: as if alone
        return 1


UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
         "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_bytes(text: str) -> int:
    """8GB -> 8e9 bytes (KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024)."""
    cleaned = str(text).strip().upper().replace(" ", "")
    number = cleaned.rstrip("KMGTIB")
    unit = cleaned[len(number) :]
    try:
        value = float(number) * UNITS[unit]
    except (ValueError, KeyError):
        raise VaelabError(f"max_memory {text!r} is not a size; write e.g. 8GB, 500MB or 0") from None
    if value < 0:
        raise VaelabError(f"max_memory must be zero or more, got {text!r}")
    return int(value)


def ensure_fits_in_memory(count: int, channels: int, height: int, width: int, what: str) -> None:
    """Raise VaelabError before decoding `count` uint8 images that would not fit in memory."""
    needed, available = count * channels * height * width, available_memory()
    if available is not None and needed > MEMORY_SHARE * available:
        raise VaelabError(
            f"{count:,} images of {what} at {channels}x{height}x{width} need {needed / 1e9:.1f} GB in memory, "
            f"more than the {available / 1e9:.1f} GB available to this process; choose a smaller image_size (--image-size)"
        )
