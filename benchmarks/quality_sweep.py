"""Train and score many VAE settings side by side, one process each, to explore test NLL quickly.

    python benchmarks/quality_sweep.py SWEEP.json --device cuda --jobs 16 --out sweep.jsonl

SWEEP.json is a list of {"name": ..., "settings": {...}}; each entry trains
`vaelab.train(model="vae", dataset="mnist-mini", binarize="dynamic", **settings)` and then scores
the best-by-validation weights with the importance-sampled NLL (K = 1000 by default) on the whole
test split. Each finished entry appends one JSON line to --out; entries still running at
--deadline seconds are stopped and reported with the last validation loss they reached.
Figures found here are leads: the target itself is measured on 2 CPU cores by quality.py.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path


def work(entry: dict, device: str, k: int, out: str, runs: str) -> None:
    import torch

    torch.set_num_threads(1)
    import vaelab
    from vaelab.apps.measure import evaluate
    from vaelab.checkpoint import read_metrics

    with tempfile.TemporaryDirectory(dir=runs) as tmp:
        run = Path(tmp) / entry["name"]
        started = time.perf_counter()
        settings = {"model": "vae", "dataset": "mnist-mini", "binarize": "dynamic", **entry["settings"]}
        summary = vaelab.train(run, device=device, progress=False, **settings)
        minutes = (time.perf_counter() - started) / 60
        scores = evaluate(run, k=k, device=device, progress=False, quality=False)
        metrics = read_metrics(run)
        row = {
            "name": entry["name"],
            "settings": entry["settings"],
            "train_minutes": round(minutes, 2),
            "epochs": summary["epochs"],
            "best_epoch": summary.get("best_epoch"),
            "last_train_loss": round(metrics[-1]["train_loss"], 2),
            "last_val_loss": round(metrics[-1]["val_loss"], 2),
            **{
                key: round(scores[key], 2)
                for key in ("nll", "nll_se", "neg_elbo", "recon", "kl", "active_units")
            },
        }
    with open(out, "a") as handle:  # one short line per write: appends do not interleave
        handle.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--deadline", type=float, default=3600, help="seconds before unfinished entries stop")
    parser.add_argument("--out", type=Path, default=Path("sweep.jsonl"))
    args = parser.parse_args()
    entries = json.loads(args.sweep.read_text())
    args.out.unlink(missing_ok=True)
    args.out.touch()
    context = mp.get_context("spawn")
    runs = tempfile.mkdtemp(prefix="sweep-")
    pending, running = list(entries), []
    started = time.perf_counter()
    while pending or running:
        running = [p for p in running if p.is_alive()]
        while pending and len(running) < args.jobs:
            process = context.Process(
                target=work, args=(pending.pop(0), args.device, args.k, str(args.out), runs)
            )
            process.start()
            running.append(process)
        if time.perf_counter() - started > args.deadline:
            for process in running:
                process.terminate()
            break
        time.sleep(1)
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    done = {row["name"] for row in rows}
    rows.sort(key=lambda row: row["nll"])
    for row in rows:
        print(
            f"{row['name']:<12} NLL {row['nll']:7.2f} ± {row['nll_se']:.2f}  -ELBO {row['neg_elbo']:7.2f}  "
            f"KL {row['kl']:5.1f}  AU {row['active_units']:3}  epochs {row['epochs']:4}  "
            f"train {row['last_train_loss']:.1f} val {row['last_val_loss']:.1f}  {row['train_minutes']:.1f} min"
        )
    missing = [entry["name"] for entry in entries if entry["name"] not in done]
    print(f"unfinished: {missing or 'none'}; {time.perf_counter() - started:.0f} s")
    for metrics in sorted(Path(runs).glob("*/*/metrics.jsonl")):
        if metrics.parent.name in missing:
            last = json.loads(metrics.read_text().splitlines()[-1])
            print(f"  {metrics.parent.name}: stopped after epoch {last['epoch']}, val {last['val_loss']:.2f}")
    print(json.dumps({"results": rows, "unfinished": missing}))


if __name__ == "__main__":
    main()
