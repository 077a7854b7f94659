"""Timing a `DavidRuntime` (`david-infer bench`, benchmarks/performance.py; docs/cli.md): warm-up, then
repeated batches through its three stages (preprocess of in-memory images, the model, postprocess),
each on its own clock, with latency percentiles (numpy's linear: p50 <= p90 <= p99) and CPU time."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

STAGES = ("preprocess", "model", "postprocess")


def synthetic_photo(height: int = 1280, width: int = 720, seed: int = 0) -> np.ndarray:
    """A deterministic (height, width, 3) uint8 RGB test picture: smooth gradients plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), 0.5 + 0.5 * np.sin(x / 37.0 + y / 53.0)], axis=2)
    noisy = base * 200.0 + rng.normal(0.0, 12.0, base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def stats(seconds: Sequence[float]) -> Dict[str, float]:
    """median / p90 / p99 / mean / min / max of a list of durations, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    names = ("median_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms")
    return dict(zip(names, map(float, [*np.percentile(ms, [50, 90, 99]), ms.mean(), ms.min(), ms.max()])))


def run_once(runtime: Any, images: Sequence[np.ndarray]) -> Dict[str, float]:
    """Push one batch through preprocess -> infer -> postprocess; seconds spent in each stage, and
    under "cpu" the process CPU time (all threads) the batch took."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    staged = [runtime.preprocess(image, name=f"bench[{i}]") for i, image in enumerate(images)]
    t1 = time.perf_counter()
    outputs = runtime.infer([prepared for _, prepared in staged])
    t2 = time.perf_counter()
    for (decoded, prepared), out in zip(staged, outputs):
        runtime.postprocess(decoded, prepared, out)
    t3 = time.perf_counter()
    return {"preprocess": t1 - t0, "model": t2 - t1, "postprocess": t3 - t2, "cpu": time.process_time() - c0}


def _summary(splits: List[Dict[str, float]], batch: int, warmup: int) -> Dict[str, Any]:
    """The statistics of the `run_once` splits of one runtime."""
    latency = stats([sum(split[s] for s in STAGES) for split in splits])
    return {
        "batch": batch,
        "runs_done": len(splits),
        "warmup": warmup,
        "latency": latency,
        "stages": {stage: stats([split[stage] for split in splits]) for stage in STAGES},
        "cpu": stats([split["cpu"] for split in splits]),  # process CPU seconds per batch: inflated less by load
        "images_per_s": batch / (latency["median_ms"] / 1e3),
        "ms_per_image": latency["median_ms"] / batch,
    }


def time_runtime(
    runtime: Any,
    image: np.ndarray,
    batch: int = 1,
    runs: int = 10,
    warmup: int = 2,
    max_seconds: Optional[float] = None,
) -> Dict[str, Any]:
    """Time `runs` batches of `batch` copies of `image` after `warmup` untimed ones (stopping early,
    after one at least, once `max_seconds` have passed; `runs_done` says how many ran): latency per
    batch (ms), per stage, CPU time, images/s and per-image latency."""
    return time_interleaved({"_": runtime}, image, batch, runs, warmup, max_seconds)["_"]


def time_interleaved(
    runtimes: Dict[str, Any],
    image: np.ndarray,
    batch: int = 1,
    runs: int = 10,
    warmup: int = 2,
    max_seconds: Optional[float] = None,
) -> Dict[str, Dict[str, Any]]:
    """`time_runtime` for several runtimes (name -> record), taking turns run by run so that load
    that comes and goes falls on all of them alike (fairer ratios on a shared machine)."""
    if batch < 1 or runs < 1 or warmup < 0:
        raise ValueError(f"batch and runs must be >= 1 and warmup >= 0, got {batch}, {runs}, {warmup}")
    images = [image] * batch
    for runtime in runtimes.values():
        for _ in range(warmup):
            run_once(runtime, images)
    splits: Dict[str, List[Dict[str, float]]] = {name: [] for name in runtimes}
    start = time.perf_counter()
    for _ in range(runs):
        for name, runtime in runtimes.items():
            splits[name].append(run_once(runtime, images))
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    return {name: _summary(runs_of, batch, warmup) for name, runs_of in splits.items()}


def machine() -> Dict[str, Any]:
    """The machine and library versions a measurement was taken on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = f.read().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
        cpu_flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if f in flags]
        cpu = (names[0] if names else cpu) + (f" ({', '.join(cpu_flags)})" if cpu_flags else "")
    info: Dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
    }
    for module in ("onnxruntime", "torch"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    return info
