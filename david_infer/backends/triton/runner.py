"""Talking to a KServe V2 / Triton server with `tritonclient` (gRPC or HTTP behind one adapter), and
the runner. Each call has the timeout as a deadline for the whole call; what the transport raises,
or a dead inference worker, is ServerUnavailable (retried `retries` times, the delay doubling);
what the server answers is a ModelError at once (NonFiniteOutput for a non-finite output, an
InputError for a gRPC URL at an HTTP port)."""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import Any, Callable, Dict, List, Mapping, Sequence, TypeVar

import numpy as np

from ..._optional import require
from ...contract import GraphIO, TensorSpec
from ...errors import InputError, ModelError, NonFiniteOutput, ServerUnavailable
from ..base import Runner

T = TypeVar("T")
#: gRPC status codes and HTTP statuses that mean "the server is not there (now)"
_UNAVAILABLE = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED", "502", "503", "504"}
#: what the server says when an inference worker died under a request (MLServer's WorkerStop)
_WORKER_DIED = "Worker process stopped unexpectedly"
#: what gRPC says when it reached an HTTP/1 server (a gRPC URL with the HTTP port)
_NOT_GRPC = ("Trying to connect an http1.x server", "Expected SETTINGS frame as the first frame")
_DTYPES = {"FP32": "float32", "FP16": "float16", "FP64": "float64", "UINT8": "uint8"}
#: gRPC channel limit both ways (the library's default of 4 MiB is less than a batch of images)
GRPC_MAX_MESSAGE = 1 << 30


