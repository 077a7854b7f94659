"""A backend for the Ray fault tests: ONNX Runtime, except that the worker process exits (as if
killed) inside its Nth model call while a marker file exists. The marker is removed by the process
that exits, so exactly one process dies however many workers reach their Nth call.

Loaded into every Ray worker by the test cluster's `worker_process_setup_hook` ("tests.support.ray_faults.install");
the marker path and N come from DAVID_TEST_DIE_MARKER and DAVID_TEST_DIE_AT. Every model call
appends a line (the process id) to DAVID_TEST_CALL_LOG when set, and sleeps DAVID_TEST_SLOW_S
seconds when set (so that a job lasts long enough to be killed in the middle).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict, Mapping

import numpy as np

from david_infer.backends import register_backend
from david_infer.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeRunner
from tests.support import REPO

NAME = "dying-onnxruntime"
EXIT_CODE = 77


class DyingRunner(OnnxRuntimeRunner):
    calls = 0  # model calls made in this process

    def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        DyingRunner.calls += 1
        log = os.environ.get("DAVID_TEST_CALL_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
        time.sleep(float(os.environ.get("DAVID_TEST_SLOW_S", "0")))
        marker = os.environ.get("DAVID_TEST_DIE_MARKER")
        if marker and DyingRunner.calls == int(os.environ.get("DAVID_TEST_DIE_AT", "0")):
            try:
                os.unlink(marker)
            except FileNotFoundError:
                pass  # another process already died for this marker
            else:
                os._exit(EXIT_CODE)  # no cleanup, no exception: what kill -9 leaves behind
        return super().run(feeds)


class DyingBackend(OnnxRuntimeBackend):
    name = NAME
    suffixes = ()

    def open(self, contract: Any, device: Any, workload: Any) -> OnnxRuntimeRunner:
        runner = super().open(contract, device, workload)
        return DyingRunner(runner._session, runner.path)


def install() -> None:
    """Register the backend (the Ray worker setup hook)."""
    register_backend(NAME, DyingBackend)


def runtime_env(marker: str, die_at: int, call_log: str, slow_s: float = 0.0) -> Dict[str, Any]:
    """The Ray runtime_env that loads this backend into every worker, with its settings."""
    return {
        "worker_process_setup_hook": "tests.support.ray_faults.install",
        "env_vars": {
            "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path]),
            "DAVID_TEST_DIE_MARKER": marker,
            "DAVID_TEST_DIE_AT": str(die_at),
            "DAVID_TEST_CALL_LOG": call_log,
            "DAVID_TEST_SLOW_S": str(slow_s),
        },
    }
