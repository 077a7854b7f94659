"""TensorRT backend: plans built by `david-infer build-engine`, run natively through cuda-python.
Importing it imports neither tensorrt nor cuda-python. NOT YET RUN ON A GPU (docs/gpu.md, TensorRT)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ...contract import GraphIO, ModelContract
from ...errors import ModelError
from ..base import Backend, BackendOptions, Device, Runner, Workload, parse_device


@dataclass(frozen=True)
class TensorRTOptions(BackendOptions):
    """None: what an engine runs is fixed when it is built; the runtime's resolution and batch size
    are checked against the engine's profile."""


class TensorRTBackend(Backend):
    """Runs TensorRT plans (.engine/.plan) with their manifest, on an NVIDIA GPU."""

    name = "tensorrt"
    title = "TensorRT"
    suffixes = (".engine", ".plan")
    devices = ("cuda",)
    Options = TensorRTOptions
    options: TensorRTOptions

    def inspect(self, path: Path) -> GraphIO:
        """A plan is only usable with its engine manifest: say how to get one."""
        from .engine_manifest import read_engine_manifest

        read_engine_manifest(path)  # raises, naming the missing engine manifest and the rebuild command
        return super().inspect(path)

    def open(self, contract: ModelContract, device: Device, workload: Workload) -> Runner:
        """The plan's runner, once its engine manifest and profile fit `workload` (at once, not on the
        first image). BackendUnavailable without TensorRT, cuda-python or a GPU; ModelError for a plan
        of another TensorRT or GPU, or whose SHA-256 differs from its engine manifest's."""
        from .engine_manifest import check_profile_covers
        from .runner import TensorRTRunner

        check_profile_covers(contract.document, workload.resolution, workload.max_batch, contract.path)
        return TensorRTRunner(contract, self.check_device(device))


def open_runner(
    path: Union[str, Path],
    engine_manifest: Optional[Mapping[str, Any]] = None,
    device: str = "cuda",
    resolution: Optional[int] = None,
    max_batch: int = 1,
    **options: Any,
) -> Runner:
    """A TensorRT runner for the plan `path` with its engine manifest (`path.json` unless given), for
    images of `resolution` in batches of up to `max_batch` (for tools and tests)."""
    backend = TensorRTBackend(options)
    dev = backend.check_device(parse_device(device))
    if not Path(path).is_file():
        raise ModelError(f"engine file not found: {path}")
    contract = ModelContract.load(path) if engine_manifest is None else ModelContract.from_dict(path, engine_manifest)
    return backend.open(contract, dev, Workload(resolution, max_batch))
