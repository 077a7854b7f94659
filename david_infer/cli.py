"""The `david-infer` command line.

Each subcommand lives in `david_infer/commands/<name>.py` and exposes `add_arguments(parser)` and
`run(args) -> int`. Command modules import nothing heavy at module level, so `--help` and
`--version` answer at once; heavy imports happen inside `run`.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from . import __version__
from .errors import DavidError, Interrupted

# subcommand -> (module under david_infer.commands, one-line help)
COMMANDS = {
    "export": ("export", "export a DAViD model to ONNX (+ manifest)"),
    "download": ("download", "download released DAViD models into the cache"),
    "build-engine": ("build_engine", "build a TensorRT engine (+ sidecar manifest) from an ONNX export"),
    "verify": ("verify", "compare an exported ONNX file with the PyTorch model"),
    "predict": ("predict", "run a model on images, folders or globs and write depth/normal/mask files"),
    "bench": ("bench", "time a model: latency percentiles, images/s, pre/model/post split, backend ratios"),
    "info": ("info", "describe a model or engine file: manifest, inputs, outputs, size, SHA-256"),
    "relight": ("relight", "relight a photo from its predicted normals"),
    "background": ("background", "replace a photo's background using the predicted mask"),
    "pointcloud": ("pointcloud", "write a photo's 2.5D point cloud (PLY) from its predicted depth"),
    "serve": ("serve", "serve a model over HTTP/gRPC (KServe V2 / Triton protocol) with adaptive batching"),
    "web": ("web", "serve the browser page (127.0.0.1): photo in, depth/normals/cut-out and relighting out, all local"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="david-infer", description="Inference SDK for DAViD depth, normal and foreground models."
    )
    parser.add_argument("--version", action="version", version=f"david-infer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        command = importlib.import_module(f"david_infer.commands.{module}")
        p = sub.add_parser(name, help=help_text, description=(command.__doc__ or help_text).strip())
        command.add_arguments(p)
        p.set_defaults(_run=command.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the exit status. Expected errors print one line, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except DavidError as exc:
        print(f"david-infer {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # an Interrupted run says what is complete and how to resume
        detail = f": {exc}" if isinstance(exc, Interrupted) else ""
        print(f"david-infer {args.command}: interrupted{detail}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
