"""GPU validation of the TensorRT path, one command on a machine with an NVIDIA GPU:

    python benchmarks/gpu_check.py                      # tiny, Base depth, multi-task Large
    python benchmarks/gpu_check.py --models tiny,base   # a subset; --out DIR, --iters N, --fresh

For each model it exports FP32 (the reference) and FP16 ONNX (all in parallel processes, random
weights, seed 0), builds a TensorRT engine from the FP16 graph (profile 512x512..1024x1024,
batch 1..8, opt 512x512 batch 1, shared timing cache), checks the engine's outputs against ONNX
Runtime FP32 on the CPU at 512x512, 1024x1024 and 512x768 (relative L2 error <= 1e-2 per
output), and times the runner (host->device copy, execute_async_v3, device->host copy) at
512x512, batch 1 and 8. Prints a table and writes DIR/gpu_check.json; exit status 1 if any
check fails. Without a GPU, TensorRT or cuda-python it says so in one line and exits 1.

Kept under 10 minutes on one H100 (a target, not yet measured) by: exporting all models at once
in separate processes while the engines of the models already exported are built; CPU references
at batch 1 only (multi-task Large at 1024x1024 is the slowest, a few seconds on 16 cores), cached
in DIR by the FP32 file's SHA-256; exports reused from DIR unless --fresh; the timing cache kept
in DIR so a rerun builds faster.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from david_infer.errors import DavidError  # noqa: E402

MODELS: Dict[str, Tuple[str, str]] = {"tiny": ("tiny", "multitask"), "base": ("base", "depth"),
                                      "large": ("large", "multitask")}
CHECK_SIZES: List[Tuple[int, int]] = [(512, 512), (1024, 1024), (512, 768)]
FPS_BATCHES = (1, 8)
PROFILE = {"min_hw": "512x512", "opt_hw": "512x512", "max_hw": "1024x1024", "max_batch": 8}
TOLERANCE = 1e-2
BUDGET_S = 600


def preflight() -> str:
    """One line about the GPU, or DavidError saying what is missing."""
    from david_infer._optional import require
    from david_infer.backends.tensorrt import _cuda

    trt = require("tensorrt", "the GPU check")
    require("torch", "exporting the models")
    require("onnxruntime", "the CPU reference")
    gpu, cc = _cuda.device_info(0)
    return f"{gpu} (compute capability {cc}), TensorRT {trt.__version__}"


def _export_job(variant: str, task: str, path: str, precision: str, threads: int) -> Dict[str, Any]:
    """Runs in a fresh (spawned) process: one ONNX export."""
    import torch

    from david_infer.export import export_onnx

    torch.set_num_threads(threads)
    start = time.perf_counter()
    manifest = export_onnx(variant, task, path, seed=0, precision=precision)
    return {"path": path, "precision": manifest["precision"], "seconds": time.perf_counter() - start, "note": ""}


def _reused(path: Path) -> Dict[str, Any]:
    manifest = json.loads(path.with_suffix(".json").read_text())
    return {"path": str(path), "precision": manifest.get("precision", "fp32"), "seconds": 0.0,
            "note": "reused from an earlier run"}


def check_all(names: List[str], out: Path, fresh: bool, iters: int) -> List[Dict[str, Any]]:
    """Export every model's FP32 and FP16 ONNX in parallel processes; check each model as soon as
    its two files are ready, so the engine builds overlap the slower exports."""
    jobs = {(name, precision): out / f"{name}-{precision}.onnx" for name in names for precision in ("fp32", "fp16")}
    todo = {key: path for key, path in jobs.items()
            if fresh or not (path.exists() and path.with_suffix(".json").exists())}
    threads = max(1, (os.cpu_count() or 2) // max(1, len(todo)))
    ctx = multiprocessing.get_context("spawn")  # this process initialises CUDA; never fork it
    records = []
    with ProcessPoolExecutor(max_workers=max(1, len(todo)), mp_context=ctx) as pool:
        if todo:
            print(f"exporting {len(todo)} ONNX files in parallel ...", flush=True)
        futures = {key: pool.submit(_export_job, *MODELS[key[0]], str(path), key[1], threads)
                   for key, path in todo.items()}
        for name in names:
            exported = {p: futures[(name, p)].result() if (name, p) in futures else _reused(jobs[(name, p)])
                        for p in ("fp32", "fp16")}
            print(f"{name}: reference, engine build, checks, timing ...", flush=True)
            records.append(check_model(name, exported, out, iters))
    return records


def feeds_for(batch: int, height: int, width: int, seed: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.random((batch, 3, height, width), dtype=np.float32),
            "image_384": rng.random((batch, 3, 384, 384), dtype=np.float32)}


def references(fp32_onnx: Path, out: Path) -> Dict[Tuple[int, int], Dict[str, np.ndarray]]:
    """ONNX Runtime FP32 CPU outputs at CHECK_SIZES, batch 1, cached by the file's SHA-256."""
    import onnxruntime as ort

    from david_infer.manifest import sha256_file

    cache = out / f"ref-{sha256_file(fp32_onnx)[:16]}.npz"
    if cache.exists():
        data = np.load(cache)
        return {(h, w): {k.split("|")[1]: data[k] for k in data.files if k.startswith(f"{h}x{w}|")}
                for h, w in CHECK_SIZES}
    session = ort.InferenceSession(str(fp32_onnx), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    refs = {}
    for i, (h, w) in enumerate(CHECK_SIZES):
        refs[(h, w)] = dict(zip(names, session.run(None, feeds_for(1, h, w, seed=i))))
    np.savez(cache, **{f"{h}x{w}|{n}": v for (h, w), outs in refs.items() for n, v in outs.items()})
    return refs


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got.astype(np.float64) - ref) / max(np.linalg.norm(ref.astype(np.float64)), 1e-12))


