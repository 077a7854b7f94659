"""Typed errors raised by david-infer (every message names the input or file at fault), the stop flag
of an interrupted run, and the one positive-integer check, here at the bottom so that every layer can
use them."""

from __future__ import annotations

import numbers
import threading
from typing import Any, Literal, Optional, overload


class DavidError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(DavidError, ValueError):
    """An image or argument passed in is not something the SDK can use."""


class ModelError(DavidError):
    """A model, manifest, engine or weights file is missing, corrupt or of the wrong contract."""


class WeightsError(ModelError):
    """A weights file does not fit the model (missing, unexpected or mis-shaped tensors)."""


class BackendUnavailable(DavidError, RuntimeError):
    """A backend, optional dependency or device cannot be used here."""


class ExportError(DavidError):
    """An export, verification or engine build could not be done as asked."""


class OutOfMemoryError(DavidError, MemoryError):
    """A run needs more memory than this process may still allocate (`memory_estimate`), or a
    backend's allocation failed; `needed`, `available`: bytes (0 where not known)."""

    def __init__(self, message: str, needed: int = 0, available: int = 0) -> None:
        super().__init__(message)
        self.needed, self.available = needed, available


class DavidWarning(UserWarning):
    """Base class of the warnings this package issues (filter them with this category)."""


class EmptyMaskWarning(DavidWarning):
    """The foreground mask keeps no pixel (`_arrays.mask_is_empty`): the output, written as the mask
    says, is degenerate; `outcome` says what it is."""

    def __init__(self, message: str, outcome: str = "") -> None:
        super().__init__(message)
        self.outcome = outcome or message


class OnnxRuntimeConflictWarning(DavidWarning):
    """More than one ONNX Runtime build is installed; they overwrite each other's files."""


class GpuSetupError(BackendUnavailable):
    """The GPU stack (driver, CUDA libraries, TensorRT) cannot run here; the message says how to fix it."""


class NoGpuError(GpuSetupError):
    """No NVIDIA driver, or the driver sees no GPU."""


class DriverTooOldError(GpuSetupError):
    """The NVIDIA driver is older than the CUDA runtime the installed packages are built for."""


class TensorRTMissingError(GpuSetupError):
    """The TensorRT provider or backend was asked for and TensorRT is not installed."""


class TensorRTVersionError(GpuSetupError):
    """The installed TensorRT major differs from the one the ONNX Runtime TensorRT provider loads."""


class ServerUnavailable(BackendUnavailable):
    """A model server cannot be reached, went away mid-request, or did not answer within the timeout."""


class NonFiniteOutput(ModelError):
    """A model output holds NaN or infinity (a broken export or engine, an FP16 overflow): of task
    `task`, for input `input`, in a fraction `share` of its values."""

    def __init__(self, message: str, task: str = "", input: str = "", share: float = 0.0) -> None:
        super().__init__(message)
        self.task, self.input, self.share = task, input, share


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM; the message says what is complete and how to resume."""


#: Set by the command line's Ctrl-C/SIGTERM handler, which also raises KeyboardInterrupt: Python drops
#: one raised while a finaliser runs, so the writers also check this before each frame and set.
STOP_REQUESTED = threading.Event()


def stop_if_requested() -> None:
    """KeyboardInterrupt if a stop was requested (`STOP_REQUESTED`)."""
    if STOP_REQUESTED.is_set():
        raise KeyboardInterrupt("stop requested")


@overload
def positive_int(name: str, value: Any, *, allow_none: Literal[False] = False, owner: str = "") -> int: ...
@overload
def positive_int(name: str, value: Any, *, allow_none: bool, owner: str = "") -> Optional[int]: ...
def positive_int(name: str, value: Any, *, allow_none: bool = False, owner: str = "") -> Optional[int]:
    """`value` when it is a positive int (or None with `allow_none`), else an InputError naming
    `name` (prefixed by `owner`, e.g. "serve: ") and the value."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{owner}{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")
    return int(value)
