"""Build a TensorRT engine (plain plan) and its manifest (FILE.engine.json) from an ONNX export.

Needs an NVIDIA GPU, TensorRT 10 or 11 and cuda-python (pip install "david-infer[gpu]"). The
engine runs only under the TensorRT version and on the GPU kind it was built with, unless built
with --hardware-compat ampere+ (any Ampere-or-newer GPU; somewhat slower).
"""

from __future__ import annotations

import argparse

from ..backends.tensorrt.profiles import DEFAULT_MAX, DEFAULT_MAX_BATCH, DEFAULT_MIN, DEFAULT_OPT
from ..shapes import format_shape


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx", metavar="FILE.onnx", help="a david-infer ONNX export (its FILE.json manifest beside it)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.engine", help="the plan to write")
    p.add_argument(
        "--min", dest="min_hw", metavar="HxW", help=f"smallest input size (default {format_shape(DEFAULT_MIN)})"
    )
    p.add_argument(
        "--opt", dest="opt_hw", metavar="HxW", help=f"size to tune for (default {format_shape(DEFAULT_OPT)})"
    )
    p.add_argument(
        "--max", dest="max_hw", metavar="HxW", help=f"largest input size (default {format_shape(DEFAULT_MAX)})"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        metavar="N",
        help=f"largest batch (default {DEFAULT_MAX_BATCH})",
    )
    p.add_argument("--workspace", type=float, metavar="GB", help="builder workspace limit in GiB (default 8)")
    p.add_argument("--timing-cache", metavar="FILE", help="tactic timing cache to read (if present) and write back")
    p.add_argument(
        "--hardware-compat",
        choices=("ampere+",),
        default=None,
        help="build one engine for every Ampere-or-newer GPU (A100 -> H100)",
    )
    p.add_argument(
        "--tf32",
        action="store_true",
        help="allow TF32 for FP32 maths (faster on Ampere+, 10-bit mantissas; off by default)",
    )


def run(args: argparse.Namespace) -> int:
    from ..export.tensorrt import DEFAULT_WORKSPACE_GB, build_engine

    workspace = args.workspace if args.workspace is not None else DEFAULT_WORKSPACE_GB
    engine_manifest = build_engine(
        args.onnx,
        args.output,
        min_hw=args.min_hw,
        opt_hw=args.opt_hw,
        max_hw=args.max_hw,
        max_batch=args.max_batch,
        workspace_gb=workspace,
        timing_cache=args.timing_cache,
        hardware_compat=args.hardware_compat or "none",
        tf32=args.tf32,
    )
    info = engine_manifest["tensorrt"]
    print(
        f"wrote {args.output} (+ engine manifest): {engine_manifest['variant']}/{engine_manifest['task']}, {info['precision']}, "
        f"TensorRT {info['version']} on {info['gpu']} (sm {info['compute_capability']}), "
        f"built in {info['build_seconds']:.1f} s"
    )
    return 0
