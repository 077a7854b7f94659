"""Compare an exported ONNX file with the PyTorch model it came from (ONNX Runtime, CPU).

Reads the manifest beside FILE.onnx, rebuilds the model with the same weights (the manifest's
random seed, or --weights), runs both on the same random inputs and judges each output with
per-task metrics (depth error against its spread and AbsRel after alignment, normal angles,
foreground MAE and IoU, max absolute error) at each resolution and batch size; the relative error
||onnx - torch|| / ||torch|| is printed too. Exit status 1 when any output fails (an FP32 graph
must match to float rounding, an FP16 graph to the default thresholds). Official-layout graphs are
checked at 512x512, batch 1 only.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="FILE.onnx", help="an exported .onnx with its manifest (FILE.json) beside it")
    p.add_argument(
        "--resolutions",
        help="HEIGHTxWIDTH list (N for NxN), multiples of the stride (default 256x256,512x512,384x640,1024x1024)",
    )
    p.add_argument("--batches", help="batch sizes (default 1,3)")
    p.add_argument(
        "--tolerance", type=float, help="also require relative error <= this (default: the per-task metrics alone)"
    )
    p.add_argument("--weights", help="the safetensors file the model was exported from (default: the manifest's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from ..export.verify import format_report, parse_batches, parse_resolutions, verify_onnx

    resolutions = parse_resolutions(args.resolutions) if args.resolutions else None
    batches = parse_batches(args.batches) if args.batches else None
    report = verify_onnx(
        args.model,
        resolutions=resolutions,
        batches=batches,
        tolerance=args.tolerance,
        weights=args.weights,
        seed=args.seed,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0 if report.passed else 1
