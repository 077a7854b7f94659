"""`DavidServer`: MLServer's protocol handlers (data plane, registry, worker pool, repository handlers,
REST app, gRPC servicers, each through its public constructor and methods) behind an uvicorn and a
gRPC server of ours, with the guards `david-infer serve` needs to be safe to expose: limits before
decoding, request deadlines, raw gRPC tensors read in place, no echo of a request, model control and
token, honest readiness, a dead worker stopping the server, bounded stops (docs/serving-security.md).
MLServer's `MLServer` class builds its servers in private methods and KServe's ModelServer has no
host setting, hence this. Imported only in the server process."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
from functools import reduce
from operator import mul
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional

import grpc
import h11
import numpy as np
import uvicorn
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from grpc import aio
from mlserver.errors import MLServerError
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.converters import ModelInferRequestConverter, ModelInferResponseConverter
from mlserver.grpc.dataplane_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from mlserver.grpc.interceptors import PromServerInterceptor
from mlserver.grpc.model_repository import ModelRepositoryServicer
from mlserver.grpc.model_repository_pb2_grpc import add_ModelRepositoryServiceServicer_to_server
from mlserver.grpc.servicers import InferenceServicer
from mlserver.handlers import DataPlane, ModelRepositoryHandlers
from mlserver.logging import configure_logger
from mlserver.metrics.prometheus import PrometheusEndpoint
from mlserver.parallel import InferencePoolRegistry
from mlserver.registry import MultiModelRegistry
from mlserver.repository import ModelRepositoryFactory
from mlserver.rest.app import create_app
from mlserver.settings import Settings
from mlserver.types import InferenceRequest, InferenceResponse, TensorData
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from . import ServeConfig, cap_log_lines, start_memory_trimmer

logger = logging.getLogger("david_infer.serving")

#: exit status of a server whose model failed to load at start
EXIT_LOAD_FAILED = 2
#: exit status of a server whose inference worker died (for a supervisor: restart it)
EXIT_WORKER_DIED = 3
#: exit status of a server that did not stop within STOP_GRACE seconds of SIGTERM / SIGINT
EXIT_STOP_TIMEOUT = 4
#: seconds a signalled server has to stop; in-flight calls get GRPC_GRACE of them
STOP_GRACE = 8.0
GRPC_GRACE = 5.0
#: calls that change which models are loaded (the repository extension), refused unless model_control
MODEL_CONTROL_METHODS = ("RepositoryModelLoad", "RepositoryModelUnload")
#: calls that need no token: orchestrators probe health without credentials
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")
OPEN_METHODS = ("ServerLive", "ServerReady")
#: the most characters of a refusal's message (a 422 lists the fields that did not parse)
MAX_ERROR_CHARS = 2000
TOKEN_NEEDED = "this server needs the {}: Bearer TOKEN' (david-infer serve --token-file)"
CONTROL_OFF = "model control (load/unload) is off; start the server with --model-control to allow it"
NUMPY_TYPES = dict(FP32="<f4", FP16="<f2", FP64="<f8", INT64="<i8", INT32="<i4", UINT8="u1", INT8="i1", BOOL="?")
#: MLServer errors carry HTTP statuses; their gRPC codes
GRPC_CODES = {
    status: getattr(grpc.StatusCode, name)
    for status, name in [(400, "INVALID_ARGUMENT"), (401, "UNAUTHENTICATED"), (403, "PERMISSION_DENIED")]
    + [(404, "NOT_FOUND"), (413, "RESOURCE_EXHAUSTED"), (422, "FAILED_PRECONDITION"), (503, "UNAVAILABLE")]
}


def raw_views(inputs: List[Any], buffers: List[bytes]) -> None:
    """Give each input without data its raw buffer as a numpy view, each buffer checked against its
    input's shape and data type first (MLServerError 400 naming the input)."""
    empty = [item for item in inputs if not item.data]
    if len(empty) != len(inputs):  # the protocol's rule; mixed, the reply came back in another format
        raise MLServerError(
            "the request sends some inputs as contents and others as raw_input_contents; send every input one way"
        )
    if len(buffers) != len(empty):
        raise MLServerError(
            f"the request carries {len(buffers)} raw input buffers for {len(empty)} inputs "
            "without data; send one buffer per input"
        )
    for item, raw in zip(empty, buffers):
        dtype = NUMPY_TYPES.get(str(getattr(item.datatype, "value", item.datatype)))
        if dtype is None:
            raise MLServerError(f"input {item.name!r}: raw data of type {item.datatype} are not accepted")
        if any(not isinstance(d, int) or d < 0 for d in item.shape):
            raise MLServerError(f"input {item.name!r} has shape {list(item.shape)}: dims are non-negative integers")
        need = reduce(mul, item.shape, 1) * np.dtype(dtype).itemsize
        if len(raw) != need:
            raise MLServerError(
                f"input {item.name!r}: its raw buffer holds {len(raw)} bytes; shape {list(item.shape)} "
                f"of {item.datatype} needs {need}"
            )
        item.data = TensorData.model_construct(np.frombuffer(raw, dtype=dtype))


