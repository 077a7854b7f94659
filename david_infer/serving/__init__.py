"""`david-infer serve`: the raw network behind the Open Inference Protocol (KServe V2), via MLServer.

What is served is the model's own contract (the manifest's inputs and outputs, batch first):
clients preprocess and postprocess (the `triton` backend does it for `DavidRuntime`), so the
server's CPU or GPU goes to the network alone.

Why MLServer: it is a maintained V2 server library that gives, from one settings file and one
`MLModel` subclass (`david_infer.serving.runtime.DavidModel`), HTTP and gRPC endpoints, health and
readiness, Prometheus metrics and parallel inference worker processes. Concurrent requests are
batched in our runtime with numpy (`max_batch_size`, `max_batch_time`; MLServer's own adaptive
batcher merges tensors as Python lists, which costs more than the model: see `runtime`). KServe's Python ModelServer speaks the same protocol but
leaves batching to a separate Kubernetes component; PyTriton pins numpy<2, which breaks Ray Data's
pandas in the same environment. We write no HTTP or gRPC code of our own.

The served model's metadata publishes the manifest as one entry of `versions`
(`david-infer-manifest:{...json...}`): MLServer uses `versions` for free-form version strings, and
it is the one metadata field that both the HTTP and the gRPC protocol carry (gRPC's model metadata
has no `parameters`).

The server runs in its own process: MLServer and tritonclient's gRPC module both register the
protocol's `inference.*` protobuf messages, and one Python process cannot import both (clients,
tests and benchmarks start it with `serving.process.ServerProcess`).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

from .._optional import require
from ..errors import InputError
from ..options import RuntimeOptions, positive_int

#: prefix of the `versions` entry carrying the manifest JSON
MANIFEST_PREFIX = "david-infer-manifest:"
#: the MLModel implementation MLServer loads (in each worker process)
RUNTIME_CLASS = "david_infer.serving.runtime.DavidModel"
#: largest gRPC message both ways (MLServer's default is gRPC's 4 MiB: a batch of four 512x512
#: images with their 384x384 copies is more)
GRPC_MAX_MESSAGE = 1 << 30


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
    MLServer pickles every request to a worker, which costs CPU); host and ports.
    """

    runtime: RuntimeOptions
    name: str = "david"
    max_batch_time: float = 0.01
    workers: int = 0
    host: str = "0.0.0.0"
    http_port: int = 8080
    grpc_port: int = 8081
    metrics_port: int = 8082

    def __post_init__(self) -> None:
        if not isinstance(self.runtime, RuntimeOptions):
            raise InputError(f"serve: runtime must be a david_infer.options.RuntimeOptions, got {self.runtime!r}")
        object.__setattr__(self, "runtime", self.runtime.replace(model=str(Path(self.runtime.model).resolve())))
        for name in ("http_port", "grpc_port", "metrics_port"):
            positive_int(name, getattr(self, name), owner="serve: ")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise InputError(f"serve: workers must be 0 or more, got {self.workers!r}")
        if not isinstance(self.max_batch_time, (int, float)) or not 0 <= self.max_batch_time <= 10:
            raise InputError(f"serve: max_batch_time must be between 0 and 10 seconds, got {self.max_batch_time!r}")
        if len({self.http_port, self.grpc_port, self.metrics_port}) != 3:
            raise InputError(
                f"serve: the HTTP, gRPC and metrics ports must differ, got {self.http_port}, "
                f"{self.grpc_port}, {self.metrics_port}"
            )
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise InputError(f"serve: the model name may hold letters, digits, - _ . only, got {self.name!r}")


def model_settings(config: ServeConfig) -> Dict[str, Any]:
    """MLServer's model-settings.json for `config`."""
    return {
        "name": config.name,
        "implementation": RUNTIME_CLASS,
        "max_batch_size": 0,  # MLServer's batcher off: DavidModel batches with numpy (see runtime)
        "parameters": {
            "uri": config.runtime.model,
            "extra": {"runtime": config.runtime.as_record(), "max_batch_time": config.max_batch_time},
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
        "grpc_max_message_length": GRPC_MAX_MESSAGE,
        "metrics_dir": str(folder / ".metrics"),
        "environments_dir": str(folder / ".envs"),
        "load_models_at_startup": True,
        "debug": False,
    }


def write_server_folder(config: ServeConfig, folder: Path) -> Path:
    """Write an MLServer folder (settings.json, NAME/model-settings.json) that `mlserver start
    FOLDER` serves as `david-infer serve` would."""
    folder = Path(folder)
    (folder / config.name).mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(server_settings(config, folder), indent=2))
    (folder / config.name / "model-settings.json").write_text(json.dumps(model_settings(config), indent=2))
    return folder


def serve(config: ServeConfig) -> None:
    """Run the server until SIGINT/SIGTERM. The model is opened (and checked) before the ports
    open; a model that fails to load stops the server with its error in the log."""
    if not Path(config.runtime.model).is_file():
        raise InputError(f"serve: model file not found: {config.runtime.model}")
    require("mlserver", "david-infer serve")
    from mlserver import MLServer
    from mlserver.cli.serve import load_settings

    with tempfile.TemporaryDirectory(prefix="david-serve-") as tmp:
        folder = write_server_folder(config, Path(tmp))

        async def main() -> None:
            settings, models = await load_settings(str(folder))
            server = MLServer(settings)  # needs the running loop (it installs signal handlers)
            await server.start(models)

        previous = os.getcwd()
        os.chdir(folder)  # MLServer puts a few working files in the current folder
        try:
            asyncio.run(main())
        finally:
            os.chdir(previous)
