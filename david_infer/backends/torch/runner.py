"""The reference PyTorch model behind the Runner interface, shaped like the contract's graph."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np

from ..._optional import require
from ...contract import GraphIO, ModelContract
from ...errors import BackendUnavailable, ModelError
from ...outputs.files import sha256_file
from ..base import Device, Runner


def _weights_file(contract: ModelContract) -> Optional[str]:
    """The safetensors file the manifest names (absolute, or relative to the model's folder), or
    None for random weights."""
    path, weights = contract.path, contract.weights
    if weights.origin == "random":
        return None
    if weights.origin != "file" or not weights.path:
        raise ModelError(
            f"{path}: the torch backend needs our safetensors weights or a random seed in the manifest "
            f"(weights origin {weights.origin!r}); released files have no PyTorch weights: use backend='onnxruntime'"
        )
    for candidate in (Path(weights.path), path.parent / Path(weights.path).name):
        if candidate.is_file():
            if weights.sha256 and sha256_file(candidate) != weights.sha256:
                raise ModelError(f"{candidate}: SHA-256 does not match the one recorded in {path}'s manifest")
            return str(candidate)
    raise ModelError(f"{path}: weights file {weights.path} named in the manifest was not found")


def build_runner(contract: ModelContract, device: Device) -> "TorchRunner":
    """A TorchRunner for the model the contract describes (variant, task, weights)."""
    torch = require("torch", "the torch backend")
    from ...model import build_model

    path = contract.path
    if not contract.variant:
        raise ModelError(
            f"{path}: the torch backend needs a david-infer manifest naming the variant and task; "
            "released files have no PyTorch weights: use backend='onnxruntime'"
        )
    if device.kind == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable(f"device {device} asked for the torch backend, but torch sees no CUDA GPU")
    weights = _weights_file(contract)
    try:
        model = build_model(contract.variant, contract.task, weights=weights, seed=contract.weights.seed)
    except ValueError as exc:
        raise ModelError(f"{path}: {exc}") from None
    return TorchRunner(model.to(str(device)), contract, str(device))


class TorchRunner(Runner):
    """Runs the PyTorch model; inputs and outputs named and shaped as in the contract's graph."""

    name = "torch"

    def __init__(self, model: Any, contract: ModelContract, device: str) -> None:
        self._model = model
        self._device = device
        self._io = GraphIO(contract.inputs, contract.outputs)

    @property
    def io(self) -> GraphIO:
        return self._io

    def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        import torch

        model = self._model
        if model is None:
            raise ModelError("torch runner is closed")
        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])).to(self._device) for t in self._io.inputs]
        with torch.inference_mode():
            out = model(*tensors)
        result = {}
        for spec in self._io.outputs:
            value = out[spec.task]
            if len(spec.shape) == 3:  # the released depth layout has no channel axis
                value = value[:, 0]
            result[spec.name] = value.float().cpu().numpy()
        return result

    def close(self) -> None:
        self._model = None
