"""Export a DAViD model to ONNX and write its manifest (FILE.json) beside it.

Without --weights the weights are random (from --seed) and the manifest says so.
"""
from __future__ import annotations

import argparse

from ..config import TASKS, variants


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Variant and task are checked by the exporter (one clear error line, not argparse's usage dump).
    p.add_argument("--variant", required=True, help=f"model size: {', '.join(variants())}")
    p.add_argument("--task", required=True, help=f"which head(s): {', '.join(TASKS)}")
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    p.add_argument("--layout", default="dynamic", choices=("dynamic", "official"),
                   help="dynamic: any batch and resolution (default); official: the released 1x3x512x512 contract")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16"),
                   help="fp32 (default) or fp16: mixed precision, LayerNorm/softmax/reductions and I/O in fp32")
    p.add_argument("--weights", help="a david-infer safetensors checkpoint (default: random weights)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, 17 or newer (default 18)")


def run(args: argparse.Namespace) -> int:
    from ..export import export_onnx

    manifest = export_onnx(
        args.variant, args.task, args.output, layout=args.layout, weights=args.weights,
        seed=args.seed, opset=args.opset, precision=args.precision,
    )
    print(f"wrote {args.output} ({manifest['variant']}/{manifest['task']}, {manifest['layout']}, "
          f"{manifest['precision']}; weights: {manifest['weights']['description']})")
    return 0
