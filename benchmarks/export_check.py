"""Export full-size DAViD models to ONNX (FP32 and mixed FP16) and check them against PyTorch.

For each model (default: Base depth and multi-task Large, dynamic layout) and precision, the
export runs in its own subprocess, which reports its wall time and peak resident memory
(ru_maxrss). Then ONNX Runtime (CPU) runs every exported file and PyTorch the model with the same
random weights (seed 0) on the same random inputs at each resolution and batch size; the PyTorch
output is computed once per point and shared by the FP32 and FP16 files. Results are written
after every point (JSON and a markdown table), so an interrupted run keeps what finished.

    python benchmarks/export_check.py --out /tmp/export_check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from benchmarks.prologue import ROOT  # noqa: E402

_EXPORT_CHILD = """
import json, resource, sys, time
from david_infer.export import export_onnx
variant, task, out, precision = sys.argv[1:5]
t = time.perf_counter()
m = export_onnx(variant, task, out, precision=precision, seed=0)
print(json.dumps({"export_s": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "precision_detail": m["precision_detail"]}))
"""


def export_in_subprocess(variant: str, task: str, out: Path, precision: str) -> Dict[str, Any]:
    """Run one export in a fresh interpreter; its own time and peak RSS, plus the file's facts."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _EXPORT_CHILD, variant, task, str(out), precision],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise SystemExit(f"export of {variant}/{task} {precision} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["subprocess_wall_s"] = time.perf_counter() - t
    result["file"] = out.name
    result["size_mb"] = out.stat().st_size / 1e6
    return result


def markdown(results: Dict[str, Any]) -> str:
    """Two tables: the exports, and the errors per point."""
    lines = [
        "| model | precision | export s | peak RSS MB | .onnx MB | Conv/MatMul/Gemm in FP16 | kept FP32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, e in results["exports"].items():
        d = e["precision_detail"]
        frac = f"{100 * d['compute_fp16_fraction']:.1f}%" if "compute_fp16_fraction" in d else "0% (fp32)"
        kept = ", ".join(d.get("kept_fp32_ops", [])) or "-"
        lines.append(
            f"| {key.rsplit(' ', 1)[0]} | {key.rsplit(' ', 1)[1]} | {e['export_s']:.0f} | "
            f"{e['peak_rss_mb']:.0f} | {e['size_mb']:.1f} | {frac} | {kept} |"
        )
    lines += [
        "",
        "Worst relative error ||onnx - torch|| / ||torch|| over the outputs:",
        "",
        summary(results),
        "",
        "Worst ||onnx - torch|| / ||torch - mean(torch)|| (error against the output's variation):",
        "",
        summary(results, "rel_error_vs_variation"),
        "",
        "| model | precision | HxW | batch | output | rel. error vs PyTorch | max abs error | "
        "error vs output variation | ORT s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['height']}x{r['width']} | {r['batch']} | "
            f"{r['output']} | {r['rel_error']:.2e} | {r['max_abs_error']:.2e} | "
            f"{r.get('rel_error_vs_variation', float('nan')):.2e} | {r['onnx_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def summary(results: Dict[str, Any], key: str = "rel_error") -> str:
    """Worst `key` over the outputs, one column per (resolution, batch) point."""
    points: List[Tuple[int, int, int]] = []
    worst: Dict[Tuple[str, str], Dict[Tuple[int, int, int], float]] = {}
    for r in results["rows"]:
        point = (r["height"], r["width"], r["batch"])
        if point not in points:
            points.append(point)
        cell = worst.setdefault((r["model"], r["precision"]), {})
        cell[point] = max(cell.get(point, 0.0), r[key])
    header = "| model | precision | " + " | ".join(f"{h}x{w} b{b}" for h, w, b in points) + " |"
    lines = [header, "|---|---|" + "---|" * len(points)]
    for (model, precision), cell in worst.items():
        values = " | ".join(f"{cell[p]:.1e}" if p in cell else "-" for p in points)
        lines.append(f"| {model} | {precision} | {values} |")
    return "\n".join(lines)


def save(out: Path, results: Dict[str, Any]) -> None:
    (out / "export_check.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "export_check.md").write_text(markdown(results))


def check_model(
    variant: str,
    task: str,
    files: Dict[str, Path],
    points: List[Tuple[Tuple[int, int], int]],
    results: Dict[str, Any],
    out: Path,
) -> None:
    """ORT vs PyTorch at every point for every precision of one model; saves after each point."""
    from david_infer.export.verify import compare, open_session
    from david_infer.model import build_model

    model = build_model(variant, task, seed=0)
    sessions = {p: open_session(f) for p, f in files.items()}
    for (h, w), b in points:
        t = time.perf_counter()
        rows = compare(model, sessions, "dynamic", [((h, w), b)], {p: p for p in files}, seed=0)
        wall_s = time.perf_counter() - t
        for precision, precision_rows in rows.items():
            for row in precision_rows:
                results["rows"].append({"model": f"{variant}/{task}", "precision": precision, **asdict(row)})
        save(out, results)
        print(f"{variant}/{task} {h}x{w} batch {b}: {wall_s:.1f}s (PyTorch and every ONNX file)", flush=True)
    del sessions, model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for the .onnx files and the results")
    parser.add_argument("--models", default="base:depth,large:multitask", help="variant:task list")
    parser.add_argument("--precisions", default="fp32,fp16")
    parser.add_argument("--resolutions", default="256x256,512x512,384x640,1024x1024")
    parser.add_argument("--batches", default="1,3")
    parser.add_argument("--render", metavar="JSON", help="only rewrite the markdown of an earlier run's JSON")
    args = parser.parse_args()
    if args.render:
        print(markdown(json.loads(Path(args.render).read_text())))
        return 0

    from david_infer.export.verify import parse_batches, parse_resolutions

    if not args.out:
        parser.error("--out is required (unless --render)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    resolutions, batches = parse_resolutions(args.resolutions), parse_batches(args.batches)
    # Cheapest points first, so an interrupted run still has every small size.
    points = sorted(((r, b) for r in resolutions for b in batches), key=lambda p: p[0][0] * p[0][1] * p[1])
    results: Dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "exports": {},
        "rows": [],
    }
    for spec in args.models.split(","):
        variant, task = spec.split(":")
        files = {}
        for precision in args.precisions.split(","):
            path = out / f"{variant}-{task}-{precision}.onnx"
            print(f"exporting {path.name} ...", flush=True)
            results["exports"][f"{variant}/{task} {precision}"] = export_in_subprocess(variant, task, path, precision)
            files[precision] = path
            save(out, results)
        check_model(variant, task, files, points, results, out)
    worst = {}
    for r in results["rows"]:
        key = f"{r['model']} {r['precision']}"
        worst[key] = max(worst.get(key, 0.0), r["rel_error"])
    results["worst_rel_error"] = worst
    save(out, results)
    print(markdown(results))
    return 0 if all(r["ok"] for r in results["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
