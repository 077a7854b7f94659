"""Peak resident memory of the default `david-infer predict` run against image size.

For each size (default 4032x3024, a 12-megapixel phone photo, and 1, 50 and 100 megapixels square)
a PNG is made (a smooth gradient with a few shapes; content does not change the decoded size), then
`david-infer predict IMAGE -m MODEL -o OUT --no-progress` runs in a fresh child process with the default options (every map the
model has, plus vis; resolution 512) and its peak RSS is read from the kernel (ru_maxrss of
the run, reported by a small Python process that starts it: Linux keeps the larger of the forking
process's RSS and the new program's in ru_maxrss, so the run is started from a process of a few
megabytes, never from this one). A 64x64 image gives the baseline: interpreter, libraries and the model.
Reported per size: peak RSS, peak minus baseline, and that per input pixel (the goal: under 40
bytes per pixel). Exit status 1 if a run failed or a size went over --max-bytes-per-pixel.

    python benchmarks/memory.py [--sizes 4032x3024 1000x1000 ...] [--model M] [--json out.json]

The model defaults to the tiny multi-task model (random weights), exported to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from benchmarks.prologue import ROOT, model_or_tiny  # noqa: E402


def make_png(path: Path, width: int, height: int) -> None:
    """A width x height RGB PNG: a gradient with a disc (row by row, so this process stays small)."""
    side = max(width, height)
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    image = np.empty((height, width, 3), np.uint8)
    step = max(1, (64 << 20) // (width * 12))  # about 64 MB of float32 temporaries per block
    for top in range(0, height, step):
        yy = y[top : top + step]
        disc = ((x - side / 2) ** 2 + (yy - side / 2) ** 2) < (side / 4) ** 2
        image[top : top + step, :, 0] = (255 * x / side).astype(np.uint8)
        image[top : top + step, :, 1] = (255 * yy / side).astype(np.uint8)
        image[top : top + step, :, 2] = np.where(disc, 220, 40).astype(np.uint8)
    Image.fromarray(image).save(path, compress_level=1)


_WRAPPER = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)"
)


def peak_rss(command: List[str], timeout: float) -> Dict[str, Any]:
    """Run `command` (from a small wrapper process); its exit status, wall time and peak RSS in MB."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-c", _WRAPPER, *command], capture_output=True, cwd=ROOT, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {
            "rc": 124,
            "wall_s": round(time.perf_counter() - start, 1),
            "peak_mb": float("nan"),
            "stderr": f"timed out after {timeout} s",
        }
    maxrss_kb, rc = done.stdout.decode().split()[-2:]
    return {
        "rc": int(rc),
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_mb": round(int(maxrss_kb) / 1024, 1),
        "stderr": done.stderr.decode()[-2000:],
    }


def measure(model: Path, folder: Path, sizes: List[Tuple[int, int]], timeout: float) -> Dict[str, Any]:
    cli = [sys.executable, "-m", "david_infer", "predict", "-m", str(model), "--no-progress"]
    rows = []
    for width, height in [(64, 64)] + sizes:
        name = f"{width}x{height}"
        image = folder / f"image-{name}.png"
        make_png(image, width, height)
        run = peak_rss(cli + [str(image), "-o", str(folder / f"out-{name}")], timeout)
        image.unlink()
        rows.append({"megapixels": round(width * height / 1e6, 2), "size": name, "pixels": width * height, **run})
        print(f"{name}: rc {run['rc']}, {run['wall_s']} s, peak {run['peak_mb']} MB", file=sys.stderr)
    base = rows[0]["peak_mb"]
    for row in rows:
        row["above_baseline_mb"] = round(row["peak_mb"] - base, 1)
        row["bytes_per_pixel"] = round((row["peak_mb"] - base) * 2**20 / row["pixels"], 1)
    return {"model": str(model), "baseline_mb": base, "rows": rows, "cpu_count": os.cpu_count()}


def print_table(report: Dict[str, Any]) -> None:
    print(f"baseline (64x64 image): {report['baseline_mb']} MB")
    print("| image | megapixels | wall | peak RSS | above baseline | per input pixel |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in report["rows"][1:]:
        status = "" if row["rc"] == 0 else f" (exit {row['rc']})"
        print(
            f"| {row['size']} | {row['megapixels']} | {row['wall_s']} s | {row['peak_mb']} MB{status} "
            f"| {row['above_baseline_mb']} MB | {row['bytes_per_pixel']} B |"
        )


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model file (default: the tiny multi-task model, exported now)")
    p.add_argument(
        "--sizes", nargs="+", default=["4032x3024", "1000x1000", "7071x7071", "10000x10000"], help="WIDTHxHEIGHT each"
    )
    p.add_argument("--max-bytes-per-pixel", type=float, default=40.0)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    p.add_argument("--json", help="also write the JSON report to this file")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = model_or_tiny(args.model, Path(tmp))
        sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.sizes]
        report = measure(model, Path(tmp), sizes, args.timeout)  # type: ignore[arg-type]
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    failed = [r for r in report["rows"] if r["rc"] != 0 or r["bytes_per_pixel"] >= args.max_bytes_per_pixel]
    for row in failed:
        print(
            f"{row['size']}: exit {row['rc']}, {row['bytes_per_pixel']} B/pixel\n{row['stderr']}",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
