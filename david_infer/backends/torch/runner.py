"""The reference PyTorch model behind the Runner interface, shaped like the manifest's graph."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np

from ..._optional import require
from ...errors import BackendUnavailable, ModelError
from ...manifest import sha256_file
from ..base import Runner


def _weights_file(path: Path, manifest: Mapping[str, Any]) -> Optional[str]:
    """The safetensors file the manifest names (absolute, or relative to the model's folder), or
    None for random weights."""
    weights = manifest.get("weights") or {}
    origin = weights.get("origin")
    if origin == "random":
        return None
    if origin != "file" or not weights.get("path"):
        raise ModelError(
            f"{path}: the torch backend needs our safetensors weights or a random seed in the manifest "
            f"(weights origin {origin!r}); released files have no PyTorch weights: use backend='onnxruntime'"
        )
    candidates = [Path(weights["path"]), path.parent / Path(weights["path"]).name]
    for candidate in candidates:
        if candidate.is_file():
            expected = weights.get("sha256")
            if expected and sha256_file(candidate) != expected:
                raise ModelError(f"{candidate}: SHA-256 does not match the one recorded in {path}'s manifest")
            return str(candidate)
    raise ModelError(f"{path}: weights file {weights['path']} named in the manifest was not found")


def open_runner(path: Path, manifest: Optional[dict], device: str = "cpu", **options: Any) -> "TorchRunner":
    """A TorchRunner for the model described by `manifest` (variant, task, weights)."""
    torch = require("torch", "the torch backend")
    from ...model import build_model

    path = Path(path)
    if manifest is None or not manifest.get("variant"):
        raise ModelError(
            f"{path}: the torch backend needs a david-infer manifest naming the variant and task; "
            "released files have no PyTorch weights: use backend='onnxruntime'"
        )
    text = str(device).lower()
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable(f"device {device!r} asked for the torch backend, but torch sees no CUDA GPU")
    if not (text == "cpu" or text.startswith("cuda")):
        raise BackendUnavailable(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'")
    weights = _weights_file(path, manifest)
    seed = (manifest.get("weights") or {}).get("seed")
    try:
        model = build_model(manifest["variant"], manifest["task"], weights=weights, seed=seed)
    except ValueError as exc:
        raise ModelError(f"{path}: {exc}") from None
    return TorchRunner(model.to(text), manifest, text)


class TorchRunner(Runner):
    """Runs the PyTorch model; inputs and outputs named and shaped as in the manifest's graph."""

    name = "torch"

    def __init__(self, model: Any, manifest: Mapping[str, Any], device: str) -> None:
        self._model = model
        self._device = device
        self._inputs = [i["name"] for i in manifest["inputs"]]
        self._outputs = {o["name"]: (o.get("task", o["name"]), len(o["shape"])) for o in manifest["outputs"]}

    def infer(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        import torch

        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self._device) for n in self._inputs]
        with torch.inference_mode():
            out = self._model(*tensors)
        result = {}
        for name, (task, rank) in self._outputs.items():
            value = out[task]
            if rank == 3:  # the released depth layout has no channel axis
                value = value[:, 0]
            result[name] = value.float().cpu().numpy()
        return result

    def close(self) -> None:
        self._model = None
