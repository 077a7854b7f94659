"""Time a model: warm-up runs, then repeated runs per backend, resolution and batch size.

Reports the median, p90 and p99 latency of one batch, images per second, and the split between
preprocessing, the model call and postprocessing (the runtime's three stages, each timed on its
own), and the process CPU time. With several backends, they take turns run by run (so load from
other jobs falls on all alike) and each one's median latency is given as a ratio to the first
backend's. The input is an in-memory picture (--image FILE, or a synthetic 1280x720 portrait), so
file decoding is not timed.

    david-infer bench -m depth-base.onnx --backend onnxruntime,torch --resolution 256,512 --batch 1,4
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from itertools import groupby
from pathlib import Path
from typing import Any, Dict, List

from ..backends import get_backend
from ..benchmark import machine, synthetic_photo, time_interleaved
from ..errors import InputError
from ..files import commit
from ..inputs import decode
from ..options import RuntimeArguments, resolved_model, split_list
from ._common import add_torch_arguments, check_output_file, open_runtime, with_torch_options

RUNTIME = RuntimeArguments(channel_order=False, batch_size=False, threads=False, many=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    RUNTIME.add_to(p)
    p.add_argument("--batch", action="append", metavar="NS", help="batch size(s) (default 1)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per point (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--image", metavar="FILE", help="the picture to time (default: synthetic 1280x720)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    add_torch_arguments(p)


def run(args: argparse.Namespace) -> int:
    batches = split_list(args.batch, int) or [1]
    if args.runs < 1 or args.warmup < 0 or min(batches) < 1:
        raise InputError(
            f"--runs and --batch must be >= 1 and --warmup >= 0 (got {args.runs}, {batches}, {args.warmup})"
        )
    if args.json:  # before the benchmark, not after it
        check_output_file(Path(args.json), "--json", "bench.json")
    model = resolved_model(args.model)
    variants = [with_torch_options(options, args) for options in RUNTIME.variants(args, batch_size=max(batches))]
    if not any(options.backend == "torch" for options in variants):
        with_torch_options(variants[0], args)  # torch flags without --backend torch: an InputError
    for options in variants:  # a misspelled backend is refused before any output, not after the header
        if options.backend != "auto":
            get_backend(options.backend)
    image = decode(args.image).display() if args.image else synthetic_photo()
    results: List[Dict[str, Any]] = []
    grouped = groupby(variants, key=lambda options: options.resolution)
    for index, (_, same_resolution) in enumerate(grouped):
        with ExitStack() as stack:
            runtimes = {}
            for options in same_resolution:
                runtime = stack.enter_context(open_runtime(options))
                runtimes[runtime.backend] = runtime
            if index == 0:  # once every backend has opened: an error comes alone, without a table
                print(_header())
            for batch in batches:
                for name, record in time_interleaved(runtimes, image, batch, args.runs, args.warmup).items():
                    record.update(backend=name, resolution=runtimes[name].resolution)  # "auto" resolved
                    results.append(record)
                    print(_row(record), flush=True)
    ratios = ratio_table(results)
    for r in ratios:
        others = [b for b in r["latency_ratio"] if b != r["baseline"]]
        parts = ", ".join(f"{b} {r['latency_ratio'][b]:.2f}x (model {r['model_ratio'][b]:.2f}x)" for b in others)
        print(f"ratio to {r['baseline']} at {r['resolution']}, batch {r['batch']}: {parts}")
    report = {
        "model": str(model),
        "device": args.device,
        "image_size": list(image.shape[:2]),
        "runs": args.runs,
        "warmup": args.warmup,
        "machine": machine(),
        "results": results,
        "ratios": ratios,
    }
    if args.json:
        data = (json.dumps(report, indent=2) + "\n").encode()
        commit(args.json, lambda tmp: tmp.write_bytes(data), overwrite=True)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def ratio_table(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per (resolution, batch): each backend's median latency (total and model) over the first backend's."""
    table = []
    for res, batch in dict.fromkeys((r["resolution"], r["batch"]) for r in results):
        rows = [r for r in results if (r["resolution"], r["batch"]) == (res, batch)]
        if len(rows) < 2:
            continue
        base = rows[0]
        lat = {r["backend"]: r["latency"]["median_ms"] / base["latency"]["median_ms"] for r in rows}
        mod = {r["backend"]: r["stages"]["model"]["median_ms"] / base["stages"]["model"]["median_ms"] for r in rows}
        table.append(dict(resolution=res, batch=batch, baseline=base["backend"], latency_ratio=lat, model_ratio=mod))
    return table


def _header() -> str:
    return (
        f"{'backend':<12} {'res':>5} {'batch':>5} {'median ms':>10} {'p90 ms':>9} {'p99 ms':>9} "
        f"{'img/s':>7} {'pre ms':>8} {'model ms':>9} {'post ms':>8} {'CPU ms':>9}"
    )


def _row(r: Dict[str, Any]) -> str:
    lat, st = r["latency"], r["stages"]
    return (
        f"{r['backend']:<12} {r['resolution']:>5} {r['batch']:>5} {lat['median_ms']:>10.1f} {lat['p90_ms']:>9.1f} "
        f"{lat['p99_ms']:>9.1f} {r['images_per_s']:>7.2f} {st['preprocess']['median_ms']:>8.1f} "
        f"{st['model']['median_ms']:>9.1f} {st['postprocess']['median_ms']:>8.1f} {r['cpu']['median_ms']:>9.1f}"
    )
