"""How long a `vaelab` command takes from the shell prompt to its exit, and how much of that is
Python importing libraries.

Each command runs in a fresh interpreter (`python -m vaelab ...`), as a user runs it. With
`--before SRC` (the `src/` folder of another checkout, e.g. `git worktree add /tmp/before HEAD~1`)
the same commands run with that code too, interleaved with this checkout's, so that the two are
measured side by side. `import torch` alone is the floor no command can go below.

    python benchmarks/cli_startup.py [--before /tmp/before/src] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "src"

COMMANDS = {  # name -> arguments after `python`; {run} and {tmp} are filled in
    "import torch (floor)": ["-c", "import torch"],
    "import vaelab": ["-c", "import vaelab"],
    "vaelab --help": ["-m", "vaelab", "--help"],
    "vaelab sample --help": ["-m", "vaelab", "sample", "--help"],
    "vaelab sample RUN -n 16": [
        "-m",
        "vaelab",
        "sample",
        "{run}",
        "-n",
        "16",
        "-o",
        "{tmp}/s.png",
        "--quiet",
    ],
    "vaelab reconstruct RUN": ["-m", "vaelab", "reconstruct", "{run}", "-o", "{tmp}/r.png", "--quiet"],
    # what `vaelab serve RUN` does before it listens (its app, with every test image encoded and scored)
    "explorer app of RUN": ["-c", "import sys, vaelab; vaelab.create_app(sys.argv[1], 'cpu')", "{run}"],
}


def seconds(arguments: list[str], src: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    started = time.perf_counter()
    subprocess.run([sys.executable, *arguments], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="src/ folder of the code to compare with")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    versions = {"this": HERE, **({"before": args.before.resolve()} if args.before else {})}

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        subprocess.run(
            [sys.executable, "-m", "vaelab", "train", "--model", "vae", "--arch", "mlp", "--latent-dim", "2",
             "--epochs", "1", "--out", str(run), "--quiet"],
            env={**os.environ, "PYTHONPATH": str(HERE)}, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeats):  # interleaved: every command and version once per round
            for name, arguments in COMMANDS.items():
                filled = [a.format(run=run, tmp=tmp) for a in arguments]
                for version, src in versions.items():
                    times.setdefault((name, version), []).append(seconds(filled, src))

    medians = {key: statistics.median(values) for key, values in times.items()}
    print(f"seconds from start to exit, median of {args.repeats} (python {sys.version.split()[0]})")
    header = f"{'command':28s}" + "".join(f"{v:>10s}" for v in versions)
    print(header + ("     ratio" if "before" in versions else ""))
    for name in COMMANDS:
        row = f"{name:28s}" + "".join(f"{medians[name, v]:10.2f}" for v in versions)
        if "before" in versions:
            row += f"{medians[name, 'before'] / medians[name, 'this']:9.2f}x"
        print(row)
    print(json.dumps({f"{v}: {name}": round(medians[name, v], 3) for name in COMMANDS for v in versions}))


if __name__ == "__main__":
    main()