def fps(runner: Any, batch: int, iters: int) -> Dict[str, float]:
    feeds = feeds_for(batch, 512, 512, seed=99)
    for _ in range(5):
        runner.infer(feeds)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        runner.infer(feeds)
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    return {"batch": batch, "ms_per_batch": 1e3 * median, "images_per_s": batch / median}


def check_model(name: str, exported: Dict[str, Dict[str, Any]], out: Path, iters: int) -> Dict[str, Any]:
    from david_infer.backends.tensorrt import open_runner
    from david_infer.backends.tensorrt.builder import build_engine

    fp32, fp16 = Path(exported["fp32"]["path"]), Path(exported["fp16"]["path"])
    t = time.perf_counter()
    refs = references(fp32, out)
    ref_s = time.perf_counter() - t
    engine = out / f"{name}.engine"
    sidecar = build_engine(fp16, engine, timing_cache=out / "timing.cache", **PROFILE)
    record: Dict[str, Any] = {
        "model": name, "variant": MODELS[name][0], "task": MODELS[name][1],
        "onnx_precision": exported["fp16"]["precision"], "engine_precision": sidecar["tensorrt"]["precision"],
        "export_s": {p: round(e["seconds"], 1) for p, e in exported.items()},
        "reference_s": round(ref_s, 1), "build_s": sidecar["tensorrt"]["build_seconds"],
        "engine_mb": round(engine.stat().st_size / 1e6, 1),
        "notes": [e["note"] for e in exported.values() if e["note"]] + sidecar["tensorrt"]["notes"],
        "checks": [], "fps": [],
    }
    with open_runner(engine, None, "cuda") as runner:
        for i, (h, w) in enumerate(CHECK_SIZES):
            got = runner.infer(feeds_for(1, h, w, seed=i))
            errs = {n: rel_err(got[n], refs[(h, w)][n]) for n in runner.output_names}
            record["checks"].append({"height": h, "width": w, "rel_err": errs,
                                     "passed": all(e <= TOLERANCE for e in errs.values())})
        record["fps"] = [fps(runner, b, iters) for b in FPS_BATCHES]
    record["passed"] = all(c["passed"] for c in record["checks"])
    return record


def table(records: List[Dict[str, Any]]) -> str:
    rows = ["| model | engine | build s | max rel err 512 / 1024 / 512x768 | FPS b1 | FPS b8 | ok |",
            "|---|---|---:|---|---:|---:|---|"]
    for r in records:
        errs = " / ".join(f"{max(c['rel_err'].values()):.1e}" for c in r["checks"])
        f = {x["batch"]: x["images_per_s"] for x in r["fps"]}
        rows.append(f"| {r['model']} ({r['variant']} {r['task']}) | {r['engine_precision']} | {r['build_s']:.0f} | "
                    f"{errs} | {f.get(1, 0):.1f} | {f.get(8, 0):.1f} | {'yes' if r['passed'] else 'NO'} |")
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,base,large", help="comma-separated subset of tiny,base,large")
    parser.add_argument("--out", default="gpu_check_out", help="working folder (exports, engines, cache, JSON)")
    parser.add_argument("--iters", type=int, default=30, help="timed runs per FPS figure (median reported)")
    parser.add_argument("--fresh", action="store_true", help="re-export even if the ONNX files exist in --out")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        print(f"gpu_check: error: unknown models {unknown}; choose from {', '.join(MODELS)}", file=sys.stderr)
        return 2
    try:
        device = preflight()
    except DavidError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check on {device}", flush=True)
    try:
        records = check_all(names, out, args.fresh, args.iters)
    except DavidError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 1
    total = time.perf_counter() - start
    report = {"device": device, "tolerance": TOLERANCE, "profile": PROFILE, "total_s": round(total, 1),
              "within_budget": total < BUDGET_S, "models": records}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(table(records))
    print(f"total {total:.0f} s ({'within' if total < BUDGET_S else 'OVER'} the {BUDGET_S} s budget); "
          f"JSON in {out / 'gpu_check.json'}")
    return 0 if all(r["passed"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
