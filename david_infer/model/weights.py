"""Loading and saving DAViD weights as safetensors (never pickles)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Union

from .._optional import require
from ..errors import WeightsError
from ..files import atomic_write

if TYPE_CHECKING:
    import torch


def _describe(names: List[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_weights(model: "torch.nn.Module", path: Union[str, Path]) -> None:
    """Load a safetensors checkpoint strictly into `model`.

    Raises WeightsError naming the file and every missing key, unexpected key and shape mismatch.
    """
    require("torch", "loading weights")
    safetensors_torch = require("safetensors.torch", "loading weights")
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        state = safetensors_torch.load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    expected: Dict[str, "torch.Tensor"] = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    found = {"missing key(s)": missing, "unexpected key(s)": unexpected, "shape mismatch(es)": mismatched}
    problems = [f"{len(names)} {what}: {_describe(names)}" for what, names in found.items() if names]
    if problems:
        raise WeightsError(f"{path} does not fit this model: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def save_weights(model: "torch.nn.Module", path: Union[str, Path]) -> None:
    """Write the model's state dict as safetensors, through a temporary name and an atomic rename."""
    safetensors_torch = require("safetensors.torch", "saving weights")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: safetensors_torch.save_file(state, str(tmp)))
