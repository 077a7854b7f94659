"""Serve a model over the Open Inference Protocol (KServe V2: what Triton, KServe and MLServer speak),
on HTTP and gRPC, with server-side adaptive batching, parallel workers, health/readiness
(/v2/health/ready) and Prometheus metrics (/metrics on the metrics port). Runs until Ctrl-C.

What is served is the network's own contract (the manifest's inputs and outputs, batch first);
clients preprocess and postprocess: `DavidRuntime("grpc://HOST:GRPC_PORT/NAME", backend="triton")`
or `david-infer predict -m grpc://HOST:GRPC_PORT/NAME ...`. Needs pip install "david-infer[serve]".
"""

from __future__ import annotations

import argparse

from ..options import DEFAULT_RESOLUTION, RuntimeArguments, positive_int_arg
from ..serving import BODY_TIMEOUT, HEADER_TIMEOUT, MAX_IMAGES, MAX_PIXELS, MAX_REQUEST_BYTES, read_token

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


def add_arguments(p: argparse.ArgumentParser) -> None:
    RUNTIME.add_to(p)
    p.add_argument("--name", default="david", help="the served model name (default david)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; "
        "0.0.0.0 = all interfaces, with a warning: put an authenticating proxy in front)",
    )
    p.add_argument("--http-port", type=int, default=8080, help="HTTP port (default 8080)")
    p.add_argument("--grpc-port", type=int, default=8081, help="gRPC port (default 8081)")
    p.add_argument("--metrics-port", type=int, default=8082, help="Prometheus metrics port (default 8082)")
    p.add_argument(
        "--max-batch-size",
        type=positive_int_arg,
        default=8,
        metavar="N",
        help="adaptive batching: merge concurrent requests into batches of up to N images (default 8; 1 = no batching)",
    )
    p.add_argument(
        "--max-batch-time",
        type=float,
        default=0.01,
        metavar="SECONDS",
        help="adaptive batching: wait at most this long to fill a batch (default 0.01)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="parallel inference worker processes, each with its own copy of the model (default 0: the "
        "model runs in the server process, which saves MLServer's copy of every request to a "
        "worker: about 40%% of the server's CPU per image on a small model)",
    )
    p.add_argument(
        "--model-control",
        action="store_true",
        help="allow the repository API's model load/unload calls (HTTP and gRPC); off by default",
    )
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=MAX_REQUEST_BYTES,
        metavar="N",
        help=f"largest request (HTTP body, gRPC message), refused before it is decoded (default {MAX_REQUEST_BYTES})",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        metavar="N",
        help=f"most image pixels per request, all its images together (default {MAX_PIXELS})",
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=MAX_IMAGES,
        metavar="N",
        help=f"most images per request (default {MAX_IMAGES})",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=HEADER_TIMEOUT,
        metavar="SECONDS",
        help="an HTTP request's line and headers must arrive within this many seconds of the connection or of "
        f"the previous answer (also gRPC's handshake), else the connection is closed (default {HEADER_TIMEOUT:g})",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=BODY_TIMEOUT,
        metavar="SECONDS",
        help=f"then its body within this many more seconds (default {BODY_TIMEOUT:g})",
    )
    p.add_argument(
        "--token-file",
        metavar="PATH",
        help="a file holding a shared token (16+ characters): every call "
        "but health then needs 'Authorization: Bearer TOKEN' (clients: token= / --token-file)",
    )


def run(args: argparse.Namespace) -> int:
    from ..options import resolved_model
    from ..runtime import resolve_model_path
    from ..serving import ServeConfig, serve

    path = resolve_model_path(resolved_model(args.model))
    # one model call at a time per worker, on one pre/postprocessing thread: the backend's own threads use the cores
    runtime = RUNTIME.options(args, model=str(path), batch_size=args.max_batch_size, threads=1)
    config = ServeConfig(
        runtime,
        name=args.name,
        max_batch_time=args.max_batch_time,
        workers=args.workers,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        model_control=args.model_control,
        max_request_bytes=args.max_request_bytes,
        max_pixels=args.max_pixels,
        max_images=args.max_images,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        token=read_token(args.token_file),
    )
    serve(config)
    return 0
