"""Serve the browser page on 127.0.0.1: open the printed address in a browser, give it a photo, and
see its depth, normals and foreground cut-out side by side, relight it by dragging, download each map
as PNG. The model runs in the browser (ONNX Runtime Web: WebGPU when the browser has it, WebAssembly
otherwise) and is cached there for the next visit; the page, ONNX Runtime and the model come from
this server only, and no photo leaves the browser. Runs until Ctrl-C.

MODEL is the pixels-to-maps graph: david-infer export ... --prepost (FP32 or FP16).
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True,
                   help="the pixels-to-maps ONNX graph (david-infer export ... --prepost) with its manifest beside "
                   "it, or a folder holding one")
    p.add_argument("--port", type=int, default=8000, metavar="N",
                   help="port on 127.0.0.1 (default 8000; 0 = any free port, printed at start)")
    p.add_argument("--verbose", action="store_true", help="log every request")


def run(args: argparse.Namespace) -> int:
    from ..runtime import resolve_model_path
    from ..webapp import open_page_server

    server = open_page_server(resolve_model_path(args.model), port=args.port, verbose=args.verbose)
    model = server.model
    print(f"serving {model.path} ({model.bytes / 1e6:.1f} MB, {model.precision}, {'/'.join(model.tasks)}) "
          f"at {server.url}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
