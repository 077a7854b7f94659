"""Peak resident memory of one model call against the resolution and the batch: the measurements
behind `david_infer.memory_estimate`.

For each (resolution R, batch B) a fresh child process opens MODEL with `DavidRuntime(resolution=R,
batch_size=B)` on ONNX Runtime (CPU) and predicts B grey R x R images in one batch; its peak RSS
is read from the kernel (`benchmarks.memory.peak_rss`: ru_maxrss of a small wrapper's child). A
least-squares line through the runs gives the fixed part (interpreter, libraries, weights) and the
bytes per model pixel (per R x R x B), the activation memory that grows with R^2 and B. Reported
with the weights' file size, so the fixed part can be read as (libraries + k x weights).

    python benchmarks/model_memory.py [--model M] [--resolutions 256 512 1024] [--batches 1 2] [--json out.json]

The model defaults to the tiny multi-task model (random weights), exported to a temporary folder;
full-size graphs are measured by passing one (`david-infer export --variant base ... -o mt-base.onnx`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from benchmarks.memory import peak_rss  # noqa: E402
from benchmarks.prologue import ROOT, model_or_tiny  # noqa: E402

_CHILD = (
    "import sys, numpy as np; from david_infer import DavidRuntime; "
    "path, side, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]); "
    "rt = DavidRuntime(path, resolution=side, batch_size=batch, threads=1, verify=False); "
    "rt.predict_batch([np.full((side, side, 3), 128, np.uint8)] * batch); rt.close()"
)


def measure(model: Path, resolutions: List[int], batches: List[int], timeout: float) -> Dict[str, Any]:
    os.environ["PYTHONPATH"] = str(ROOT)  # the wrapper's child inherits it: this checkout's david_infer
    rows = []
    for batch in batches:
        for side in resolutions:
            run = peak_rss([sys.executable, "-c", _CHILD, str(model), str(side), str(batch)], timeout)
            rows.append({"resolution": side, "batch": batch, **run})
            print(f"R {side} B {batch}: rc {run['rc']}, {run['wall_s']} s, peak {run['peak_mb']} MB", file=sys.stderr)
    good = [r for r in rows if r["rc"] == 0]
    x = np.array([r["resolution"] ** 2 * r["batch"] for r in good], np.float64)
    y = np.array([r["peak_mb"] * 2**20 for r in good], np.float64)
    slope, intercept = np.polyfit(x, y, 1) if len(good) >= 2 else (float("nan"), float("nan"))
    for row in good:
        row["fit_mb"] = round((intercept + slope * row["resolution"] ** 2 * row["batch"]) / 2**20, 1)
    return {
        "model": str(model),
        "model_mb": round(model.stat().st_size / 2**20, 1),
        "fixed_mb": round(intercept / 2**20, 1),
        "bytes_per_model_pixel": round(float(slope), 1),
        "rows": rows,
        "cpu_count": os.cpu_count(),
    }


def print_table(report: Dict[str, Any]) -> None:
    print(
        f"{Path(report['model']).name} ({report['model_mb']} MB): fixed {report['fixed_mb']} MB "
        f"+ {report['bytes_per_model_pixel']} bytes x R^2 x batch"
    )
    print("| resolution | batch | wall | peak RSS | the line |")
    print("|---:|---:|---:|---:|---:|")
    for row in report["rows"]:
        status = "" if row["rc"] == 0 else f" (exit {row['rc']})"
        print(
            f"| {row['resolution']} | {row['batch']} | {row['wall_s']} s | {row['peak_mb']} MB{status} "
            f"| {row.get('fit_mb', '-')} MB |"
        )


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model file (default: the tiny multi-task model, exported now)")
    p.add_argument("--resolutions", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    p.add_argument("--json", help="also write the JSON report to this file")
    args = p.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model = model_or_tiny(args.model, Path(tmp))
        report = measure(model, args.resolutions, args.batches, args.timeout)
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    failed = [r for r in report["rows"] if r["rc"] != 0]
    for row in failed:
        print(f"R {row['resolution']} B {row['batch']}: exit {row['rc']}\n{row['stderr']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
