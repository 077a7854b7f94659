"""`DavidServer`: MLServer with the guards `david-infer serve` needs to be safe to expose.

Imported only by `serving.serve` in the server process (it imports mlserver at module level).
What it adds to MLServer, each through a hook the libraries offer (no protocol code of ours):

- limits before decoding: an HTTP body over `max_request_bytes` is answered 413 from its
  Content-Length (a body without one, 411), a gRPC message over it RESOURCE_EXHAUSTED by gRPC itself
  (its receive limit); images and pixels per request are checked from the shapes (`DavidModel`);
- gRPC raw tensors read as numpy views of the message's buffers (`raw_views`): MLServer unpacks
  them into Python lists (about 40x the payload in memory) and fails with Python internals on a buffer
  of the wrong size; replies go back the same way;
- model control (the repository's load/unload over HTTP and gRPC) refused (403 / PERMISSION_DENIED)
  unless `model_control`; an optional shared token (`Authorization: Bearer TOKEN`, HTTP header or
  gRPC metadata) on every call but health;
- readiness true only while the model is loaded and ready (MLServer says ready with no model);
- a dead inference worker stops the server with EXIT_WORKER_DIED at once, for its supervisor to
  restart it: MLServer's own restart reaps one child per SIGCHLD and can leave the shared response
  queue locked by the dead process, after which requests hang while readiness says 200;
- SIGTERM / SIGINT stop gracefully within STOP_GRACE seconds, or the process exits anyway.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import reduce
from operator import mul
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional

import grpc
import mlserver.grpc.converters as grpc_converters
import mlserver.grpc.utils as grpc_utils
import numpy as np
from grpc import aio
from mlserver import MLServer
from mlserver.errors import MLServerError
from mlserver.grpc.dataplane_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from mlserver.grpc.interceptors import PromServerInterceptor
from mlserver.grpc.model_repository import ModelRepositoryServicer
from mlserver.grpc.model_repository_pb2_grpc import add_ModelRepositoryServiceServicer_to_server
from mlserver.grpc.server import GRPCServer
from mlserver.grpc.servicers import InferenceServicer
from mlserver.raw import pack
from mlserver.types import TensorData

from . import ServeConfig
from .memory import cap_log_lines, start_memory_trimmer

logger = logging.getLogger("david_infer.serving")

#: exit status of a server whose inference worker died (for a supervisor: restart it)
EXIT_WORKER_DIED = 3
#: exit status of a server that did not stop within STOP_GRACE seconds of SIGTERM / SIGINT
EXIT_STOP_TIMEOUT = 4
#: seconds a signalled server has to stop (MLServer gives in-flight gRPC calls 5)
STOP_GRACE = 8.0
#: calls that change which models are loaded (the repository extension), refused unless model_control
MODEL_CONTROL_METHODS = ("RepositoryModelLoad", "RepositoryModelUnload")
#: calls that need no token: orchestrators probe health without credentials
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")
OPEN_METHODS = ("ServerLive", "ServerReady")
_NUMPY_TYPES = {
    "FP32": "<f4",
    "FP16": "<f2",
    "FP64": "<f8",
    "INT64": "<i8",
    "INT32": "<i4",
    "UINT8": "u1",
    "INT8": "i1",
    "BOOL": "?",
}
# MLServer maps only 400, 404, 422 and 500 to gRPC codes; the rest would be UNKNOWN
grpc_utils.STATUS_CODE_MAPPING.update(
    {
        401: grpc.StatusCode.UNAUTHENTICATED,
        403: grpc.StatusCode.PERMISSION_DENIED,
        413: grpc.StatusCode.RESOURCE_EXHAUSTED,
        503: grpc.StatusCode.UNAVAILABLE,
    }
)


# ------------------------------------------------------------------------------------ gRPC raw tensors


def _inject_raw_views(elems: List[Any], raw_contents: List[bytes]) -> List[Any]:
    """MLServer's `inject_raw` with numpy views instead of lists, each buffer checked against its
    input's shape and data type first (400 naming the input)."""
    empty = [elem for elem in elems if not elem.data]
    if len(raw_contents) != len(empty):
        raise MLServerError(
            f"the request carries {len(raw_contents)} raw input buffers for {len(empty)} inputs "
            "without data; send one buffer per input"
        )
    for elem, raw in zip(empty, raw_contents):
        dtype = _NUMPY_TYPES.get(str(getattr(elem.datatype, "value", elem.datatype)))
        if dtype is None:
            raise MLServerError(f"input {elem.name!r}: raw data of type {elem.datatype} are not accepted")
        if any(not isinstance(d, int) or d < 0 for d in elem.shape):
            raise MLServerError(f"input {elem.name!r} has shape {list(elem.shape)}: dims are non-negative integers")
        need = reduce(mul, elem.shape, 1) * np.dtype(dtype).itemsize
        if len(raw) != need:
            raise MLServerError(
                f"input {elem.name!r}: its raw buffer holds {len(raw)} bytes; shape {list(elem.shape)} "
                f"of {elem.datatype} needs {need}"
            )
        elem.data = TensorData.model_construct(np.frombuffer(raw, dtype=dtype))
    return elems


