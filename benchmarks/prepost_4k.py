"""Pre- and postprocessing time for a 3840x2160 photo, apart from model time.

Runs the tiny multi-task model (random weights: the model call is not what is measured) through
DavidRuntime's three stages, `preprocess`, `infer` and `postprocess`, and reports the median of
several runs of each: wall-clock time, and process CPU time (all threads), which a busy shared
machine inflates less. The photo is scikit-image's astronaut upscaled to 3840x2160 (or a synthetic
gradient image when scikit-image is missing).

    python benchmarks/prepost_4k.py [--runs 15] [--resolution 512] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from david_infer import DavidRuntime  # noqa: E402

WIDTH, HEIGHT = 3840, 2160


def photo_4k() -> np.ndarray:
    """A 3840x2160 RGB uint8 photo: the astronaut upscaled (bicubic), else a synthetic image."""
    try:
        from skimage import data

        src = Image.fromarray(data.astronaut())
    except ImportError:
        y, x = np.mgrid[0:512, 0:512]
        src = Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8))
    return np.asarray(src.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC))


def median_ms(fn: Callable[[], Any], runs: int) -> Tuple[float, float, float]:
    """(median wall-clock ms, median process CPU ms over all threads, fastest wall-clock ms)."""
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1000.0)
        cpu.append((time.process_time() - start_cpu) * 1000.0)
    return statistics.median(wall), statistics.median(cpu), min(wall)


def measure(rt: DavidRuntime, image: Any, runs: int, cold: bool = False) -> Dict[str, float]:
    """Median stage times; `cold` clears the resampling-weight caches before every
    postprocessing call, as when every photo has a new size."""
    from david_infer import resample

    decoded, prepared = rt.preprocess(image)
    outputs = rt.infer([prepared])[0]
    rt.postprocess(decoded, prepared, outputs)  # warm-up of every stage

    def post_call() -> None:
        if cold:
            resample.weights.cache_clear()
            resample.cv2_weights.cache_clear()
        rt.postprocess(decoded, prepared, outputs)

    pre, pre_cpu, pre_best = median_ms(lambda: rt.preprocess(image), runs)
    model, _, _ = median_ms(lambda: rt.infer([prepared]), runs)
    post, post_cpu, post_best = median_ms(post_call, runs)
    return {
        "preprocess_ms": round(pre, 1),
        "postprocess_ms": round(post, 1),
        "pre_plus_post_ms": round(pre + post, 1),
        "pre_plus_post_cpu_ms": round(pre_cpu + post_cpu, 1),
        "pre_plus_post_best_ms": round(pre_best + post_best, 1),
        "model_ms": round(model, 1),
    }


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="pre/post threads (default: CPU count, max 4)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    from david_infer.export import export_onnx

    rgb = photo_4k()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dynamic, official = Path(tmp, "tiny.onnx"), Path(tmp, "tiny-official.onnx")
        export_onnx("tiny", "multitask", dynamic, seed=0)
        export_onnx("tiny", "multitask", official, layout="official", seed=0)
        cases = [
            ("dynamic, numpy RGB, bicubic", dynamic, rgb, {}, False),
            ("dynamic, numpy RGB, bicubic, new size every call", dynamic, rgb, {}, True),
            ("dynamic, numpy RGB, bilinear", dynamic, rgb, {"interpolation": "bilinear"}, False),
            ("dynamic, PIL RGB, bicubic", dynamic, Image.fromarray(rgb), {}, False),
            ("official steps (512), numpy RGB", official, rgb, {}, False),
        ]
        for label, model, image, opts, cold in cases:
            with DavidRuntime(
                model, resolution=args.resolution if model == dynamic else 512, threads=args.threads, **opts
            ) as rt:
                rows.append({"case": label, **measure(rt, image, args.runs, cold)})

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"pre/postprocessing of a {WIDTH}x{HEIGHT} photo, tiny multi-task model, resolution "
        f"{args.resolution}, median of {args.runs} runs, {os.cpu_count()} CPUs, load average {load:.1f} "
        "(medians of wall-clock ms; cpu = process CPU time over all threads; best = fastest runs)"
    )
    header = [
        "case",
        "preprocess_ms",
        "postprocess_ms",
        "pre_plus_post_ms",
        "pre_plus_post_cpu_ms",
        "pre_plus_post_best_ms",
        "model_ms",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in header) + " |")
    result = {
        "image": [HEIGHT, WIDTH],
        "resolution": args.resolution,
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "load_average": round(load, 2),
        "results": rows,
    }
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
