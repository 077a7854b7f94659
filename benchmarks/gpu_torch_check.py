"""GPU check of the torch backend for a machine with PyTorch and no install of ours (not yet run on a GPU).

    PYTHONPATH=. python3 benchmarks/gpu_torch_check.py              # results in benchmarks/results/gpu-torch/
    PYTHONPATH=. python3 benchmarks/gpu_torch_check.py              # again: skips what finished, goes on
    PYTHONPATH=. python3 benchmarks/gpu_torch_check.py --cpu --out /tmp/x   # the same steps, tiny model, CPU

Needs torch, numpy, Pillow, onnx, onnxscript, onnxruntime (CPU build), safetensors. Steps, cheapest
and most telling first, each written to OUT/gpu_torch_check.json and .md before the next starts:

1. env: GPU, driver, CUDA, torch and library versions, bf16 support;
2. per model (multi-task Base, then Large; random weights, seed 0): export the FP32 ONNX graph
   (in a subprocess; reused when present), its ONNX Runtime CPU outputs at the parity points
   (cached), and the parity of the torch backend on the GPU in fp32 / fp16 / bf16, eager, judged by
   david_infer.metrics (fp16 within the `verify` limits);
3. Large, fp16 and bf16 compiled: model-only images/s at 512 (the goal: >= 400 images/s at batch 16),
   then the parity of the compiled programs;
4. end to end: `predict_batch` with pre/postprocessing on the GPU on 1280x720 frames and 4032x3024
   photos, beside the model alone and beside the CPU (numpy) pre/postprocessing (goal: >= 80% of
   model-only on frames);
5. model-only images/s, p50/p99 latency and peak GPU memory per precision x batch (1, 8, 16) at 512
   and 1024, eager, then compiled, for Large then Base.

--budget S starts no step after S seconds (default 330: with the step in flight the run ends
within 8 minutes on an H200); rerun to continue. Exit 0 when every step finished and passed, 1
otherwise, 3 when the budget stopped the run.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from benchmarks.checklist import ROOT, Checklist, latency_stats, step_export, time_calls  # noqa: E402
from benchmarks.gpu_check import feeds_for  # noqa: E402

DEFAULT_BUDGET_S = 330.0
GOALS = {"large_512_b16_images_per_s": 400.0, "e2e_frames_vs_model": 0.8}


@dataclass(frozen=True)
class Profile:
    """What one run measures: the GPU's (Base and Large) or the CPU's (tiny, small sizes)."""

    device: str
    models: Tuple[str, ...]
    parity_points: Tuple[Tuple[int, int, int], ...]  # batch, height, width
    bench_sizes: Tuple[int, ...]
    bench_batches: Tuple[int, ...]
    frame: Tuple[int, int]  # height, width
    photo: Tuple[int, int]
    compile_backend: str = "inductor"
    bench_max_s: float = 3.0
    precisions: Tuple[str, ...] = ("fp32", "fp16", "bf16")
    compiled: Tuple[str, ...] = ("fp16", "bf16")
    e2e_images: Dict[str, int] = field(default_factory=lambda: {"frames": 32, "photos": 8})


GPU = Profile(
    "cuda",
    ("base", "large"),
    ((1, 512, 512), (8, 512, 512), (2, 720, 400)),
    (512, 1024),
    (1, 8, 16),
    (720, 1280),
    (3024, 4032),
)
# eager torch.compile on the CPU: dynamo traces, no code generation (inductor takes minutes on 2 cores)
CPU = Profile(
    "cpu",
    ("tiny",),
    ((1, 64, 64), (2, 64, 64), (2, 80, 48)),
    (64,),
    (1, 2),
    (72, 128),
    (302, 403),
    compile_backend="eager",
    bench_max_s=0.3,
    e2e_images={"frames": 4, "photos": 2},
)


def step_env(profile: Profile) -> Dict[str, Any]:
    import importlib

    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("torchvision", "onnx", "onnxscript", "onnxruntime", "numpy", "PIL", "safetensors"):
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except ImportError:
            versions[name] = None
    env: Dict[str, Any] = {"versions": versions, "device": profile.device, "cpu_count": __import__("os").cpu_count()}
    if profile.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA GPU (a CPU-only torch build, or no driver); use --cpu")
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(),
            cudnn=torch.backends.cudnn.version(),
            driver=_driver_version(),
        )
    return env


def _driver_version() -> Optional[str]:
    try:
        from cuda.bindings import runtime as cudart

        err, version = cudart.cudaDriverGetVersion()
        return f"{version // 1000}.{version % 1000 // 10}" if int(err) == 0 else None
    except ImportError:
        return None


def _points_key(points: Sequence[Tuple[int, int, int]]) -> str:
    return "_".join(f"{b}x{h}x{w}" for b, h, w in points)


def step_reference(work: Path, model: str, profile: Profile) -> Dict[str, Any]:
    """ONNX Runtime FP32 on the CPU at the parity points, cached by the graph's SHA-256 and the points."""
    import onnxruntime as ort

    from david_infer.files import atomic_write, sha256_file

    onnx_path = work / f"{model}-fp32.onnx"
    cache = work / f"ref-{model}-{sha256_file(onnx_path)[:16]}-{_points_key(profile.parity_points)}.npz"
    if not cache.exists():
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        arrays = {
            f"{i}|{name}": value
            for i, (b, h, w) in enumerate(profile.parity_points)
            for name, value in zip(names, session.run(None, feeds_for(b, h, w, seed=i)))
        }
        atomic_write(cache, lambda tmp: np.savez(open(tmp, "wb"), **arrays))
    return {"path": str(cache), "points": [list(p) for p in profile.parity_points]}


