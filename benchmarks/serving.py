"""Serving against local: latency p50/p99 and images/s at 1, 4 and 16 concurrent clients.

    python benchmarks/serving.py                       # the tiny model at 128x128 (a few minutes)
    python benchmarks/serving.py --model base.onnx --resolution 256 --requests 8

Same model, same images, same resolution, all on this machine's CPU:

- local batch: one `DavidRuntime` (ONNX Runtime), `predict_batch` at batch sizes 1, 4, 8, 16; the
  best images/s is the goal's reference;
- local N clients: N threads sharing that runtime, each calling `predict` (no batching across
  threads);
- served N clients: `david-infer serve` in a subprocess (adaptive batching up to 16; with 0 and 1
  inference worker processes: 0 runs the model in the server process, 1 in a worker process),
  N threads sharing one `DavidRuntime("grpc://...", backend="triton")`, each calling `predict`
  (pre/postprocessing in the client, the network on the server).

Goal: served at 16 clients >= 90% of the best local batch throughput. Writes
benchmarks/results/serving.{json,md}. Clients and server share the machine's cores; besides
wall-clock numbers each row reports the CPU seconds spent per image (this process, plus the server's
process group when served), which load from other jobs on the machine disturbs much less.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from benchmarks.prologue import ROOT, model_or_tiny  # noqa: E402
from david_infer import DavidRuntime  # noqa: E402
from david_infer.benchmark import machine, synthetic_photo  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group `pgid` (Linux /proc)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "(comm)": state ppid pgrp ... utime(11) stime(12)
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def clients_run(
    predict: Callable[[np.ndarray], Any],
    images: List[np.ndarray],
    clients: int,
    per_client: int,
    server_pgid: Optional[int] = None,
) -> Dict[str, float]:
    """`clients` threads each calling `predict` `per_client` times; latency percentiles and images/s."""
    latencies: List[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    errors: List[BaseException] = []

    def client(index: int) -> None:
        barrier.wait()
        for k in range(per_client):
            t0 = time.perf_counter()
            try:
                predict(images[(index + k) % len(images)])
            except BaseException as exc:  # reported after the run
                errors.append(exc)
                return
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    cpu0 = time.process_time() + (group_cpu_seconds(server_pgid) if server_pgid else 0.0)
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    cpu = time.process_time() + (group_cpu_seconds(server_pgid) if server_pgid else 0.0) - cpu0
    if errors:
        raise errors[0]
    ms = np.asarray(latencies) * 1e3
    return {
        "clients": clients,
        "images": len(latencies),
        "images_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "cpu_s_per_image": cpu / max(len(latencies), 1),
    }


def batch_run(runtime: DavidRuntime, images: List[np.ndarray], batch: int, count: int) -> Dict[str, float]:
    work = [images[i % len(images)] for i in range(count)]
    runtime.predict_batch(work[:batch], batch_size=batch)  # warm-up
    t0, cpu0 = time.perf_counter(), time.process_time()
    runtime.predict_batch(work, batch_size=batch)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "batch": batch,
        "images": count,
        "images_per_s": count / wall,
        "ms_per_image": 1e3 * wall / count,
        "cpu_s_per_image": cpu / count,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="an exported .onnx (default: the tiny multi-task model, exported now)")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--requests", type=int, default=12, help="requests per client thread (default 12)")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-batch-time", type=float, default=0.005)
    p.add_argument("--workers", default="0,1", help="server worker counts to run (default 0,1)")
    p.add_argument("--name", default="serving", help="results file stem under benchmarks/results (default serving)")
    args = p.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    images = [synthetic_photo(360 + 16 * i, 240 + 8 * i, seed=i) for i in range(8)]

    with tempfile.TemporaryDirectory() as tmp:
        model = str(model_or_tiny(args.model, Path(tmp)))
        from tests.support.server_process import ServerProcess

        results: Dict[str, Any] = {
            "model": Path(model).name,
            "resolution": args.resolution,
            "machine": machine(),
            "server": {"max_batch_size": args.max_batch_size, "max_batch_time": args.max_batch_time},
            "local_batch": [],
            "local_clients": [],
            "served_clients": [],
            "load_average_before": os.getloadavg()[0],
        }
        with DavidRuntime(model, resolution=args.resolution) as local:
            for batch in (1, 4, 8, 16):
                results["local_batch"].append(batch_run(local, images, batch, max(32, 2 * batch)))
                print("local batch", results["local_batch"][-1], flush=True)
            for n in counts:
                clients_run(local.predict, images, n, 1)  # warm-up
                results["local_clients"].append(clients_run(local.predict, images, n, args.requests))
                print("local", results["local_clients"][-1], flush=True)
        for workers in [int(w) for w in args.workers.split(",")]:
            server_args = [
                "--max-batch-size",
                str(args.max_batch_size),
                "--max-batch-time",
                str(args.max_batch_time),
                "--workers",
                str(workers),
                "--resolution",
                str(args.resolution),
            ]
            with ServerProcess(model, server_args) as server:
                with DavidRuntime(server.grpc_url, resolution=args.resolution, timeout=120) as remote:
                    for n in counts:
                        clients_run(remote.predict, images, n, 1)  # warm-up (and one client per thread)
                        pgid = server.process.pid if server.process else None
                        row = {"workers": workers, **clients_run(remote.predict, images, n, args.requests, pgid)}
                        results["served_clients"].append(row)
                        print("served", row, flush=True)

    results["load_average_after"] = os.getloadavg()[0]
    best = max(r["images_per_s"] for r in results["local_batch"])
    served16 = max((r["images_per_s"] for r in results["served_clients"] if r["clients"] == 16), default=None)
    results["goal"] = {
        "best_local_batch_images_per_s": best,
        "served_16_images_per_s": served16,
        "ratio": served16 / best if served16 else None,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(table(results, " ".join(sys.argv[1:])))
    print(table(results, " ".join(sys.argv[1:])))
    return 0


def table(results: Dict[str, Any], argv: str) -> str:
    lines = [
        f"`python benchmarks/serving.py {argv}`".replace(" `", "`"),
        "",
        f"Model {results['model']} at {results['resolution']}x{results['resolution']}, "
        f"{results['machine']['cpu']}, {results['machine']['cores']} cores (clients and server share them; "
        f"load average {results['load_average_before']:.1f} before, {results['load_average_after']:.1f} after).",
        "",
        "| run | clients | images/s | p50 ms | p99 ms | CPU s / image |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["local_batch"]:
        lines.append(
            f"| local predict_batch, batch {r['batch']} | 1 | {r['images_per_s']:.3g} | "
            f"{r['ms_per_image']:.1f} / image | | {r['cpu_s_per_image']:.3f} |"
        )
    for r in results["local_clients"]:
        lines.append(
            f"| local runtime shared by the client threads | {r['clients']} | {r['images_per_s']:.3g} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['cpu_s_per_image']:.3f} |"
        )
    for r in results["served_clients"]:
        lines.append(
            f"| served, gRPC, {r['workers']} worker process(es) | {r['clients']} | {r['images_per_s']:.3g} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['cpu_s_per_image']:.3f} |"
        )
    goal = results["goal"]
    if goal["ratio"] is not None:
        lines += [
            "",
            f"Served at 16 clients (best worker count): {goal['served_16_images_per_s']:.3g} images/s = "
            f"{100 * goal['ratio']:.0f}% of the best local batch throughput "
            f"({goal['best_local_batch_images_per_s']:.3g} images/s); goal 90%.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
