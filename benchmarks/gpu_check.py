"""GPU validation for a fresh machine with an NVIDIA GPU: one sequential, resumable script.

    pip install torch==2.13.0 && pip install -e ".[test,gpu]"
    python benchmarks/gpu_check.py                 # results in benchmarks/results/gpu/
    python benchmarks/gpu_check.py                 # again: skips what finished, continues the rest

Steps, in order (each one's result, or its error, is written to OUT/gpu_check.json and
OUT/gpu_check.md before the next starts, so a timeout still leaves every finished result):

1. install: which ONNX Runtime builds are installed, the driver / GPU / TensorRT checks of
   david_infer.backends.onnxruntime.install (the four GPU setup errors), versions, GPU name and compute capability;
2. export: multi-task Base and Large, FP32 (the reference) and FP16 ONNX, random weights (seed 0),
   each in a subprocess;
3. engine: a TensorRT engine from each FP16 graph with a shared timing cache and one profile for
   batch 1..8 and 256..1024 pixels a side (opt 512, batch 1);
4. reference: ONNX Runtime FP32 on the CPU at 512x512 batch 1 and 8 and at 720x400 batch 2 (a
   size no profile names), cached in WORK by the FP32 file's SHA-256;
5. parity: the TensorRT engine, ONNX Runtime's CUDA provider (FP32 graph) and its TensorRT
   provider (FP16 graph) against the reference, judged by david_infer.metrics (precision "fp16":
   the CUDA provider computes in TF32 by default); a point that errors is recorded and the rest go on;
6. bench: per backend at 512x512, batch 1 and 8, images/s and latency percentiles of the runner
   alone (host to device, run, device to host) and of DavidRuntime.predict_batch end to end.

A step that fails records its error and the script goes on; steps that need it are recorded as
skipped. A rerun skips finished steps and retries failed ones; a step that was running when the
previous run died (crash, timeout) is not retried without --retry-crashed. --budget S stops
starting new steps after S seconds (default 450, so that a run fits in 8 minutes); rerun to go on.
Exit status 0 when every step finished and every parity point passed, 1 otherwise, 3 when the
budget stopped the run. Large files (ONNX, engines, caches) go to --work (default gpu_check_work/).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from benchmarks.checklist import (  # noqa: E402,F401  (re-exported: the bookkeeping lived here first)
    BENCH_MAX_S,
    BENCH_MIN_RUNS,
    MODELS,
    Checklist,
    latency_stats,
    markdown,
    step_export,
    time_calls,
)
from benchmarks.prologue import RESULTS, ROOT  # noqa: E402
from david_infer.files import atomic_write  # noqa: E402

PRECISIONS = ("fp32", "fp16")
PROFILE = {"min_hw": "256", "opt_hw": "512", "max_hw": "1024", "max_batch": 8}
PARITY_POINTS: List[Tuple[int, int, int]] = [(1, 512, 512), (8, 512, 512), (2, 720, 400)]  # batch, height, width
BENCH_BATCHES = (1, 8)
BENCH_SIZE = 512  # height and width of the timed inputs
BACKENDS = ("tensorrt", "ort-cuda", "ort-tensorrt")
CPU_BACKEND = "ort-cpu"  # the FP16 graph on ONNX Runtime's CPU provider: the same checks without a GPU
DEFAULT_BUDGET_S = 450.0


# -- the GPU steps ---------------------------------------------------------------------------------


def feeds_for(batch: int, height: int, width: int, seed: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.random((batch, 3, height, width), dtype=np.float32),
        "image_384": rng.random((batch, 3, 384, 384), dtype=np.float32),
    }


def step_install() -> Dict[str, Any]:
    from importlib import metadata

    from david_infer.backends.onnxruntime import install as _ort
    from david_infer.backends.tensorrt import _cuda

    builds = _ort.check_builds("cuda")
    ort = _ort.import_onnxruntime("cuda", "the GPU check")
    found = _ort.check_gpu(ort, 0, tensorrt=True)
    gpu, cc = _cuda.device_info(0)
    versions = {}
    for dist in (
        "onnxruntime-gpu",
        "tensorrt",
        "tensorrt-cu13",
        "tensorrt-cu12",
        "cuda-python",
        "cuda-bindings",
        "nvidia-cuda-runtime",
        "nvidia-cuda-runtime-cu12",
        "nvidia-cudnn-cu13",
        "nvidia-cudnn-cu12",
        "torch",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {
        "gpu": gpu,
        "compute_capability": cc,
        "builds": builds,
        "providers": ort.get_available_providers(),
        "checks": found,
        "versions": versions,
    }


def step_engine(work: Path, model: str) -> Dict[str, Any]:
    from david_infer.export.tensorrt import build_engine

    engine = work / f"{model}-fp16.engine"
    t = time.perf_counter()
    side = build_engine(work / f"{model}-fp16.onnx", engine, timing_cache=work / "timing.cache", **PROFILE)
    return {
        "path": str(engine),
        "seconds": round(time.perf_counter() - t, 1),
        "engine_mb": round(engine.stat().st_size / 1e6, 1),
        "tensorrt": side.get("tensorrt", {}),
    }


def reference_file(work: Path, model: str) -> Path:
    from david_infer.files import sha256_file

    return work / f"ref-{model}-{sha256_file(work / f'{model}-fp32.onnx')[:16]}.npz"


def step_reference(work: Path, model: str) -> Dict[str, Any]:
    import onnxruntime as ort

    cache = reference_file(work, model)
    if not cache.exists():
        session = ort.InferenceSession(str(work / f"{model}-fp32.onnx"), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        arrays = {}
        for i, (b, h, w) in enumerate(PARITY_POINTS):
            for name, value in zip(names, session.run(None, feeds_for(b, h, w, seed=i))):
                arrays[f"{b}x{h}x{w}|{name}"] = value

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

        atomic_write(cache, write)
    return {"path": str(cache), "points": [list(p) for p in PARITY_POINTS]}


def open_backend(backend: str, work: Path, model: str) -> Any:
    """The runner of `backend` for `model`, opened the way DavidRuntime opens it (contract, device
    and workload checked first; the GPU library calls are the backends' own)."""
    from david_infer import DavidRuntime

    batch = max(BENCH_BATCHES)
    if backend == "tensorrt":
        rt = DavidRuntime(work / f"{model}-fp16.engine", device="cuda", resolution=None, batch_size=batch)
    elif backend == CPU_BACKEND:
        rt = DavidRuntime(work / f"{model}-fp16.onnx", resolution=None, batch_size=batch)
    elif backend == "ort-cuda":
        rt = DavidRuntime(
            work / f"{model}-fp32.onnx", device="cuda", resolution=None, batch_size=batch, providers=("cuda",)
        )
    else:
        rt = DavidRuntime(
            work / f"{model}-fp16.onnx",
            device="cuda",
            resolution=None,
            batch_size=batch,
            providers=("tensorrt", "cuda"),
            cache_dir=str(work / "ort-trt-cache"),
        )
    return rt.runner


def step_parity(work: Path, model: str, backend: str) -> Dict[str, Any]:
    from david_infer.metrics import compare

    refs = np.load(reference_file(work, model))
    points = []
    with open_backend(backend, work, model) as runner:
        for i, (b, h, w) in enumerate(PARITY_POINTS):
            ref = {k.split("|")[1]: refs[k] for k in refs.files if k.startswith(f"{b}x{h}x{w}|")}
            try:
                got = runner.run(feeds_for(b, h, w, seed=i))
                parity = compare(got, ref, precision="fp16")
                points.append(
                    {
                        "batch": b,
                        "height": h,
                        "width": w,
                        "passed": parity.passed,
                        "reasons": parity.reasons,
                        "metrics": parity.metrics,
                    }
                )
            except Exception as exc:  # noqa: BLE001 - one point's error must not hide the others
                points.append(
                    {
                        "batch": b,
                        "height": h,
                        "width": w,
                        "passed": False,
                        "reasons": [f"{type(exc).__name__}: {exc}"],
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                )
    reasons = [f"b{p['batch']} {p['height']}x{p['width']}: {r}" for p in points for r in p["reasons"]]
    return {"passed": all(p["passed"] for p in points), "reasons": reasons, "points": points}


def step_bench_engine(work: Path, model: str, backend: str) -> Dict[str, Any]:
    batches = []
    with open_backend(backend, work, model) as runner:
        for b in BENCH_BATCHES:
            feeds = feeds_for(b, BENCH_SIZE, BENCH_SIZE, seed=99)
            batches.append(latency_stats(time_calls(lambda: runner.run(feeds)), b))
    return {"what": f"runner.run at {BENCH_SIZE}x{BENCH_SIZE}: host to device, run, device to host", "batches": batches}


def step_bench_predict(work: Path, model: str, backend: str) -> Dict[str, Any]:
    from david_infer import DavidRuntime

    path = work / (
        f"{model}-fp16.engine"
        if backend == "tensorrt"
        else f"{model}-{'fp32' if backend == 'ort-cuda' else 'fp16'}.onnx"
    )
    device = "cpu" if backend == CPU_BACKEND else "cuda"
    options: Dict[str, Any] = {}
    if backend in ("ort-cuda", "ort-tensorrt"):
        options["providers"] = ("cuda",) if backend == "ort-cuda" else ("tensorrt", "cuda")
        if backend == "ort-tensorrt":
            options["cache_dir"] = str(work / "ort-trt-cache")
    rng = np.random.default_rng(7)
    batches = []
    for b in BENCH_BATCHES:
        images = [rng.integers(0, 256, (BENCH_SIZE, BENCH_SIZE, 3), dtype=np.uint8) for _ in range(b)]
        runtime = DavidRuntime(path, device=device, resolution=BENCH_SIZE, batch_size=b, **options)
        try:
            batches.append(latency_stats(time_calls(lambda: runtime.predict_batch(images)), b))
        finally:
            runtime.close()
    return {
        "what": f"DavidRuntime.predict_batch on {BENCH_SIZE}x{BENCH_SIZE} uint8 RGB images, pre/postprocessing included",
        "batches": batches,
    }


def run_all(check: Checklist, work: Path, models: Sequence[str], backends: Sequence[str]) -> None:
    """Every step in order; the cheap, most telling ones first."""
    check.run("install", step_install)
    for model in models:
        for precision in PRECISIONS:
            check.run(f"export:{model}-{precision}", lambda m=model, p=precision: step_export(work, m, p))
        check.run(f"engine:{model}", lambda m=model: step_engine(work, m), needs=["install", f"export:{model}-fp16"])
        check.run(f"reference:{model}", lambda m=model: step_reference(work, m), needs=[f"export:{model}-fp32"])
        for backend in backends:
            gpu = [] if backend == CPU_BACKEND else ["install"]
            needs = (
                gpu
                + [f"reference:{model}"]
                + ([f"engine:{model}"] if backend == "tensorrt" else [f"export:{model}-fp16"])
            )
            check.run(f"parity:{model}:{backend}", lambda m=model, b=backend: step_parity(work, m, b), needs=needs)
    for model in models:
        for backend in backends:
            needs = ([] if backend == CPU_BACKEND else ["install"]) + (
                [f"engine:{model}"] if backend == "tensorrt" else [f"export:{model}-fp32", f"export:{model}-fp16"]
            )
            check.run(
                f"bench:{model}:{backend}:engine", lambda m=model, b=backend: step_bench_engine(work, m, b), needs=needs
            )
            check.run(
                f"bench:{model}:{backend}:predict_batch",
                lambda m=model, b=backend: step_bench_predict(work, m, b),
                needs=needs,
            )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(RESULTS / "gpu"), help="gpu_check.json/.md here")
    parser.add_argument("--work", default=str(ROOT / "gpu_check_work"), help="ONNX files, engines, caches")
    parser.add_argument("--models", default="base,large", help=f"subset of {','.join(MODELS)}")
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help=f"subset of {','.join(BACKENDS)}, or {CPU_BACKEND} (no GPU)"
    )
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="start no step after this many seconds")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results (exports are still reused)")
    parser.add_argument("--retry-crashed", action="store_true", help="rerun a step that was running when a run died")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [m for m in models if m not in MODELS] + [b for b in backends if b not in BACKENDS + (CPU_BACKEND,)]
    if bad or not models:
        print(
            f"gpu_check: error: unknown {bad}; models: {', '.join(MODELS)}; backends: {', '.join(BACKENDS)}",
            file=sys.stderr,
        )
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CUDA_MODULE_LOADING", "LAZY")
    check = Checklist(Path(args.out), fresh=args.fresh, retry_crashed=args.retry_crashed, budget_s=args.budget)
    run_all(check, work, models, backends)
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