def request_with_views(message: Any) -> InferenceRequest:
    """A gRPC ModelInferRequest as MLServer's InferenceRequest, raw tensors as numpy views (MLServer's
    converter would unpack them into Python lists, about 40x the payload)."""
    buffers = list(message.raw_input_contents)
    message.ClearField("raw_input_contents")
    payload = ModelInferRequestConverter.to_types(message)
    if buffers:
        raw_views(payload.inputs, buffers)
    return payload


def raw_reply(result: InferenceResponse) -> Any:
    """An InferenceResponse whose outputs are arrays (`DavidModel` answers raw requests so) as a
    gRPC reply with raw output contents."""
    reply = pb.ModelInferResponse(model_name=result.model_name, model_version=result.model_version or "")
    reply.id = result.id or ""
    for output in result.outputs:
        value = np.ascontiguousarray(getattr(output.data, "root", output.data))
        reply.outputs.add(name=output.name, datatype=str(output.datatype), shape=list(value.shape))
        reply.raw_output_contents.append(value.tobytes())
    return reply


class RawTensorServicer(InferenceServicer):
    """MLServer's gRPC inference servicer; `ModelInfer` reads raw tensors in place."""

    def __init__(self, data_plane: DataPlane, handlers: ModelRepositoryHandlers) -> None:
        super().__init__(data_plane, handlers)
        self.plane = data_plane

    async def ModelInfer(self, request: Any, context: aio.ServicerContext) -> Any:  # noqa: N802 (the protocol's name)
        raw = bool(request.raw_input_contents)
        try:
            payload = request_with_views(request)
            result = await self.plane.infer(payload=payload, name=request.model_name, version=request.model_version)
        except MLServerError as exc:
            (logger.error if exc.status_code >= 500 else logger.info)("inference refused: %s", exc)
            await context.abort(GRPC_CODES.get(exc.status_code, grpc.StatusCode.UNKNOWN), str(exc)[:MAX_ERROR_CHARS])
        except Exception as exc:  # answered with its type and message, never a traceback
            logger.error("inference failed: %s: %s", type(exc).__name__, exc)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
        return raw_reply(result) if raw else ModelInferResponseConverter.from_types(result)


def token_ok(expected: Optional[str], given: Optional[str]) -> bool:
    """Whether the Authorization value `given` carries the token `expected` (any, if none is set)."""
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
        if path not in OPEN_PATHS and not token_ok(self.config.token, headers.get("authorization")):
            refusal = (401, TOKEN_NEEDED.format("header 'Authorization"))
        elif (
            path.startswith("/v2/repository/models/")
            and path.endswith(("/load", "/unload"))
            and not self.config.model_control
        ):
            refusal = (403, CONTROL_OFF)
        elif scope.get("method") in ("POST", "PUT", "PATCH"):
            length = headers.get("content-length")
            if length is None:
                refusal = (411, "send the request with a Content-Length header")
            elif not length.isdigit() or int(length) > self.config.max_request_bytes:
                refusal = (
                    413,
                    f"the request body is {length} bytes; this server takes at most "
                    f"{self.config.max_request_bytes} (--max-request-bytes); send fewer or smaller "
                    "images per request, or use gRPC, whose raw tensors are several times smaller than JSON",
                )
        if refusal is None and path == "/v2/repository/index" and headers.get("content-length") == "0":
            return await self.app(*empty_index_request(scope), send)
        if refusal is None:
            return await self.app(scope, receive, send)
        answer = JSONResponse({"error": refusal[1]}, status_code=refusal[0], headers={"connection": "close"})
        await answer(scope, receive, send)


def empty_index_request(scope: Dict[str, Any]) -> tuple:
    """The repository index call with an empty body, as `{}`: Triton's HTTP clients send no body
    (Triton takes that as "all models"); MLServer answers 422 to it."""
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"] + [(b"content-length", b"2")]

    async def receive() -> Dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    return {**scope, "headers": headers}, receive


