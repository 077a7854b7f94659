"""`david-infer serve`: a model's network behind the Open Inference Protocol (KServe V2, HTTP and
gRPC) on MLServer's public API; clients pre- and postprocess (the `triton` backend). The server runs
in its own process (MLServer and tritonclient's gRPC module cannot share one). Its guarantees and
why MLServer: docs/serving.md, docs/serving-security.md."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import ipaddress
import json
import logging
import os
import socket
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from .._optional import require
from ..errors import InputError
from ..options import RuntimeOptions, positive_int

#: the MLModel implementation MLServer loads (in each worker process)
MODEL_CLASS = "david_infer.serving.mlserver_model.DavidModel"
#: default limits: a 24 GB machine survives a burst of the largest requests (docs/serving-security.md)
MAX_REQUEST_BYTES = 64 << 20
MAX_PIXELS = 1 << 22
MAX_IMAGES = 64
#: seconds an HTTP request's line and headers may take to arrive, then its body (uvicorn has none)
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 60.0
#: the longest log line (message and traceback together) any handler writes: a request body never
#: reaches a log through an error message (a 100 MB body once made one 301 MB line)
MAX_LOG_LINE = 4000
#: seconds without a batch after which freed memory goes back to the system (glibc's malloc_trim)
TRIM_INTERVAL = 1.0
#: this process's histogram, log filter, C library, trimmer task and whether a batch ran lately
STATE: Dict[str, Any] = {}


def batch_size_histogram() -> Any:
    """The `david_batch_size` histogram (images per model call), made once per process on first use
    (after MLServer set prometheus_client's mode); here, not in `mlserver_model`, which MLServer
    reloads at every load (a second histogram of one name would not register)."""
    if "histogram" not in STATE:
        from prometheus_client import Histogram

        buckets = (1, 2, 4, 8, 16, 32, 64, 128)
        STATE["histogram"] = Histogram(
            "david_batch_size", "images per model call (adaptive batching)", ["model"], buckets=buckets
        )
    return STATE["histogram"]


class CapLogLines(logging.Filter):
    """Cuts each record's message and traceback to MAX_LOG_LINE characters, drops the traceback of
    a refused request (MLServer logs one for every error it answers, 4xx included: a client could
    fill the log with them) and the records of tasks cancelled at shutdown (Ctrl-C is no error)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        # a task cancelled as the server stops (Starlette hands uvicorn its traceback as a message)
        if isinstance(error, asyncio.CancelledError) or (
            message.startswith("Traceback") and message.rstrip().endswith("CancelledError")
        ):
            return False
        if error is not None and getattr(error, "status_code", 500) < 500:
            record.exc_info, record.exc_text = None, None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info))
        record.exc_info = None
        if record.exc_text and len(record.exc_text) > MAX_LOG_LINE:
            record.exc_text = record.exc_text[:MAX_LOG_LINE] + " [cut]"
        if len(message) > MAX_LOG_LINE:
            message = message[:MAX_LOG_LINE] + f" [cut: {len(message)} characters]"
        record.msg, record.args = message, None
        return True


def cap_log_lines() -> None:
    """Put CapLogLines on every handler of every logger this process has now."""
    cap = STATE.setdefault("filter", CapLogLines())
    loggers = [logging.getLogger()] + [
        v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if cap not in handler.filters:
                handler.addFilter(cap)


def note_batch() -> None:
    """Record that a batch ran: freed memory goes back only once the process is idle."""
    STATE["busy"] = True


def malloc_trim() -> bool:
    """Give the memory freed since the last call back to the system (False where the C library has
    no malloc_trim: musl, macOS)."""
    if "libc" not in STATE:
        name = ctypes.util.find_library("c")
        found = ctypes.CDLL(name) if name else None
        STATE["libc"] = found if found is not None and hasattr(found, "malloc_trim") else None
    if STATE["libc"] is None:
        return False
    STATE["libc"].malloc_trim(0)
    return True


def start_memory_trimmer() -> None:
    """On the running event loop (once per process), every TRIM_INTERVAL seconds in which no batch
    ran: give freed memory back (malloc_trim) and cap the log lines of handlers made since."""
    if STATE.get("trimmer") is not None and not STATE["trimmer"].done():
        return

    async def trim_forever() -> None:
        while True:
            cap_log_lines()  # uvicorn makes its handlers when its servers start
            if not STATE.pop("busy", False) and not malloc_trim():
                return
            await asyncio.sleep(TRIM_INTERVAL)

    STATE["trimmer"] = asyncio.get_running_loop().create_task(trim_forever())


@dataclass(frozen=True)
class ServeConfig:
    """What `david-infer serve` serves and how; each field is the `serve` flag of its name
    (docs/serving-security.md). `runtime` opens the model (its model made an absolute path; its
    batch_size is the adaptive batching's largest batch, 1 = off); `workers` 0 runs the model in
    the server process; `token`: every call but health needs `Authorization: Bearer TOKEN`."""

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
    """The shared token in file `path` (stripped), None for no path (a file: command lines are public)."""
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
    extra = {"runtime": config.runtime.as_record(), "max_batch_time": config.max_batch_time}
    extra.update(max_pixels=config.max_pixels, max_images=config.max_images)
    # MLServer's batcher off (max_batch_size 0): DavidModel batches with numpy
    return {"name": config.name, "implementation": MODEL_CLASS, "max_batch_size": 0, "parameters": {"extra": extra}}


def check_ports(host: str, ports: Sequence[Tuple[str, int]]) -> None:
    """InputError naming the first of `ports` ((what, port)) that `host` cannot listen on now."""
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
    """Run the server until SIGINT/SIGTERM; the model opens before the ports (exit statuses:
    `server.EXIT_LOAD_FAILED`, `EXIT_WORKER_DIED`, `EXIT_STOP_TIMEOUT`)."""
    if not Path(config.runtime.model).is_file():
        raise InputError(f"serve: model file not found: {config.runtime.model}")
    require("mlserver", "david-infer serve")
    host, ports = config.host, {"http": config.http_port, "grpc": config.grpc_port, "metrics": config.metrics_port}
    check_ports(host, list(ports.items()))
    print(
        f"serving {config.runtime.model} as {config.name!r}: HTTP {host}:{config.http_port}, gRPC "
        f"{host}:{config.grpc_port}, metrics {host}:{config.metrics_port}/metrics",
        flush=True,
    )
    if not config.loopback:
        open_to_all = " without authentication: put it behind an authenticating proxy or pass --token-file"
        print(
            f"warning: listening on {host}, reachable from other machines{'' if config.token else open_to_all} "
            "(see docs/serving-security.md)",
            file=sys.stderr,
            flush=True,
        )
    from mlserver.settings import Settings

    from .server import run_server

    with tempfile.TemporaryDirectory(prefix="david-serve-") as tmp:
        folder = Path(tmp)
        (folder / config.name).mkdir()
        (folder / config.name / "model-settings.json").write_text(json.dumps(model_settings(config)))
        settings = Settings(
            **{f"{what}_port": port for what, port in ports.items()},
            host=host,
            parallel_workers=config.workers,
            metrics_dir=str(folder / ".metrics"),
            environments_dir=str(folder / ".envs"),
            model_repository_root=tmp,
            load_models_at_startup=True,
            debug=False,
        )
        previous = os.getcwd()
        os.chdir(folder)  # MLServer puts a few working files in the current folder
        try:
            run_server(settings, config, folder)
        except (KeyboardInterrupt, asyncio.CancelledError):  # stopped by a signal: said so already
            pass
        finally:
            os.chdir(previous)
