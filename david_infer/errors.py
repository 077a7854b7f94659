"""Typed errors raised by david-infer; every message names the input or file at fault."""

from __future__ import annotations


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
    """A run needs more memory than this process may still allocate: refused before it starts
    (`david_infer.memory_estimate`: the estimate, what is available, the largest setting that fits),
    or a backend's allocation failed (the setting it ran, what to lower). `needed` and `available`
    are bytes (0 where not known)."""

    def __init__(self, message: str, needed: int = 0, available: int = 0) -> None:
        super().__init__(message)
        self.needed, self.available = needed, available


class DavidWarning(UserWarning):
    """Base class of the warnings this package issues (filter them with this category)."""


class EmptyMaskWarning(DavidWarning):
    """The foreground mask keeps no pixel (no person found; the rule: `_arrays.mask_is_empty`): the
    output is written as the mask says (the photo unchanged, the background alone, a transparent
    cut-out, a cloud without points), which is degenerate. `outcome` says what the output is."""

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
    """A model output holds NaN or infinity (a broken export or engine, an FP16 overflow).

    `task` is the output's task, `input` the input's name, `share` the fraction of the output's
    values that are not finite."""

    def __init__(self, message: str, task: str = "", input: str = "", share: float = 0.0) -> None:
        super().__init__(message)
        self.task, self.input, self.share = task, input, share


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM; the message says what is complete and how to resume."""
