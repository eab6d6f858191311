"""A folder larger than the memory a job may use, trained under that limit (Linux, root: cgroups).

    python benchmarks/memory_limit.py                          # 1.5 GB limit, 165,000 64 px PNGs (2.0 GB decoded)
    python benchmarks/memory_limit.py --limit 1.2GB --images 30000   # a folder read into memory

Containers, Kubernetes pods and Slurm jobs cap a job's memory with a cgroup, far below what the
machine has free. This writes a folder of `shapes` PNGs (new combinations of the generated
factors) whose decoded size exceeds `--limit`, makes a memory cgroup with that limit (v1 or v2, no
swap) and runs the same `vaelab train` on the folder in it twice: with the default `--max-memory`,
and with `--max-memory` above the folder's size, which is what the default came to before it
read cgroup limits (half the machine's free memory). For each: exit status, wall seconds, whether
the folder was streamed from its decoded file, images/s of the epoch, the cgroup's peak memory
and the kernel's OOM kills. After the first, the commands that read the folder (`embed`,
`latent-plot`, `reconstruct`, `evaluate --k 1`, `cluster`, `anomaly fit`, and `embed --input` of
every file of the folder) run on its run under the same limit (`--no-commands` skips them). With `--limit 1.2GB --images 30000` the folder (368 MB)
is under the default budget and is read into memory instead. The last line printed is one JSON
object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vaelab import checkpoint
from vaelab.data.imageset import parse_bytes
from vaelab.data.shapes import factor_table, render

SETTINGS = ["--arch", "conv", "--hidden", "0", "--latent-dim", "16", "--batch-size", "32",
            "--ema", "0", "--lr-schedule", "constant", "--device", "cpu", "--epochs", "1", "--quiet"]  # fmt: skip
BLOCK = 5_000  # images rendered and written at a time


def _write_block(job: tuple[Path, int, int, int]) -> None:
    folder, start, count, size = job
    table = factor_table("train")
    rng = np.random.default_rng(start)
    factors = {name: rng.permutation(values)[:count] for name, values in table.items()}  # new combinations
    for i, image in enumerate(render(factors, size)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(
            folder / f"{start + i:07d}.png", compress_level=1
        )


def write_folder(folder: Path, count: int, size: int) -> float:
    """`count` shapes PNGs in `folder`, rendered and written by two processes; returns the seconds."""
    started = time.perf_counter()
    folder.mkdir(parents=True)
    jobs = [(folder, start, min(BLOCK, count - start), size) for start in range(0, count, BLOCK)]
    with Pool(2) as pool:
        pool.map(_write_block, jobs)
    return time.perf_counter() - started


class Cgroup:
    """A memory cgroup with a hard limit and no swap; `enter` moves the calling process into it."""

    def __init__(self, limit: int) -> None:
        v1 = Path("/sys/fs/cgroup/memory")
        self.v2 = not v1.is_dir()
        self.path = (Path("/sys/fs/cgroup") if self.v2 else v1) / f"vaelab-benchmark-{os.getpid()}"
        try:
            if self.v2:
                (self.path.parent / "cgroup.subtree_control").write_text("+memory")
            self.path.mkdir()
            if self.v2:
                (self.path / "memory.max").write_text(str(limit))
                (self.path / "memory.swap.max").write_text("0")
            else:
                (self.path / "memory.limit_in_bytes").write_text(str(limit))
                with contextlib.suppress(OSError):  # absent where swap is not accounted
                    (self.path / "memory.memsw.limit_in_bytes").write_text(str(limit))
        except OSError as error:
            raise SystemExit(
                f"cannot make a memory cgroup ({error}); run as root on Linux with cgroups"
            ) from None

    def enter(self) -> None:
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def reset(self) -> None:
        if not self.v2:
            (self.path / "memory.max_usage_in_bytes").write_text("0")

    def peak(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int((self.path / name).read_text())

    def oom_kills(self) -> int:
        name = "memory.events" if self.v2 else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        self.path.rmdir()


def vaelab(arguments: list[str], errors: Path, enter: Callable[[], None]) -> dict[str, Any]:
    """One `vaelab ...` in its own process inside the cgroup: exit status, seconds, peak RSS, and
    the last line it wrote to stderr when it failed."""
    started = time.perf_counter()
    with errors.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "vaelab", *arguments, "--quiet"], preexec_fn=enter,
                                   stdout=subprocess.DEVNULL, stderr=stderr)  # fmt: skip
        _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    result: dict[str, Any] = {"seconds": time.perf_counter() - started, "exit_status": code,
                              "peak_rss_bytes": usage.ru_maxrss * 1024}  # fmt: skip
    if code != 0:
        result["last_error_line"] = (errors.read_text().strip().splitlines() or ["(none)"])[-1]
    return result


def train(run: Path, folder: Path, extra: list[str], enter: Callable[[], None]) -> dict[str, Any]:
    """One `vaelab train` on the folder inside the cgroup."""
    arguments = ["train", "-o", str(run), "--dataset", f"folder:{folder}", *SETTINGS, *extra]
    result = vaelab(arguments, run.with_suffix(".stderr"), enter)
    if result["exit_status"] == 0:
        result["images_per_second"] = checkpoint.read_metrics(run)[-1]["images_per_second"]
    return result


def commands(run: Path, out: Path, folder: Path) -> dict[str, list[str]]:
    """The commands that read the run's test split (or, `anomaly fit`, its training split), and
    `embed` given the whole folder as its input files."""
    return {
        "embed": ["embed", str(run), "-o", str(out / "codes.npy")],
        "embed --input FOLDER": ["embed", str(run), "--input", str(folder), "-o", str(out / "all.npy")],
        "latent-plot": ["latent-plot", str(run), "-o", str(out / "latent.png")],
        "reconstruct": ["reconstruct", str(run), "-o", str(out / "reconstructions.png")],
        "evaluate --k 1": ["evaluate", str(run), "--k", "1"],
        "cluster": ["cluster", str(run), "-o", str(out / "clusters.png")],
        "anomaly fit": ["anomaly", "fit", str(run), "-o", str(out / "detector.json")],
    }


def report(name: str, row: dict[str, Any]) -> None:
    rate = f"{row['images_per_second']:5.0f} images/s" if "images_per_second" in row else ""
    streamed = f"streamed {row['streamed']!s:<5}  " if "streamed" in row else ""
    print(f"{name:<50} exit {row['exit_status']:>3}  {row['seconds']:6.0f} s  {rate:>14}  {streamed}"
          f"peak RSS {row['peak_rss_bytes'] / 1e9:.2f} GB, cgroup {row['cgroup_peak_bytes'] / 1e9:.2f} GB  "
          f"OOM kills {row['oom_kills']}  {row.get('last_error_line', '')[:100]}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", default="1.5GB", help="memory limit of the cgroup (default 1.5GB)")
    parser.add_argument("--images", type=int, default=165_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--commands", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the commands that read the folder (embed, evaluate, cluster, ...) "
                        "on the run trained with the default, under the same limit")  # fmt: skip
    args = parser.parse_args()
    limit, decoded = parse_bytes(args.limit), args.images * 3 * args.size**2
    result: dict[str, Any] = {"limit_bytes": limit, "images": args.images, "size": args.size,
                              "decoded_bytes": decoded}  # fmt: skip
    group = Cgroup(limit)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder, cache = Path(tmp) / "photos", Path(tmp) / "cache"
            os.environ["VAELAB_CACHE"] = str(cache)
            result["write_seconds"] = write_folder(folder, args.images, args.size)
            print(f"{args.images:,} PNGs of {args.size} px written in {result['write_seconds']:.0f} s: "
                  f"{decoded / 1e9:.2f} GB decoded, {decoded / limit:.2f}x the {limit / 1e9:.2f} GB limit", flush=True)  # fmt: skip
            cases = {"default --max-memory": [],
                     "--max-memory above the folder (the old default)": ["--max-memory", str(2 * decoded)]}  # fmt: skip
            result["cases"], result["commands"] = {}, {}
            runs: list[Path] = []
            for name, extra in cases.items():
                group.reset()
                kills = group.oom_kills()
                shutil.rmtree(cache, ignore_errors=True)
                runs.append(Path(tmp) / f"run{len(result['cases'])}")
                row = train(runs[-1], folder, extra, group.enter)
                row["streamed"] = any((cache / "folders").glob("folder-*.u8"))
                row["cgroup_peak_bytes"] = group.peak()
                row["oom_kills"] = group.oom_kills() - kills
                result["cases"][name] = row
                report(name, row)
                if args.commands and not extra and row["exit_status"] == 0:  # while its decoded file is there
                    out = Path(tmp) / "out"
                    out.mkdir()
                    for command, arguments in commands(runs[-1], out, folder).items():
                        group.reset()
                        kills = group.oom_kills()
                        errors = out / f"{command.split()[0]}{len(result['commands'])}.stderr"
                        row = vaelab(arguments, errors, group.enter)
                        row["cgroup_peak_bytes"] = group.peak()
                        row["oom_kills"] = group.oom_kills() - kills
                        result["commands"][command] = row
                        report(f"vaelab {command}", row)
    finally:
        group.remove()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
