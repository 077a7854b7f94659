"""PyTorch backend: the reference model (david_infer.model) built from the contract's variant and task,
with our safetensors weights or the manifest's seed (the `export` extra), and on a GPU a fast path
of its own (docs/gpu-torch.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ...contract import GraphIO, ModelContract
from ...errors import InputError, ModelError
from ..base import Backend, BackendOptions, Device, Workload
from .runner import TorchRunner, build_runner

PRECISIONS = ("fp32", "fp16", "bf16")
#: torch.compile's modes ("off" = eager)
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
OUTPUTS = ("numpy", "torch")


def _choice(name: str, value: object, valid: tuple) -> None:
    if value not in valid:
        raise InputError(f"torch backend: {name} must be one of {', '.join(map(repr, valid))}, got {value!r}")


@dataclass(frozen=True)
class TorchOptions(BackendOptions):
    """Options of the torch backend (the table in docs/gpu-torch.md); refused, never a silent
    fallback, where the device or another option cannot honour them."""

    moved = {
        "prepost": "choose where the pre/postprocessing runs with DavidRuntime(stages='torch' | 'graph' | 'reference') (--stages)"
    }

    precision: str = "fp32"
    channels_last: bool = False
    compile: str = "off"
    compile_backend: str = "inductor"
    cuda_graphs: bool = False
    pinned: Optional[bool] = None
    output: str = "numpy"

    def __post_init__(self) -> None:
        if self.compile in (None, False):
            object.__setattr__(self, "compile", "off")
        elif self.compile is True:
            object.__setattr__(self, "compile", "default")
        _choice("precision", self.precision, PRECISIONS)
        _choice("compile", self.compile, COMPILE_MODES)
        _choice("output", self.output, OUTPUTS)
        for name in ("channels_last", "cuda_graphs"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"torch backend: {name} must be True or False, got {getattr(self, name)!r}")
        if self.pinned is not None and not isinstance(self.pinned, bool):
            raise InputError(f"torch backend: pinned must be True, False or None (auto), got {self.pinned!r}")
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            raise InputError(
                f"torch backend: compile_backend must be a torch.compile backend name, got {self.compile_backend!r}"
            )
        if self.cuda_graphs and self.compile == "reduce-overhead":
            raise InputError(
                "torch backend: compile='reduce-overhead' already replays CUDA graphs of its own; "
                "drop cuda_graphs=True or pick another compile mode"
            )

    def check_device(self, device: Device) -> None:
        """InputError for options the device kind cannot honour (CUDA-only ones on the CPU)."""
        if device.kind == "cuda":
            return
        asked = {"cuda_graphs=True": self.cuda_graphs, "pinned=True": self.pinned}
        cuda_only = [name for name, on in asked.items() if on]
        cuda_only += ["compile='reduce-overhead'"] if self.compile == "reduce-overhead" else []
        if cuda_only:
            raise InputError(
                f"torch backend: {', '.join(cuda_only)} needs device='cuda' (CUDA graphs and pinned "
                f"host buffers are CUDA features); the device is {device}"
            )


class TorchBackend(Backend):
    """Runs the reference PyTorch model described by a david-infer manifest."""

    name = "torch"
    title = "PyTorch"
    suffixes = ()  # never chosen by backend="auto": it runs a manifest's model, not a file
    devices = ("cpu", "cuda")
    Options = TorchOptions
    options: TorchOptions

    def inspect(self, path: Path) -> GraphIO:
        raise ModelError(
            f"{path}: no manifest beside it; the torch backend needs a david-infer manifest naming "
            "the variant and task, and released files have no PyTorch weights: use "
            "backend='onnxruntime'"
        )

    def open(self, contract: ModelContract, device: Device, workload: Workload) -> TorchRunner:
        self.options.check_device(device)
        return build_runner(contract, device, self.options)


__all__ = ["COMPILE_MODES", "PRECISIONS", "TorchBackend", "TorchOptions", "TorchRunner"]
