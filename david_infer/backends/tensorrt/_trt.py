"""The tensorrt module and the one logger this process gives it.

TensorRT keeps a single process-wide logger: a Builder or Runtime created with a different one
logs a warning and the first one stays in use, so the builder and the runner share this one.
"""

from __future__ import annotations

import threading
from typing import Any

from ..._optional import require

_lock = threading.Lock()
_logger: Any = None


def tensorrt(purpose: str = "the TensorRT backend") -> Any:
    """The tensorrt module, or BackendUnavailable with the install hint."""
    return require("tensorrt", purpose)


def logger() -> Any:
    """The process-wide trt.Logger (warnings and errors only)."""
    global _logger
    with _lock:
        if _logger is None:
            trt = tensorrt()
            _logger = trt.Logger(trt.Logger.WARNING)
        return _logger
