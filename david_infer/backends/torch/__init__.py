"""PyTorch backend: the reference model (david_infer.model) built from the contract's variant and
task, with our safetensors weights or the manifest's random seed. Needs the `export` extra.

On a GPU it is a fast path of its own: reduced precision, channels-last, torch.compile, CUDA
graphs, pinned host buffers on a dedicated stream, and pre/postprocessing as torch ops on the
device (its own stages, `stages.py`), with predictions that may stay on the device
(`output="torch"`).
"""

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
    """Options of the torch backend (torch's own thread settings apply on the CPU).

    precision: "fp32" (default), "fp16" or "bf16". Reduced precision is torch.autocast around
        the FP32 model: matrix products and convolutions run in the reduced type while autocast's
        own op lists keep LayerNorm, softmax and the reductions in FP32 (the rule the FP16 ONNX
        export follows), with no rewritten copy of the model. A device that cannot compute in the
        type is an error, never a silent FP32 run.
    channels_last: convolutions in NHWC memory format (tensor cores prefer it).
    compile: "off" (default), or a torch.compile mode ("default", "reduce-overhead",
        "max-autotune", "max-autotune-no-cudagraphs"). Shapes are static: each input shape is
        compiled once, on its first call, and cached; `TorchRunner.first_call_seconds` records
        what each first call cost (compilation included).
    compile_backend: torch.compile's backend (default "inductor"; "aot_eager" or "eager" check the
        tracing without code generation).
    cuda_graphs: capture one CUDA graph per input shape on its first call and replay it (CUDA
        only; not with compile="reduce-overhead", which replays graphs of its own).
    pinned: copy numpy inputs and outputs through page-locked host buffers with non-blocking
        copies on the runner's own CUDA stream (default: on with CUDA; CUDA only).
    output: "numpy" (default) or "torch": Prediction maps as torch tensors left on the device
        (the torch stages run then, on the CPU too). Where the pre/postprocessing runs is the
        runtime's `stages` (the torch stages by default on CUDA).
    """

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
        cuda_only = [
            name
            for name, on in (
                ("cuda_graphs=True", self.cuda_graphs),
                ("pinned=True", self.pinned),
                ("compile='reduce-overhead'", self.compile == "reduce-overhead"),
            )
            if on
        ]
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
    options: TorchOptions  # what `Backend.__init__` makes of the options given

    def inspect(self, path: Path) -> GraphIO:
        raise ModelError(
            f"{path}: no manifest beside it; the torch backend needs a david-infer manifest naming "
            "the variant and task, and released files have no PyTorch weights: use "
            "backend='onnxruntime'"
        )

    def open(self, contract: ModelContract, device: Device, workload: Workload) -> TorchRunner:
        options = self.options
        assert isinstance(options, TorchOptions)
        options.check_device(device)
        return build_runner(contract, device, options)


__all__ = ["COMPILE_MODES", "PRECISIONS", "TorchBackend", "TorchOptions", "TorchRunner"]
