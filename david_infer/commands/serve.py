"""Serve a model over the Open Inference Protocol (KServe V2: what Triton, KServe and MLServer speak),
on HTTP and gRPC, with server-side adaptive batching, parallel workers, health/readiness
(/v2/health/ready) and Prometheus metrics (/metrics on the metrics port). Runs until Ctrl-C.

What is served is the network's own contract (the manifest's inputs and outputs, batch first);
clients preprocess and postprocess: `DavidRuntime("grpc://HOST:GRPC_PORT/NAME", backend="triton")`
or `david-infer predict -m grpc://HOST:GRPC_PORT/NAME ...`. Needs pip install "david-infer[serve]".
"""

from __future__ import annotations

import argparse
import dataclasses

from ..options import DEFAULT_RESOLUTION, RuntimeArguments, positive_int_arg, resolved_model
from ..serving import ServeConfig, read_token, serve

#: the server runs the network alone: no channel order (clients preprocess), its batch is --max-batch-size
RUNTIME = RuntimeArguments(
    channel_order=False,
    batch_size=False,
    threads=False,
    model_help="the model file (.onnx with or without our manifest, .engine), a folder holding one, or a released "
    "model's name",
    resolution_help=f"the image side the backend is prepared for (default auto: {DEFAULT_RESOLUTION}, or a fixed-size "
    "file's own; TensorRT profiles are checked against it); clients may send any size the model accepts",
)
#: the server's flags: ServeConfig fields, with its defaults (%(default)s) and types
FLAGS = {
    "name": "the served model name (default %(default)s)",
    "host": "address to listen on (default %(default)s: this machine only; 0.0.0.0 = all interfaces, with a warning: "
    "put an authenticating proxy in front)",
    "http_port": "HTTP port (default %(default)s)",
    "grpc_port": "gRPC port (default %(default)s)",
    "metrics_port": "Prometheus metrics port (default %(default)s)",
    "max_batch_time": "adaptive batching: wait at most this long to fill a batch (default %(default)s)",
    "workers": "parallel inference worker processes, each with its own copy of the model (default 0: the model runs "
    "in the server process, which saves MLServer's copy of every request to a worker: about 40%% of the server's CPU "
    "per image on a small model)",
    "max_request_bytes": "largest request (HTTP body, gRPC message), refused before it is decoded (default %(default)s)",
    "max_pixels": "most image pixels per request, all its images together (default %(default)s)",
    "max_images": "most images per request (default %(default)s)",
    "header_timeout": "an HTTP request's line and headers must arrive within this many seconds of the connection or "
    "of the previous answer (also gRPC's handshake), else the connection is closed (default %(default)s)",
    "body_timeout": "then its body within this many more seconds (default %(default)s)",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    RUNTIME.add_to(p)
    defaults = {f.name: f.default for f in dataclasses.fields(ServeConfig)}
    for name, help_text in FLAGS.items():
        kind = type(defaults[name])
        metavar = {int: "N", float: "SECONDS"}.get(kind)
        p.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=defaults[name], metavar=metavar, help=help_text
        )
    p.add_argument(
        "--max-batch-size",
        type=positive_int_arg,
        default=8,
        metavar="N",
        help="adaptive batching: merge concurrent requests into batches of up to N images (default 8; 1 = no batching)",
    )
    p.add_argument(
        "--model-control",
        action="store_true",
        help="allow the repository API's model load/unload calls (HTTP and gRPC); off by default",
    )
    p.add_argument(
        "--token-file",
        metavar="PATH",
        help="a file holding a shared token (16+ characters): every call "
        "but health then needs 'Authorization: Bearer TOKEN' (clients: token= / --token-file)",
    )


def run(args: argparse.Namespace) -> int:
    from ..runtime import resolve_model_path

    path = resolve_model_path(resolved_model(args.model))
    # one model call at a time per worker, on one pre/postprocessing thread: the backend's own threads use the cores
    runtime = RUNTIME.options(args, model=str(path), batch_size=args.max_batch_size, threads=1)
    fields = {f.name for f in dataclasses.fields(ServeConfig)} & set(vars(args))
    serve(ServeConfig(runtime, token=read_token(args.token_file), **{f: getattr(args, f) for f in fields}))
    return 0