def open_torch(work: Path, model: str, profile: Profile, batch: int = 16, **options: Any) -> Any:
    from david_infer import DavidRuntime

    if options.get("compile", "off") != "off":
        options.setdefault("compile_backend", profile.compile_backend)
    options.setdefault("resolution", None)
    return DavidRuntime(
        work / f"{model}-fp32.onnx", backend="torch", device=profile.device, batch_size=batch, **options
    )


def step_parity(work: Path, model: str, profile: Profile, precisions: Sequence[str], compile: str) -> Dict[str, Any]:
    from david_infer.metrics import Thresholds, compare

    refs = np.load(step_reference(work, model, profile)["path"])
    points, reasons = [], []
    for precision in precisions:
        with open_torch(work, model, profile, precision=precision, compile=compile) as rt:
            for i, (b, h, w) in enumerate(profile.parity_points):
                ref = {k.split("|")[1]: refs[k] for k in refs.files if k.startswith(f"{i}|")}
                where = f"{precision} b{b} {h}x{w}: "
                try:
                    got = rt.runner.run(feeds_for(b, h, w, seed=i))
                    # bf16's own rounding is 8x fp16's (3 fewer mantissa bits)
                    limits = Thresholds().scaled(16.0) if precision == "bf16" else None
                    parity = compare(got, ref, limits, where=where, precision="fp32" if precision == "fp32" else "fp16")
                    points.append(
                        {
                            "precision": precision,
                            "batch": b,
                            "height": h,
                            "width": w,
                            "passed": parity.passed,
                            "reasons": parity.reasons,
                            "metrics": parity.metrics,
                        }
                    )
                    reasons += parity.reasons
                except Exception as exc:  # noqa: BLE001 - one point's error must not hide the others
                    points.append(
                        {
                            "precision": precision,
                            "batch": b,
                            "height": h,
                            "width": w,
                            "passed": False,
                            "error": f"{type(exc).__name__}: {exc}",
                        }
                    )
                    reasons.append(f"{where}{type(exc).__name__}: {exc}")
            first = {str(k): round(v, 3) for k, v in rt.runner.first_call_seconds.items()}
            points[-1]["first_call_seconds"] = first
    return {"passed": not reasons, "reasons": reasons, "points": points, "compile": compile}


def _sync(profile: Profile) -> None:
    if profile.device == "cuda":
        import torch

        torch.cuda.synchronize()


def step_bench(
    work: Path,
    model: str,
    profile: Profile,
    precisions: Sequence[str],
    compile: str,
    sizes: Sequence[int],
    batches: Sequence[int],
) -> Dict[str, Any]:
    """Model-only: runner.run_tasks on device tensors (no host copies), per precision x size x batch."""
    import torch

    rows = []
    for precision in precisions:
        with open_torch(work, model, profile, batch=max(batches), precision=precision, compile=compile) as rt:
            runner = rt.runner
            for size in sizes:
                for b in batches:
                    image = torch.rand(b, 3, size, size, device=runner.torch_device)
                    vit = torch.rand(b, 3, 384, 384, device=runner.torch_device)
                    if profile.device == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    t = time.perf_counter()
                    runner.run_tasks(image, vit)  # the first call of the shape: compile / warm-up
                    first = time.perf_counter() - t
                    row = latency_stats(
                        time_calls(
                            lambda: runner.run_tasks(image, vit), warmup=1, min_runs=3, max_s=profile.bench_max_s
                        ),
                        b,
                    )
                    row.update(precision=precision, size=size, compile=compile, first_call_s=round(first, 3))
                    if profile.device == "cuda":
                        row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
                    rows.append(row)
                    print(
                        f"  {model} {precision} {compile} {size} b{b}: {row['images_per_s']:.1f} images/s", flush=True
                    )
    goal = GOALS["large_512_b16_images_per_s"]
    hits = [
        r["images_per_s"]
        for r in rows
        if model == "large"
        and r["size"] == 512
        and r["batch"] == 16
        and r["precision"] in ("fp16", "bf16")
        and compile != "off"
    ]
    result: Dict[str, Any] = {"what": "runner.run_tasks on device tensors (model only)", "batches": rows}
    if hits and profile.device == "cuda":
        result["goal"] = {"images_per_s_at_least": goal, "best": max(hits), "met": max(hits) >= goal}
    return result


