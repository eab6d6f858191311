"""Latency of `vaelab serve`: POST /api/decode under 8 concurrent clients.

    python benchmarks/serve_latency.py                 # trains two small runs first (about a minute)
    python benchmarks/serve_latency.py --grey RUN --colour RUN --rounds 5 --requests 50

Starts `vaelab serve` for a grey 28 px model (the default `vaelab train` network on mnist-mini) and
a colour 64 px one (the default network on 64 px `shapes` images), each in its own process on the
CPU, twice: as served (concurrent requests share forward passes, `--max-batch 32`) and one by one
(`--max-batch 1`). Each round sends, from 8 client threads with one keep-alive connection each,
`--requests` decode requests per client to each of the four servers in turn (interleaved), every
request a fresh random latent, and times each from send to the last byte of the PNG. Figures: p50 and p99
per model over all requests, the median of the per-round p99, and one client alone for
comparison. Targets: p99 under 50 ms for the 28 px model, well under 100 ms for both. Weights do
not change the time of a forward pass, so one epoch of training is enough. The last line printed
is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import vaelab
from vaelab.data import shapes

CLIENTS = 8
TARGET_P99_MS_GREY = 50.0


def train_runs(folder: Path) -> tuple[Path, Path]:
    """One epoch of the default VAE on mnist-mini and on 512 64 px shapes (a folder)."""
    grey = folder / "grey28"
    vaelab.train(grey, epochs=1, device="cpu", progress=False)
    images = folder / "shapes64"
    images.mkdir()
    factors = {name: values[:512] for name, values in shapes.factor_table("train").items()}
    for i, image in enumerate(shapes.render(factors, 64).permute(0, 2, 3, 1).numpy()):
        Image.fromarray(image).save(images / f"{i:04d}.png")
    colour = folder / "colour64"
    vaelab.train(colour, dataset=f"folder:{images}", loss="dlogistic", epochs=1, device="cpu", progress=False)
    return grey, colour


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, max_batch: int) -> tuple[subprocess.Popen, int, dict[str, Any], float]:
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "vaelab", "serve", str(run), "--port", str(port), "--device", "cpu", "--quiet",
         "--max-batch", str(max_batch)]
    )  # fmt: skip
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/api/info")
            info = json.loads(connection.getresponse().read())
            return process, port, info, time.perf_counter() - started
        except OSError:
            if process.poll() is not None or time.perf_counter() - started > 120:
                raise SystemExit(f"vaelab serve {run} did not start") from None
            time.sleep(0.2)


def client(port: int, latent_dim: int, requests: int, seed: int, out: list[float]) -> None:
    rng = random.Random(seed)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    for _ in range(requests):
        body = json.dumps({"z": [rng.gauss(0, 1) for _ in range(latent_dim)]})
        start = time.perf_counter()
        connection.request("POST", "/api/decode", body, headers)
        response = connection.getresponse()
        payload = response.read()
        out.append(time.perf_counter() - start)
        if response.status != 200 or not payload.startswith(b"\x89PNG"):
            raise SystemExit(f"decode failed: {response.status} {payload[:200]!r}")
    connection.close()


def round_of(port: int, latent_dim: int, clients: int, requests: int, seed: int) -> list[float]:
    times: list[list[float]] = [[] for _ in range(clients)]
    threads = [
        threading.Thread(target=client, args=(port, latent_dim, requests, seed * 100 + i, times[i]))
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [t for per_client in times for t in per_client]


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "n": len(ms)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grey", type=Path, help="a grey 28 px run (default: train one)")
    parser.add_argument("--colour", type=Path, help="a colour 64 px run (default: train one)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=50, help="requests per client per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        grey, colour = (args.grey, args.colour) if args.grey and args.colour else train_runs(Path(tmp))
        servers = {
            f"{name}{suffix}": start_server(run, max_batch)
            for name, run in (("grey28", grey), ("colour64", colour))
            for suffix, max_batch in (("", 32), ("_one_by_one", 1))
        }
        try:
            pooled: dict[str, list[float]] = {name: [] for name in servers}
            round_p99: dict[str, list[float]] = {name: [] for name in servers}
            for r in range(args.rounds):
                for name, (_, port, info, _) in servers.items():
                    times = round_of(port, info["latent_dim"], CLIENTS, args.requests, r)
                    pooled[name] += times
                    round_p99[name].append(float(np.percentile(np.asarray(times) * 1000, 99)))
                    print(f"round {r + 1}: {name:20s} p50 {np.median(times) * 1000:6.1f} ms  "
                          f"p99 {round_p99[name][-1]:6.1f} ms")  # fmt: skip
            alone = {
                name: percentiles(round_of(port, info["latent_dim"], 1, 200, 99))
                for name, (_, port, info, _) in servers.items()
            }
        finally:
            for process, *_ in servers.values():
                process.terminate()
                process.wait()
    result: dict[str, Any] = {"clients": CLIENTS, "rounds": args.rounds, "requests_per_client": args.requests}
    for name, (_, _, info, start_seconds) in servers.items():
        figures = percentiles(pooled[name])
        result[name] = {
            **figures,
            "median_round_p99_ms": statistics.median(round_p99[name]),
            "one_client": alone[name],
            "start_seconds": start_seconds,
            "image_shape": info["image_shape"],
            "latent_dim": info["latent_dim"],
            "arch": info["arch"],
        }
        print(f"{name}: {CLIENTS} clients p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms "
              f"(median round p99 {result[name]['median_round_p99_ms']:.1f}); one client p50 "
              f"{alone[name]['p50_ms']:.1f} ms; server up in {start_seconds:.1f} s")  # fmt: skip
    result["target_met"] = (
        result["grey28"]["p99_ms"] < TARGET_P99_MS_GREY and result["colour64"]["p99_ms"] < 100
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
