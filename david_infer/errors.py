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


class NonFiniteOutput(ModelError):
    """A model output holds NaN or infinity (a broken export or engine, an FP16 overflow).

    `task` is the output's task, `input` the input's name, `share` the fraction of the output's
    values that are not finite."""

    def __init__(self, message: str, task: str = "", input: str = "", share: float = 0.0) -> None:
        super().__init__(message)
        self.task, self.input, self.share = task, input, share