def _extract_raw_views(elems: List[Any]) -> tuple:
    """MLServer's `extract_raw`, taking an array's bytes at once (MLServer packs value by value)."""
    raw_contents = []
    for elem in elems:
        data = getattr(elem.data, "root", elem.data)
        raw_contents.append(data.tobytes() if isinstance(data, np.ndarray) else pack(elem))
        elem.data = []
    return elems, raw_contents


def raw_views() -> None:
    """Route MLServer's gRPC converters through `_inject_raw_views` / `_extract_raw_views`."""
    grpc_converters.inject_raw = _inject_raw_views
    grpc_converters.extract_raw = _extract_raw_views


# ------------------------------------------------------------------------------------ guards


def _token_ok(expected: Optional[str], given: Optional[str]) -> bool:
    if expected is None:
        return True
    return given is not None and hmac.compare_digest(given.encode(), f"Bearer {expected}".encode())


class HttpGuard:
    """ASGI middleware in front of MLServer's REST app: token, model control, body size."""

    def __init__(self, app: Any, config: ServeConfig) -> None:
        self.app, self.config = app, config

    async def __call__(self, scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        path = scope.get("path", "")
        refusal = None
        if path not in OPEN_PATHS and not _token_ok(self.config.token, headers.get("authorization")):
            refusal = (
                401,
                "this server needs the header 'Authorization: Bearer TOKEN' (david-infer serve --token-file)",
            )
        elif (
            path.startswith("/v2/repository/models/")
            and path.rsplit("/", 1)[-1] in ("load", "unload")
            and not self.config.model_control
        ):
            refusal = (403, "model control (load/unload) is off; start the server with --model-control to allow it")
        elif scope.get("method") in ("POST", "PUT", "PATCH"):
            length = headers.get("content-length")
            if length is None:
                refusal = (411, "send the request with a Content-Length header")
            elif not length.isdigit() or int(length) > self.config.max_request_bytes:
                refusal = (
                    413,
                    f"the request body is {length} bytes; this server takes at most "
                    f"{self.config.max_request_bytes} (--max-request-bytes); send fewer or smaller "
                    "images per request, or use gRPC, whose raw tensors are about 2.5x smaller than JSON",
                )
        if refusal is None and path == "/v2/repository/index" and headers.get("content-length") == "0":
            return await self.app(*_empty_index_request(scope), send)
        if refusal is None:
            return await self.app(scope, receive, send)
        body = json.dumps({"error": refusal[1]}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": refusal[0],
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _empty_index_request(scope: Dict[str, Any]) -> tuple:
    """The repository index call with an empty body, as `{}`: Triton's HTTP clients send no body
    (Triton takes that as "all models"); MLServer answers 422 to it."""
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"] + [(b"content-length", b"2")]

    async def receive() -> Dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    return {**scope, "headers": headers}, receive


def _refuse(code: grpc.StatusCode, message: str, streaming: bool) -> grpc.RpcMethodHandler:
    async def unary(request: Any, context: aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def stream(requests: Any, context: aio.ServicerContext) -> None:
        await context.abort(code, message)

    return grpc.stream_stream_rpc_method_handler(stream) if streaming else grpc.unary_unary_rpc_method_handler(unary)


class GrpcGuard(aio.ServerInterceptor):
    """gRPC interceptor: token (metadata `authorization`) and model control."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler]], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        method = details.method.rsplit("/", 1)[-1]
        streaming = method == "ModelStreamInfer"
        metadata = dict(details.invocation_metadata or ())
        if method not in OPEN_METHODS and not _token_ok(self.config.token, metadata.get("authorization")):
            return _refuse(
                grpc.StatusCode.UNAUTHENTICATED,
                "this server needs the metadata 'authorization: Bearer TOKEN' (david-infer serve --token-file)",
                streaming,
            )
        if method in MODEL_CONTROL_METHODS and not self.config.model_control:
            return _refuse(
                grpc.StatusCode.PERMISSION_DENIED,
                "model control (load/unload) is off; start the server with --model-control to allow it",
                streaming,
            )
        return await continuation(details)


class GuardedGRPCServer(GRPCServer):
    """MLServer's gRPC server with GrpcGuard, a receive limit of max_request_bytes (replies may be
    larger: a reply carries five channels per pixel, a request three) and no port sharing
    (gRPC's SO_REUSEPORT would let a second server on the same port take half the calls)."""

    def __init__(self, *args: Any, config: ServeConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._config = config

    def _create_server(self) -> aio.Server:
        self._inference_servicer = InferenceServicer(self._data_plane, self._model_repository_handlers)
        self._model_repository_servicer = ModelRepositoryServicer(self._model_repository_handlers)
        interceptors: List[aio.ServerInterceptor] = [GrpcGuard(self._config)]
        if self._settings.metrics_endpoint:
            interceptors.append(PromServerInterceptor(enable_handling_time_histogram=True))
        options = [
            ("grpc.max_receive_message_length", self._config.max_request_bytes),
            ("grpc.max_send_message_length", 1 << 30),
            ("grpc.so_reuseport", 0),
        ]
        self._server = aio.server(ThreadPoolExecutor(max_workers=5), interceptors=interceptors, options=options)
        add_GRPCInferenceServiceServicer_to_server(self._inference_servicer, self._server)
        add_ModelRepositoryServiceServicer_to_server(self._model_repository_servicer, self._server)
        self._server.add_insecure_port(f"{self._settings.host}:{self._settings.grpc_port}")
        return self._server


# ------------------------------------------------------------------------------------ the server


class DavidServer(MLServer):
    """MLServer with the guards above; `folder` is the settings folder (removed on a hard exit)."""

    def __init__(self, settings: Any, config: ServeConfig, folder: Path) -> None:
        self._config, self._folder, self._stopping = config, folder, False
        raw_views()
        super().__init__(settings)
        cap_log_lines()
        if self._inference_pool_registry is not None:  # replaces MLServer's restart (see the module's doc)
            signal.signal(signal.SIGCHLD, self._on_child_exit)

    def _create_servers(self) -> None:
        super()._create_servers()
        self._rest_server._app.add_middleware(HttpGuard, config=self._config)
        self._grpc_server = GuardedGRPCServer(
            self._settings, self._data_plane, self._model_repository_handlers, config=self._config
        )
        self._data_plane.ready = self._ready

    async def _ready(self) -> bool:
        """Ready while the served model is loaded and ready (MLServer: all of none is ready)."""
        models = list(await self._model_registry.get_models())  # an iterator (always true)
        return not self._stopping and bool(models) and all(model.ready for model in models)

    async def start(self, models_settings: Any = ()) -> None:
        start_memory_trimmer()
        await super().start(list(models_settings))

    def _add_signal_handlers(self) -> None:
        loop = asyncio.get_event_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)

    def _on_stop_signal(self, sig: int) -> None:
        if self._stopping:  # uvicorn raises the signal again once it stopped; the timer bounds the wait
            return
        self._stopping = True
        print(f"stopping ({signal.Signals(sig).name})", file=sys.stderr, flush=True)
        timer = threading.Timer(
            STOP_GRACE, self._exit_now, (EXIT_STOP_TIMEOUT, f"did not stop within {STOP_GRACE:g} s; exiting anyway")
        )
        timer.daemon = True
        timer.start()
        asyncio.get_event_loop().create_task(self.stop(sig))

    def _on_child_exit(self, signum: int, frame: Any) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if not self._stopping and code != 0:  # 0: a helper process's normal end (as MLServer reads it)
                how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
                self._exit_now(
                    EXIT_WORKER_DIED,
                    f"inference worker {pid} {how}; exiting with status "
                    f"{EXIT_WORKER_DIED} so that a supervisor restarts the server",
                )

    def _exit_now(self, status: int, message: str) -> None:
        """Log `message`, kill the workers, remove the settings folder and exit with `status`."""
        self._stopping = True
        logger.error("david-infer serve: %s", message)
        for child in multiprocessing.active_children():
            child.kill()
        shutil.rmtree(self._folder, ignore_errors=True)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(status)
