"""The interface every backend runner implements (after Polygraphy's loader/runner split)."""
from __future__ import annotations

import abc
from typing import Dict, Iterable, Mapping, Sequence

import numpy as np


class Runner(abc.ABC):
    """Runs one loaded model. `infer` does the model call only (no pre/post-processing), so timing
    it times the backend alone. Runners must be safe to call from several threads at once, or
    serialise internally."""

    #: backend name as given to DavidRuntime(backend=...)
    name: str = ""
    #: input and output names in graph order (a dict keyed by name also serves); set by subclasses
    _inputs: Iterable[str] = ()
    _outputs: Iterable[str] = ()

    @property
    def input_names(self) -> Sequence[str]:
        """Names of the model inputs, in graph order."""
        return list(self._inputs)

    @property
    def output_names(self) -> Sequence[str]:
        """Names of the model outputs, in graph order."""
        return list(self._outputs)

    @abc.abstractmethod
    def infer(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run the model on float32 NCHW arrays keyed by input name; return outputs keyed by name."""

    def close(self) -> None:
        """Release sessions, engines and device memory. Idempotent."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
