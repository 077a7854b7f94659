"""`david-infer serve` in a child process on free loopback ports, for tests, benchmarks and notebooks.

    with ServerProcess("model.onnx") as server:
        rt = DavidRuntime(server.grpc_url, resolution=512)

The child runs in its own process group so that `stop()` and `kill()` reach MLServer's worker
processes too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional, Sequence, Union

from david_infer.errors import ServerUnavailable

HOST = "127.0.0.1"


def free_ports(count: int) -> List[int]:
    """`count` distinct TCP ports free on the loopback interface right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class ServerProcess:
    """Starts `david-infer serve MODEL` on 127.0.0.1 (free ports) and waits until the model is ready.

    `args` are further `david-infer serve` arguments (e.g. ["--max-batch-size", "16"]); the log
    goes to `log` (default: a temporary file, see `log_path`)."""

    def __init__(
        self,
        model: Union[str, Path],
        args: Sequence[str] = (),
        name: str = "david",
        ready_timeout: float = 120.0,
        log: Optional[Union[str, Path]] = None,
    ) -> None:
        self.model, self.args, self.name, self.ready_timeout = str(model), list(args), name, ready_timeout
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.log_path = Path(log) if log else Path(tempfile.mkstemp(prefix="david-serve-", suffix=".log")[1])
        self.process: Optional[subprocess.Popen] = None

    @property
    def grpc_url(self) -> str:
        return f"grpc://{HOST}:{self.grpc_port}/{self.name}"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}/{self.name}"

    command_name = "serve"

    def command(self) -> List[str]:
        """The child's command line."""
        return [
            sys.executable,
            "-m",
            "david_infer",
            "serve",
            "-m",
            self.model,
            "--name",
            self.name,
            "--host",
            HOST,
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--metrics-port",
            str(self.metrics_port),
            *self.args,
        ]

    def ready_url(self) -> str:
        """The URL that answers 200 once the server is ready (it needs no token)."""
        return f"http://{HOST}:{self.http_port}/v2/health/ready"

    def start(self) -> "ServerProcess":
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        what = f"david-infer {self.command_name}"
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerUnavailable(f"{what} exited with status {self.process.returncode}:\n{self.log_tail()}")
            if self._get(self.ready_url()) is not None:
                return self
            time.sleep(0.25)
        self.stop()
        raise ServerUnavailable(f"{what} was not ready within {self.ready_timeout:g} s:\n{self.log_tail()}")

    @staticmethod
    def _get(url: str) -> Optional[str]:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode() if response.status == 200 else None
        except (urllib.error.URLError, OSError):
            return None

    def metrics(self) -> str:
        """The Prometheus metrics text (empty if the server does not answer)."""
        return self._get(f"http://{HOST}:{self.metrics_port}/metrics") or ""

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _signal_group(self, sig: int) -> None:
        if self.process is not None:  # the group, not the pid: workers may outlive the main process
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the server and its workers at once (a crash, for tests)."""
        self._signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM (MLServer shuts its workers down), SIGKILL after `grace` seconds. Idempotent."""
        if self.process is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)  # workers left behind, or a server that ignored SIGTERM
        self.process.wait(timeout=30)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