class Protocol:
    """One server address over gRPC or HTTP: makes clients and runs calls with the timeout, the
    retry policy and typed errors."""

    def __init__(self, url: str, scheme: str, address: str, options: Any) -> None:
        self.url, self.scheme, self.address, self.options = url, scheme, address, options
        self.grpc = scheme == "grpc"
        self.module = require("tritonclient.grpc" if self.grpc else "tritonclient.http", "the triton backend")
        self.binary = self.grpc  # HTTP binary tensors only where the server lists the extension

    def client(self) -> Any:
        timeout = self.options.timeout
        if self.grpc:
            limits = [
                ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
                ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
            ]
            return self.module.InferenceServerClient(self.address, channel_args=limits)
        return self.module.InferenceServerClient(
            self.address, connection_timeout=timeout, network_timeout=timeout, ssl=self.scheme == "https"
        )

    @property
    def headers(self) -> Dict[str, str]:
        """Headers sent with every call (the token, if any)."""
        return {"authorization": f"Bearer {self.options.token}"} if self.options.token else {}

    def _within_deadline(self, fn: Callable[[], T]) -> T:
        if self.grpc:  # each gRPC call carries its own deadline (client_timeout)
            return fn()
        # HTTP: the client's network timeout restarts with every byte (a trickling server held a call)
        import gevent

        late = TimeoutError(f"no complete answer within {self.options.timeout:g} s")
        with gevent.Timeout(self.options.timeout, late):
            return fn()

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """`fn()` under the retry policy; ServerUnavailable or ModelError naming `what` on failure."""
        attempts = 1 + self.options.retries
        for attempt in range(attempts):
            try:
                return self._within_deadline(fn)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # gevent's Timeout is a BaseException
                error = self._translate(what, exc)
                if not isinstance(error, ServerUnavailable) or attempt == attempts - 1:
                    raise error from None
            time.sleep(self.options.retry_delay * 2**attempt)
        raise AssertionError("unreachable")

    def _translate(self, what: str, exc: BaseException) -> Exception:
        from tritonclient.utils import InferenceServerException

        timeout = self.options.timeout
        if isinstance(exc, InferenceServerException):
            status = str(exc.status() or "")
            message = exc.message() or str(exc)
            if self.grpc and any(marker in message for marker in _NOT_GRPC):
                return InputError(
                    f"{self.url}: {what} failed: the address answers, but not with gRPC ({message}); "
                    "is this the server's HTTP port? Use http://HOST:HTTP_PORT or grpc://HOST:GRPC_PORT"
                )
            if _WORKER_DIED in message:
                return ServerUnavailable(
                    f"{self.url}: {what} failed: the server's inference worker died under the "
                    f"request ({status}: {message})"
                )
            if "NonFiniteOutput" in message:
                return NonFiniteOutput(f"{self.url}: {what}: {message}")
            if status in _UNAVAILABLE:
                return ServerUnavailable(
                    f"{self.url}: {what} failed: the server did not answer within {timeout:g} s "
                    f"or is unreachable ({status}: {message})"
                )
            return ModelError(f"{self.url}: {what} failed: the server answered {status or 'an error'}: {message}")
        return ServerUnavailable(
            f"{self.url}: {what} failed: the server is unreachable, went away or did not answer "
            f"within {timeout:g} s ({type(exc).__name__}: {exc})"
        )

    def ask(self, client: Any, method: str, *args: Any) -> Any:
        """A metadata-like call, answered as JSON-like dicts by both protocols."""
        fn = getattr(client, method)
        if self.grpc:
            return self.call(
                method, partial(fn, *args, headers=self.headers, as_json=True, client_timeout=self.options.timeout)
            )
        return self.call(method, partial(fn, *args, headers=self.headers))

    def infer(
        self, client: Any, model: str, version: str, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> Dict[str, np.ndarray]:
        m = self.module
        # gRPC always sends raw bytes; HTTP sends binary tensors only to servers that list the extension
        binary = {} if self.grpc else {"binary_data": self.binary}
        inputs = []
        for name, value in feeds.items():
            raw = value.dtype == np.uint8  # a pre/post graph's image goes as its bytes
            tensor = m.InferInput(name, list(value.shape), "UINT8" if raw else "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(value, dtype=np.uint8 if raw else np.float32), **binary)
            inputs.append(tensor)
        wanted = [m.InferRequestedOutput(n, **binary) for n in outputs]
        timeout = {"client_timeout": self.options.timeout} if self.grpc else {}  # HTTP: set on the client
        run = partial(
            client.infer, model, inputs, model_version=version, outputs=wanted, headers=self.headers, **timeout
        )
        result = self.call(f"inference on {model!r}", run)
        values = {n: result.as_numpy(n) for n in outputs}
        missing = [n for n, v in values.items() if v is None]
        if missing:
            raise ModelError(f"{self.url}: the server's answer lacks outputs {missing}")
        return values


def metadata_io(metadata: Mapping[str, Any]) -> GraphIO:
    """V2 model metadata (JSON) -> GraphIO; -1 dims become symbolic (None)."""

    def spec(item: Mapping[str, Any]) -> TensorSpec:
        shape = tuple(None if int(d) < 0 else int(d) for d in item.get("shape", ()))
        return TensorSpec(str(item["name"]), shape, _DTYPES.get(str(item.get("datatype")), str(item.get("datatype"))))

    return GraphIO(
        tuple(spec(i) for i in metadata.get("inputs", ())), tuple(spec(o) for o in metadata.get("outputs", ()))
    )


class TritonRunner(Runner):
    """Runs the model on the server. Safe from many threads: each thread gets its own client (the
    HTTP client is not thread-safe; gRPC clients are cheap)."""

    name = "triton"

    def __init__(self, protocol: Protocol, model: str, version: str, io: GraphIO, outputs: List[str]) -> None:
        self._protocol, self._model, self._version, self._io = protocol, model, version, io
        self._outputs = outputs
        self._local = threading.local()
        self._clients: List[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def io(self) -> GraphIO:
        return self._io

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._protocol.client()
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if self._closed:
            raise ModelError(f"{self._protocol.url}: runner is closed")
        return self._protocol.infer(self._client(), self._model, self._version, feeds, self._outputs)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # closing a client of a dead server must not raise
                pass
