"""`david-infer serve`: the raw network behind the Open Inference Protocol (KServe V2), via MLServer.

What is served is the model's own contract (the manifest's inputs and outputs, batch first):
clients preprocess and postprocess (the `triton` backend does it for `DavidRuntime`), so the
server's CPU or GPU goes to the network alone.

Why MLServer: it is a maintained V2 server library whose parts give, from one `MLModel` subclass
(`david_infer.serving.mlserver_model.DavidModel`), the HTTP and gRPC protocol handlers, health and
readiness, the repository extension, Prometheus metrics and parallel inference worker processes;
`serving.server` puts them together through their public API. Concurrent requests are batched in
our runtime with numpy (`max_batch_size`, `max_batch_time`; MLServer's own adaptive batcher
merges tensors as Python lists, which costs more than the model: see `mlserver_model`). KServe's
Python ModelServer speaks the same protocol but binds every interface (no host setting), sends no
`versions` over gRPC and has no inference worker processes; PyTriton pins numpy<2, which breaks
Ray Data's pandas in the same environment.

The served model's metadata publishes the manifest as one entry of `versions`
(`david-infer-manifest:{...json...}`): MLServer uses `versions` for free-form version strings, and
it is the one metadata field that both the HTTP and the gRPC protocol carry (gRPC's model metadata
has no `parameters`).

The server runs in its own process: MLServer and tritonclient's gRPC module both register the
protocol's `inference.*` protobuf messages, and one Python process cannot import both (clients,
tests and benchmarks start it as `david-infer serve`).

Safe to expose: it listens on 127.0.0.1 unless told otherwise, refuses model control (load/unload)
unless asked for, bounds every request before decoding it, closes connections whose request does
not arrive in time, never logs or echoes a request, and stops when an inference worker dies (see
`serving.server` and docs/serving-security.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from .._optional import require
from ..errors import InputError
from ..options import RuntimeOptions, positive_int

#: the MLModel implementation MLServer loads (in each worker process)
MODEL_CLASS = "david_infer.serving.mlserver_model.DavidModel"
#: default limits, chosen so that a 24 GB machine survives a burst of the largest requests: the
#: server's peak in a burst is 20-33x the raw tensors in flight over gRPC, the model's working
#: memory included (one batch runs at a time; HTTP JSON 5-16x its bodies), 3.3 GB for eight
#: 1024x1024 images with the tiny model (benchmarks/serving_memory.py); 4 Mpx is four 1024x1024 images
MAX_REQUEST_BYTES = 64 << 20
MAX_PIXELS = 1 << 22
MAX_IMAGES = 64
#: seconds an HTTP request's line and headers may take to arrive, then its body (uvicorn has no such
#: deadline; a client sending a header line a second held a connection forever)
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 60.0


_HISTOGRAMS: Dict[str, Any] = {}


def batch_size_histogram() -> Any:
    """The `david_batch_size` histogram (images per model call), made on first use: MLServer sets
    prometheus_client's multi-process mode in each worker before it loads the model, and with no
    workers it exports prometheus_client's default registry, where this registers (MLServer's own
    `mlserver.log` metrics reach the endpoint only from workers). Kept here, not in
    `mlserver_model`: MLServer reloads the model's module at every load, and a second histogram
    of the same name would not register."""
    if "batch_size" not in _HISTOGRAMS:
        from prometheus_client import Histogram

        _HISTOGRAMS["batch_size"] = Histogram(
            "david_batch_size",
            "images per model call (adaptive batching)",
            labelnames=["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
    return _HISTOGRAMS["batch_size"]


@dataclass(frozen=True)
class ServeConfig:
    """What `david-infer serve` serves and how.

    runtime: how the model is opened (david_infer.options.RuntimeOptions; its model file is
    stored as an absolute path): its resolution is the side the backend is prepared for (a hint
    for TensorRT profiles; the server accepts any size the model accepts) and its batch_size the
    adaptive batching's largest batch (concurrent requests of one image size are merged along the
    batch axis up to that many images, waiting at most max_batch_time seconds for a batch to
    fill; 1 = off); name: the served model name;
    workers: parallel inference worker processes (0, the default = run in the server process;
    MLServer pickles every request to a worker, which costs CPU); host (default 127.0.0.1, this
    machine only) and ports; model_control: allow the repository's load/unload calls (off);
    max_request_bytes: the largest request body / gRPC message, refused (413 / RESOURCE_EXHAUSTED)
    before it is decoded; max_pixels, max_images: the most image pixels (all images of a request
    together) and images per request, refused from the declared shapes; header_timeout,
    body_timeout: seconds an HTTP request's line and headers may take to arrive (from the
    connection or the previous answer; also gRPC's handshake), then its body, before the
    connection is closed; token: if set, every call but health needs `Authorization: Bearer TOKEN`
    (HTTP header or gRPC metadata).
    """

    runtime: RuntimeOptions
    name: str = "david"
    max_batch_time: float = 0.01
    workers: int = 0
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    metrics_port: int = 8082
    model_control: bool = False
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_pixels: int = MAX_PIXELS
    max_images: int = MAX_IMAGES
    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    token: Optional[str] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.runtime, RuntimeOptions):
            raise InputError(f"serve: runtime must be a david_infer.options.RuntimeOptions, got {self.runtime!r}")
        object.__setattr__(self, "runtime", self.runtime.replace(model=str(Path(self.runtime.model).resolve())))
        for name in ("http_port", "grpc_port", "metrics_port", "max_request_bytes", "max_pixels", "max_images"):
            positive_int(name, getattr(self, name), owner="serve: ")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise InputError(f"serve: workers must be 0 or more, got {self.workers!r}")
        if not isinstance(self.max_batch_time, (int, float)) or not 0 <= self.max_batch_time <= 10:
            raise InputError(f"serve: max_batch_time must be between 0 and 10 seconds, got {self.max_batch_time!r}")
        for name in ("header_timeout", "body_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
                raise InputError(f"serve: {name} must be more than 0 and at most 3600 seconds, got {value!r}")
        if len({self.http_port, self.grpc_port, self.metrics_port}) != 3:
            raise InputError(
                f"serve: the HTTP, gRPC and metrics ports must differ, got {self.http_port}, "
                f"{self.grpc_port}, {self.metrics_port}"
            )
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise InputError(f"serve: the model name may hold letters, digits, - _ . only, got {self.name!r}")
        if self.token is not None and (len(self.token) < 16 or not self.token.isprintable() or " " in self.token):
            raise InputError("serve: the token must be at least 16 printable characters without spaces")

    @property
    def loopback(self) -> bool:
        """Whether the server listens on this machine only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def read_token(path: Optional[str]) -> Optional[str]:
    """The shared token in file `path` (surrounding whitespace dropped), None for no path. A file,
    not an argument: command lines are visible to every user of the machine."""
    if path is None:
        return None
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the token file {path}: {exc}") from None
    if not token:
        raise InputError(f"the token file {path} is empty")
    return token


