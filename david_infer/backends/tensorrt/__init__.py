"""TensorRT backend: plans built by `david-infer build-engine`, run natively through cuda-python.

Importing this package imports neither tensorrt nor cuda-python; opening a runner and
`builder.build_engine` (the plan builder behind `david-infer build-engine`) do.
`profiles` and `sidecar` are pure Python and usable (and tested) without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ...contract import GraphIO, ModelContract
from ...errors import ModelError
from ...manifest import manifest_path
from ..base import Backend, BackendOptions, Device, Runner, Workload, parse_device


@dataclass(frozen=True)
class TensorRTOptions(BackendOptions):
    """The TensorRT backend takes no options: what an engine runs is fixed when it is built
    (`david-infer build-engine`); the runtime's resolution and batch size are checked against
    the engine's profile."""


class TensorRTBackend(Backend):
    """Runs TensorRT plans (.engine/.plan) with their sidecar manifest, on an NVIDIA GPU."""

    name = "tensorrt"
    title = "TensorRT"
    suffixes = (".engine", ".plan")
    devices = ("cuda",)
    Options = TensorRTOptions
    options: TensorRTOptions  # what `Backend.__init__` makes of the options given

    def inspect(self, path: Path) -> GraphIO:
        """A plan is only usable with its sidecar: say how to get one."""
        from .sidecar import read_sidecar

        read_sidecar(path)  # raises, naming the missing sidecar and the rebuild command
        return super().inspect(path)

    def open(self, contract: ModelContract, device: Device, workload: Workload) -> Runner:
        """Checks the sidecar and that the engine's profile covers `workload` (so a mismatch fails
        at once, not on the first image), then loads the plan. BackendUnavailable without
        TensorRT, cuda-python or a GPU; ModelError for a plan built for another TensorRT version or
        GPU, or whose SHA-256 does not match its sidecar."""
        from .runner import TensorRTRunner
        from .sidecar import check_profile_covers, validate_sidecar

        if not contract.path.is_file():
            raise ModelError(f"engine file not found: {contract.path}")
        validate_sidecar(contract.document, manifest_path(contract.path))
        check_profile_covers(contract.document, workload.resolution, workload.max_batch, contract.path)
        return TensorRTRunner(contract, self.check_device(device))


def open_runner(
    path: Union[str, Path],
    sidecar: Optional[Mapping[str, Any]] = None,
    device: str = "cuda",
    resolution: Optional[int] = None,
    max_batch: int = 1,
    **options: Any,
) -> Runner:
    """A TensorRT runner for the plan `path` with its sidecar (read from `path.json` unless given),
    for images of `resolution` in batches of up to `max_batch` (a convenience for tools and tests;
    DavidRuntime goes through TensorRTBackend)."""
    backend = TensorRTBackend(options)
    dev = backend.check_device(parse_device(device))
    if not Path(path).is_file():
        raise ModelError(f"engine file not found: {path}")
    contract = ModelContract.load(path) if sidecar is None else ModelContract.from_dict(path, sidecar)
    return backend.open(contract, dev, Workload(resolution, max_batch))


__all__ = ["TensorRTBackend", "TensorRTOptions", "open_runner"]
