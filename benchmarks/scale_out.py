"""Scale-out: images/s of `david-infer predict` locally and on Ray with 1 and 2 workers, same inputs.

    python benchmarks/scale_out.py                     # Base multi-task (random weights, seed 0) at 256, 64 inputs
    python benchmarks/scale_out.py --variant tiny --resolution 64 --count 16 --no-readme   # a quick check

Every configuration runs the real command in a fresh process on the same inputs (`--count`
synthetic 480x360 JPEG photos) into an empty output folder, with the default outputs (every map +
vis + the completion record):

1. local CLI, default threads (ONNX Runtime's own and up to 4 for pre/postprocessing);
2. local CLI, `--threads 1`;
3. `--ray ADDRESS --workers 1` and 4. `--workers 2` on a 2-CPU Ray cluster this script starts
   once (`ray.init(num_cpus=2)`); each worker runs the model with 1 thread (the default with --ray).

Reported per configuration: images/s over the command's wall time (start of the process to its
exit: Python start, model load, Ray connect and actor start included) and steady images/s
(inputs after the first, over the time between the first and the last completion record, so
without the fixed start-up cost); the driver's peak RSS (`os.wait4` of the command's process) and
the workers' peak RSS (VmHWM of each Ray actor process, read from /proc while the command runs).
The machine's load average is recorded around each run: other processes sharing the cores slow
every configuration, and the parallel one most. Writes `benchmarks/results/scale_out.{json,md}` and
the table in docs/benchmarks.md between `<!-- scale-out:start -->` and `<!-- scale-out:end -->` (unless --no-docs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

# Ray's one-machine mode (set before ray is imported): node address 127.0.0.1, not the network
# interface, so the benchmark's cluster and the CLI runs it starts stay on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from benchmarks.prologue import RESULTS, ROOT, replace_doc_section  # noqa: E402
from david_infer.benchmark import machine, synthetic_photo  # noqa: E402

ACTOR_MARK = b"DavidPredictor"  # in the process title Ray gives the predictor's actors


def make_inputs(folder: Path, count: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(synthetic_photo(360, 480, seed=i)).save(folder / f"photo{i:03d}.jpg", quality=90)


class ActorMemory:
    """Samples the peak RSS (VmHWM) of every Ray actor process of our predictor while running."""

    def __init__(self, interval: float = 0.2) -> None:
        self.peak_kb: Dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def __enter__(self) -> "ActorMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if ACTOR_MARK not in f.read():
                            continue
                    with open(f"/proc/{pid}/status") as f:
                        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
                except (OSError, StopIteration, ValueError):
                    continue
                self.peak_kb[pid] = max(hwm, self.peak_kb.get(pid, 0))
            self._stop.wait(interval)


# runs the command as its child and writes the child's peak RSS (kB) to argv[1]
_PEAK_WRAPPER = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
    "sys.exit(rc)"
)


def run_command(name: str, argv: List[str], out: Path, count: int) -> Dict[str, Any]:
    load_before = os.getloadavg()
    peak_file = out.parent / f"{out.name}.peak"
    with ActorMemory() as actors:
        start = time.time()
        proc = subprocess.run(
            [sys.executable, "-c", _PEAK_WRAPPER, str(peak_file), *argv], capture_output=True, cwd=ROOT
        )
        wall = time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr.decode()[-3000:]}")
    records = sorted(p.stat().st_mtime for p in out.glob("*.done.json"))
    if len(records) != count:
        raise SystemExit(f"{name}: {len(records)} of {count} inputs complete\n{proc.stdout.decode()}")
    steady = (count - 1) / (records[-1] - records[0]) if records[-1] > records[0] else float("nan")
    return {
        "name": name,
        "command": " ".join(argv[2:]),
        "wall_s": wall,
        "images_per_s": count / wall,
        "steady_images_per_s": steady,
        "first_result_s": records[0] - start,
        "driver_peak_rss_mb": int(peak_file.read_text()) / 1024,
        "worker_peak_rss_mb": [kb / 1024 for kb in sorted(actors.peak_kb.values())],
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def markdown(res: Dict[str, Any]) -> str:
    rows = {r["name"]: r for r in res["runs"]}
    lines = [
        f"{res['count']} inputs (480x360 JPEG), {res['variant']} multi-task (random weights) at "
        f"{res['resolution']}, default outputs (maps + vis + record), on {res['machine']['cores']} shared "
        f"CPU cores; load average during the runs {res['load_min']:.1f}..{res['load_max']:.1f}.",
        "",
        "| run | images/s (wall) | images/s (steady) | first result s | driver peak RSS MB | worker peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        workers = ", ".join(f"{mb:.0f}" for mb in r["worker_peak_rss_mb"]) or "-"
        lines.append(
            f"| {r['name']} | {r['images_per_s']:.2f} | {r['steady_images_per_s']:.2f} | "
            f"{r['first_result_s']:.1f} | {r['driver_peak_rss_mb']:.0f} | {workers} |"
        )
    one, two, local = rows.get("Ray, 1 worker"), rows.get("Ray, 2 workers"), rows.get("local CLI, --threads 1")
    if one and two and local:
        lines += [
            "",
            f"Ray 1 worker / local CLI (1 thread): {one['images_per_s'] / local['images_per_s']:.0%} "
            f"(wall), {one['steady_images_per_s'] / local['steady_images_per_s']:.0%} (steady); "
            f"2 workers / 1 worker: {two['images_per_s'] / one['images_per_s']:.2f}x (wall), "
            f"{two['steady_images_per_s'] / one['steady_images_per_s']:.2f}x (steady).",
        ]
    lines += ["", f"Command: `{res['command']}`"]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="base", help="model variant (default base)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--count", type=int, default=64, help="number of inputs (default 64)")
    p.add_argument("--cache", type=Path, default=None, help="export cache (default $DAVID_INFER_HOME/bench)")
    p.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    args = p.parse_args(argv)

    import ray
    from performance import exported

    from david_infer.zoo import home

    model = exported(args.cache or home() / "bench", args.variant, "multitask", "fp32")
    work = Path(tempfile.mkdtemp(prefix="david-scale-out-"))
    inputs = work / "inputs"
    make_inputs(inputs, args.count)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    cli = [
        sys.executable,
        "-m",
        "david_infer",
        "predict",
        str(inputs),
        "-m",
        str(model),
        "--resolution",
        str(args.resolution),
        "--no-progress",
    ]
    configs = [
        ("local CLI, default threads", []),
        ("local CLI, --threads 1", ["--threads", "1"]),
        ("Ray, 1 worker", ["--ray", address, "--workers", "1"]),
        ("Ray, 2 workers", ["--ray", address, "--workers", "2"]),
    ]
    runs = []
    try:
        for i, (name, extra) in enumerate(configs):
            out = work / f"out{i}"
            result = run_command(name, [*cli, "-o", str(out), *extra], out, args.count)
            runs.append(result)
            print(
                f"{name}: {result['images_per_s']:.2f} images/s wall, {result['steady_images_per_s']:.2f} steady, "
                f"driver {result['driver_peak_rss_mb']:.0f} MB, workers {result['worker_peak_rss_mb']} MB, "
                f"load {result['load_before'][0]:.1f}->{result['load_after'][0]:.1f}",
                flush=True,
            )
    finally:
        ray.shutdown()
    loads = [r[k][0] for r in runs for k in ("load_before", "load_after")]
    res = {
        "variant": args.variant,
        "resolution": args.resolution,
        "count": args.count,
        "runs": runs,
        "load_min": min(loads),
        "load_max": max(loads),
        "machine": {**machine(), "ray": ray.__version__},
        "command": "python benchmarks/scale_out.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale_out.json").write_text(json.dumps(res, indent=1) + "\n")
    text = markdown(res)
    (RESULTS / "scale_out.md").write_text(text + "\n")
    print(text)
    if not args.no_docs:
        replace_doc_section("scale-out", text, heading="## Scale out (Ray)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