def model_settings(config: ServeConfig) -> Dict[str, Any]:
    """MLServer's model-settings.json for `config`."""
    return {
        "name": config.name,
        "implementation": MODEL_CLASS,
        "max_batch_size": 0,  # MLServer's batcher off: DavidModel batches with numpy (see runtime)
        "parameters": {
            "uri": config.runtime.model,
            "extra": {
                "runtime": config.runtime.as_record(),
                "max_batch_time": config.max_batch_time,
                "max_pixels": config.max_pixels,
                "max_images": config.max_images,
            },
        },
    }


def server_settings(config: ServeConfig, folder: Path) -> Dict[str, Any]:
    """MLServer's settings.json for `config` (working folders kept inside `folder`)."""
    return {
        "host": config.host,
        "http_port": config.http_port,
        "grpc_port": config.grpc_port,
        "metrics_port": config.metrics_port,
        "parallel_workers": config.workers,
        "metrics_dir": str(folder / ".metrics"),
        "environments_dir": str(folder / ".envs"),
        "load_models_at_startup": True,
        "debug": False,
    }


def write_server_folder(config: ServeConfig, folder: Path) -> Path:
    """Write an MLServer folder (settings.json, NAME/model-settings.json): the model `mlserver
    start FOLDER` would serve (without the guards of `serving.server`)."""
    folder = Path(folder)
    (folder / config.name).mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(server_settings(config, folder), indent=2))
    (folder / config.name / "model-settings.json").write_text(json.dumps(model_settings(config), indent=2))
    return folder


def check_ports(host: str, ports: Sequence[Tuple[str, int]]) -> None:
    """InputError naming the first of `ports` ((what, port)) that `host` cannot listen on now: one
    clear line instead of MLServer's tracebacks from three servers."""
    for what, port in ports:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except socket.gaierror as exc:
            raise InputError(
                f"serve: cannot listen on {host!r}: {exc.strerror}; pass --host an address of "
                "this machine (127.0.0.1, 0.0.0.0)"
            ) from None
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            try:
                probe.bind(address)
            except OSError as exc:
                raise InputError(
                    f"serve: cannot listen on {host}:{port} for {what} ({exc.strerror}); another "
                    f"program uses it: stop it, or choose another port with --{what}-port"
                ) from None


def serve(config: ServeConfig) -> None:
    """Run the server until SIGINT/SIGTERM. The model is opened (and checked) before the ports
    open; a model that fails to load ends the process with status `server.EXIT_LOAD_FAILED` and
    its error in the log, a dead inference worker with `server.EXIT_WORKER_DIED`."""
    if not Path(config.runtime.model).is_file():
        raise InputError(f"serve: model file not found: {config.runtime.model}")
    require("mlserver", "david-infer serve")
    check_ports(config.host, [("http", config.http_port), ("grpc", config.grpc_port), ("metrics", config.metrics_port)])
    print(
        f"serving {config.runtime.model} as {config.name!r}: HTTP {config.host}:{config.http_port}, gRPC "
        f"{config.host}:{config.grpc_port}, metrics {config.host}:{config.metrics_port}/metrics",
        flush=True,
    )
    if not config.loopback:
        print(
            f"warning: listening on {config.host}, reachable from other machines"
            + (
                " without authentication: put it behind an authenticating proxy or pass --token-file"
                if config.token is None
                else ""
            )
            + " (see docs/serving-security.md)",
            file=sys.stderr,
            flush=True,
        )
    from mlserver.settings import Settings

    from .server import run_server

    with tempfile.TemporaryDirectory(prefix="david-serve-") as tmp:
        folder = write_server_folder(config, Path(tmp))
        settings = Settings(**server_settings(config, folder), model_repository_root=str(folder))
        previous = os.getcwd()
        os.chdir(folder)  # MLServer puts a few working files in the current folder
        try:
            run_server(settings, config, folder)
        except (KeyboardInterrupt, asyncio.CancelledError):  # stopped by a signal: said so already
            pass
        finally:
            os.chdir(previous)
