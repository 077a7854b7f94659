"""ONNX Runtime backend: CPU by default; the CUDA (and TensorRT) execution providers when asked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

from ...contract import GraphIO, ModelContract
from ...errors import InputError, positive_int
from ..base import Backend, BackendOptions, Device, Workload
from .runner import GPU_PROVIDERS, OnnxRuntimeRunner, create_session, session_io


@dataclass(frozen=True)
class OnnxRuntimeOptions(BackendOptions):
    """Options of the ONNX Runtime backend. providers: GPU execution providers in priority order
    on "cuda" (default ("cuda",); "tensorrt" adds the TensorRT provider); cuda_options: CUDA
    provider options overriding ours; intra_op_threads: ONNX Runtime's intra-op threads (default
    its own); cache_dir: the TensorRT provider's engine and timing cache (default .trt_cache beside
    the model)."""

    providers: Tuple[str, ...] = ()
    cuda_options: Optional[Mapping[str, Any]] = None
    intra_op_threads: Optional[int] = None
    cache_dir: Optional[str] = None

    def __post_init__(self) -> None:
        providers = (self.providers,) if isinstance(self.providers, str) else tuple(self.providers or ())
        unknown = [p for p in providers if p not in GPU_PROVIDERS]
        if unknown:
            raise InputError(
                f"onnxruntime backend: unknown provider(s) {unknown}; expected some of {', '.join(GPU_PROVIDERS)}"
            )
        object.__setattr__(self, "providers", providers)
        if self.cuda_options is not None and not isinstance(self.cuda_options, Mapping):
            raise InputError(f"onnxruntime backend: cuda_options must be a dict, got {self.cuda_options!r}")
        positive_int("intra_op_threads", self.intra_op_threads, allow_none=True, owner="onnxruntime backend: ")


class OnnxRuntimeBackend(Backend):
    """Opens .onnx files with ONNX Runtime."""

    name = "onnxruntime"
    title = "ONNX Runtime"
    suffixes = (".onnx",)
    devices = ("cpu", "cuda")
    Options = OnnxRuntimeOptions
    options: OnnxRuntimeOptions

    def __init__(self, options: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(options)
        self._inspected: Optional[Tuple[Path, Any]] = None

    def inspect(self, path: Path) -> GraphIO:
        """Inputs/outputs of a bare .onnx file, read from a CPU session (kept for `open` on CPU)."""
        session = create_session(path, Device("cpu"), (), self.options)
        self._inspected = (Path(path), session)
        return session_io(session)

    def open(self, contract: ModelContract, device: Device, workload: Workload) -> OnnxRuntimeRunner:
        if device.kind == "cpu" and self._inspected is not None and self._inspected[0] == contract.path:
            session = self._inspected[1]  # the session `inspect` made is the CPU runner's session
        else:
            providers = self.options.providers or (("cuda",) if device.kind == "cuda" else ())
            session = create_session(contract.path, device, providers, self.options, contract, workload)
        self._inspected = None
        return OnnxRuntimeRunner(session, contract.path)


__all__ = ["OnnxRuntimeBackend", "OnnxRuntimeOptions", "OnnxRuntimeRunner"]