async def unparsable_request(request: Request, exc: Exception) -> JSONResponse:
    """422 naming where the request does not follow the protocol, without the values (FastAPI's
    default answer echoes the offending input: a whole tensor)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    where = "; ".join(
        ".".join(str(part) for part in error.get("loc", ()) if part != "body") + ": " + str(error.get("msg", ""))
        for error in errors[:10]
    )
    message = f"the request does not follow the inference protocol ({where})"
    return JSONResponse({"error": message[:MAX_ERROR_CHARS]}, status_code=422)


def refuse(code: grpc.StatusCode, message: str, streaming: bool) -> grpc.RpcMethodHandler:
    """A gRPC handler that answers every call with `code` and `message`."""

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
        if method not in OPEN_METHODS and not token_ok(self.config.token, metadata.get("authorization")):
            return refuse(grpc.StatusCode.UNAUTHENTICATED, TOKEN_NEEDED.format("metadata 'authorization"), streaming)
        if method in MODEL_CONTROL_METHODS and not self.config.model_control:
            return refuse(grpc.StatusCode.PERMISSION_DENIED, CONTROL_OFF, streaming)
        return await continuation(details)


def deadline_protocol(header_timeout: float, body_timeout: float) -> type:
    """uvicorn's HTTP/1.1 protocol with request deadlines: the request line and headers must arrive
    within `header_timeout` seconds of the connection or of the previous answer, the body within
    `body_timeout` more; a connection that misses either is closed. The state read is h11's."""

    class RequestDeadlines(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.request_deadline: Optional[asyncio.TimerHandle] = None
            self.arm_deadline(header_timeout, body_next=True)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.arm_deadline(header_timeout, body_next=True)

        def connection_lost(self, exc: Optional[Exception]) -> None:
            if self.request_deadline is not None:
                self.request_deadline.cancel()
            super().connection_lost(exc)

        def arm_deadline(self, seconds: float, body_next: bool) -> None:
            if self.request_deadline is not None:
                self.request_deadline.cancel()
            self.request_deadline = self.loop.call_later(seconds, self.deadline_passed, body_next)

        def deadline_passed(self, body_next: bool) -> None:
            state = self.conn.their_state
            if self.transport.is_closing() or state not in (h11.IDLE, h11.SEND_BODY):
                return  # gone, or the request is in (its answer re-arms the deadline)
            if state is h11.SEND_BODY and body_next:  # headers in time: the body gets its own time
                self.arm_deadline(body_timeout, body_next=False)
                return
            self.transport.close()

    return RequestDeadlines


class QuietServer(uvicorn.Server):
    """uvicorn's server without its signal handlers: `DavidServer` handles the signals for all servers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ReadyDataPlane(DataPlane):
    """MLServer's data plane, ready only while a model is loaded and every model is ready and the
    server is not stopping (MLServer's: all of none is ready)."""

    def __init__(self, settings: Settings, registry: MultiModelRegistry) -> None:
        super().__init__(settings=settings, model_registry=registry)
        self.registry, self.stopping = registry, False

    async def ready(self) -> bool:
        models = list(await self.registry.get_models())
        return not self.stopping and bool(models) and all(model.ready for model in models)


class DavidServer:
    """The HTTP, gRPC and metrics servers over MLServer's handlers, with the guards above; `folder`
    is the settings folder (removed on a hard exit). Made inside the running event loop."""

    def __init__(self, settings: Settings, config: ServeConfig, folder: Path) -> None:
        self.settings, self.config, self.folder, self.stopping = settings, config, folder, False
        configure_logger(settings)
        metrics = PrometheusEndpoint(settings)  # first: it sets prometheus_client's multi-process mode
        self.pool: Optional[InferencePoolRegistry] = None
        if settings.parallel_workers:
            self.pool = InferencePoolRegistry(settings)
            signal.signal(signal.SIGCHLD, self.on_child_exit)  # not the pool's restart: it can leave requests hanging
            self.registry = MultiModelRegistry(
                on_model_load=[self.pool.load_model],
                on_model_reload=[self.pool.reload_model],
                on_model_unload=[self.pool.unload_model],
                model_initialiser=self.pool.model_initialiser,
            )
        else:
            self.registry = MultiModelRegistry()
        self.repository = ModelRepositoryFactory.resolve_model_repository(settings)
        self.data_plane = ReadyDataPlane(settings, self.registry)
        handlers = ModelRepositoryHandlers(repository=self.repository, model_registry=self.registry)

        app = create_app(settings, data_plane=self.data_plane, model_repository_handlers=handlers)
        app.add_exception_handler(RequestValidationError, unparsable_request)
        app.add_middleware(HttpGuard, config=config)
        self.http = QuietServer(self.uvicorn_config(app, config.http_port))
        metrics_app = Starlette(routes=[Route(settings.metrics_endpoint or "/metrics", metrics.handle_metrics)])
        self.metrics = QuietServer(self.uvicorn_config(metrics_app, config.metrics_port))

        interceptors: List[aio.ServerInterceptor] = [GrpcGuard(config)]
        if settings.metrics_endpoint:
            interceptors.append(PromServerInterceptor(enable_handling_time_histogram=True))
        options = [
            ("grpc.max_receive_message_length", config.max_request_bytes),
            # replies may be larger than requests: five channels per pixel against three
            ("grpc.max_send_message_length", 1 << 30),
            # no port sharing: SO_REUSEPORT would let a second server on the port take half the calls
            ("grpc.so_reuseport", 0),
            ("grpc.server_handshake_timeout_ms", int(config.header_timeout * 1000)),
        ]
        self.grpc = aio.server(interceptors=interceptors, options=options)
        add_GRPCInferenceServiceServicer_to_server(RawTensorServicer(self.data_plane, handlers), self.grpc)
        add_ModelRepositoryServiceServicer_to_server(ModelRepositoryServicer(handlers), self.grpc)
        self.grpc.add_insecure_port(f"{config.host}:{config.grpc_port}")
        cap_log_lines()

    def uvicorn_config(self, app: Any, port: int) -> uvicorn.Config:
        return uvicorn.Config(
            app,
            host=self.config.host,
            port=port,
            http=deadline_protocol(self.config.header_timeout, self.config.body_timeout),
            access_log=False,
            timeout_graceful_shutdown=int(GRPC_GRACE),
        )

    async def run(self) -> None:
        """Load the model (the ports open once it is ready), then serve until stopped."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
            loop.add_signal_handler(sig, self.on_stop_signal, sig)
        start_memory_trimmer()
        try:
            for model_settings in await self.repository.list():
                await self.registry.load(model_settings)
        except Exception as exc:  # the model's own error, in one line
            self.exit_now(EXIT_LOAD_FAILED, f"the model failed to load: {type(exc).__name__}: {exc}")
        await self.grpc.start()
        await asyncio.gather(self.http.serve(), self.metrics.serve(), self.grpc.wait_for_termination())

    async def stop(self) -> None:
        """Stop taking calls, finish those in flight (GRPC_GRACE seconds), stop the workers."""
        self.http.should_exit = self.metrics.should_exit = True
        await self.grpc.stop(GRPC_GRACE)
        if self.pool is not None:
            await self.pool.close()

    def on_stop_signal(self, sig: int) -> None:
        if self.stopping:
            return
        self.stopping = self.data_plane.stopping = True
        print(f"stopping ({signal.Signals(sig).name})", file=sys.stderr, flush=True)
        timer = threading.Timer(
            STOP_GRACE, self.exit_now, (EXIT_STOP_TIMEOUT, f"did not stop within {STOP_GRACE:g} s; exiting anyway")
        )
        timer.daemon = True
        timer.start()
        asyncio.get_running_loop().create_task(self.stop())

    def on_child_exit(self, signum: int, frame: Any) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if not self.stopping and code != 0:  # 0: a helper process's normal end (as MLServer reads it)
                how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
                self.exit_now(
                    EXIT_WORKER_DIED,
                    f"inference worker {pid} {how}; exiting with status "
                    f"{EXIT_WORKER_DIED} so that a supervisor restarts the server",
                )

    def exit_now(self, status: int, message: str) -> None:
        """Log `message`, kill the workers, remove the settings folder and exit with `status`."""
        self.stopping = True
        logger.error("david-infer serve: %s", message)
        for child in multiprocessing.active_children():
            child.kill()
        shutil.rmtree(self.folder, ignore_errors=True)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(status)


def run_server(settings: Settings, config: ServeConfig, folder: Path) -> None:
    """Serve until SIGINT/SIGTERM (in the current thread's new event loop)."""

    async def main() -> None:
        await DavidServer(settings, config, folder).run()

    asyncio.run(main())


__all__ = ["DavidServer", "run_server", "EXIT_WORKER_DIED", "EXIT_STOP_TIMEOUT", "EXIT_LOAD_FAILED"]