def _images(shape: Tuple[int, int], count: int) -> List[np.ndarray]:
    """Frames with structure (a moving gradient and noise), uint8 RGB."""
    rng = np.random.default_rng(5)
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=-1).astype(np.int16)
    return [np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8) for _ in range(count)]


def step_e2e(work: Path, model: str, profile: Profile, precision: str) -> Dict[str, Any]:
    """predict_batch images/s with the torch stages (pre/postprocessing on the device) and with the
    graph stages (ONNX Runtime on the CPU), beside the model alone."""
    import torch

    result: Dict[str, Any] = {"precision": precision}
    for kind, shape in (("frames", profile.frame), ("photos", profile.photo)):
        count = profile.e2e_images[kind]
        batch = min(16, count) if kind == "frames" else min(4, count)
        images = _images(shape, count)
        row: Dict[str, Any] = {"height": shape[0], "width": shape[1], "images": count, "batch": batch}
        side = 512 if profile.device == "cuda" else 64
        for stages in ("torch", "graph"):
            with open_torch(
                work, model, profile, batch=batch, precision=precision, stages=stages, resolution=side
            ) as rt:
                rt.predict_batch(images[:batch])  # warm-up: weights, kernels
                t = time.perf_counter()
                rt.predict_batch(images)
                _sync(profile)
                row[f"{stages}_stages_images_per_s"] = count / (time.perf_counter() - t)
                if stages == "torch":
                    image = torch.rand(batch, 3, side, side, device=rt.runner.torch_device)
                    vit = torch.rand(batch, 3, 384, 384, device=rt.runner.torch_device)
                    times = time_calls(
                        lambda: rt.runner.run_tasks(image, vit), warmup=1, min_runs=3, max_s=profile.bench_max_s
                    )
                    row["model_only_images_per_s"] = latency_stats(times, batch)["images_per_s"]
        row["torch_vs_model"] = row["torch_stages_images_per_s"] / row["model_only_images_per_s"]
        result[kind] = row
    result["goal"] = {
        "frames_vs_model_at_least": GOALS["e2e_frames_vs_model"],
        "met": result["frames"]["torch_vs_model"] >= GOALS["e2e_frames_vs_model"],
    }
    return result


def run_all(check: Checklist, work: Path, profile: Profile) -> None:
    check.run("env", lambda: step_env(profile))
    gpu = ["env"]
    for model in profile.models:
        check.run(f"export:{model}", lambda m=model: step_export(work, m, "fp32"))
        check.run(f"reference:{model}", lambda m=model: step_reference(work, m, profile), needs=[f"export:{model}"])
        check.run(
            f"parity:{model}:eager",
            lambda m=model: step_parity(work, m, profile, profile.precisions, "off"),
            needs=gpu + [f"reference:{model}"],
        )
    big = profile.models[-1]
    sizes, batches = profile.bench_sizes[:1], profile.bench_batches[-1:]
    for precision in profile.compiled:
        check.run(
            f"bench:{big}:compiled-{precision}:goal",
            lambda p=precision: step_bench(work, big, profile, [p], "default", sizes, batches),
            needs=gpu + [f"export:{big}"],
        )
    check.run(f"e2e:{big}", lambda: step_e2e(work, big, profile, profile.compiled[0]), needs=gpu + [f"export:{big}"])
    check.run(
        f"parity:{big}:compiled",
        lambda: step_parity(work, big, profile, profile.compiled, "default"),
        needs=gpu + [f"reference:{big}"],
    )
    for model in reversed(profile.models):
        for compile in ("off", "default"):
            check.run(
                f"bench:{model}:{'eager' if compile == 'off' else 'compiled'}",
                lambda m=model, c=compile: step_bench(
                    work, m, profile, profile.precisions, c, profile.bench_sizes, profile.bench_batches
                ),
                needs=gpu + [f"export:{model}"],
            )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results" / "gpu-torch"),
        help="gpu_torch_check.json/.md and the work files (ONNX graphs, references) here",
    )
    parser.add_argument("--cpu", action="store_true", help="the same steps on the CPU with the tiny model")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="start no step after this many seconds")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results (exports are still reused)")
    parser.add_argument("--retry-crashed", action="store_true", help="rerun a step that was running when a run died")
    args = parser.parse_args(argv)
    profile = CPU if args.cpu else GPU
    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    check = Checklist(
        out,
        fresh=args.fresh,
        retry_crashed=args.retry_crashed,
        budget_s=args.budget,
        title=f"torch backend check ({profile.device})",
        stem="gpu_torch_check",
    )
    run_all(check, work, profile)
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
