"""PyTorch backend: the reference model (david_infer.model) built from the contract's variant and
task, with our safetensors weights or the manifest's random seed. Needs the `export` extra."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...contract import GraphIO, ModelContract
from ...errors import ModelError
from ..base import Backend, BackendOptions, Device, Workload
from .runner import TorchRunner, build_runner


@dataclass(frozen=True)
class TorchOptions(BackendOptions):
    """The torch backend takes no options (torch's own thread settings apply)."""


class TorchBackend(Backend):
    """Runs the reference PyTorch model described by a david-infer manifest."""

    name = "torch"
    title = "PyTorch"
    suffixes = ()  # never chosen by backend="auto": it runs a manifest's model, not a file
    devices = ("cpu", "cuda")
    Options = TorchOptions

    def inspect(self, path: Path) -> GraphIO:
        raise ModelError(f"{path}: no manifest beside it; the torch backend needs a david-infer manifest naming "
                         "the variant and task, and released files have no PyTorch weights: use "
                         "backend='onnxruntime'")

    def open(self, contract: ModelContract, device: Device, workload: Workload) -> TorchRunner:
        return build_runner(contract, device)


__all__ = ["TorchBackend", "TorchOptions", "TorchRunner"]
