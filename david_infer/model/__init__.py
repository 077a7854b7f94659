"""The DAViD architecture in PyTorch (needs the `export` extra: pip install "david-infer[export]").

from david_infer.model import build_model
model = build_model("base", "depth")        # random weights
out = model(image)                           # {"depth": (B, 1, H, W)}
"""

from __future__ import annotations

from typing import Optional

from .._optional import require
from ..config import DavidConfig, get_config, variants
from ..tasks import MODEL_TASKS, task_outputs

require("torch", "the PyTorch model")

import torch  # noqa: E402

from ..shapes import check_input_shape  # noqa: E402
from .david import DavidModel  # noqa: E402
from .weights import load_weights, save_weights  # noqa: E402

__all__ = [
    "MODEL_TASKS",
    "DavidConfig",
    "DavidModel",
    "build_model",
    "count_params_and_macs",
    "get_config",
    "load_weights",
    "save_weights",
    "task_outputs",
    "variants",
]


def build_model(variant: str, task: str, weights: Optional[str] = None, seed: Optional[int] = None) -> DavidModel:
    """Build a DAViD model in eval mode.

    variant: "base", "large" or "tiny" (tests); task: "depth", "normal", "foreground" or
    "multitask". With `weights` a safetensors checkpoint is loaded strictly; otherwise the
    weights are random (from `seed` when given).
    """
    cfg = get_config(variant)
    task_outputs(task)  # validates the task name
    if seed is not None:
        torch.manual_seed(seed)
    model = DavidModel(cfg, task)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def count_params_and_macs(variant: str, task: str, height: int, width: int) -> tuple[int, int]:
    """(params, MACs) of one forward at (1, 3, height, width), counted on the meta device.

    No weights are allocated. MACs are FLOPs / 2 from torch's FlopCounterMode (matrix products,
    convolutions and attention); elementwise ops and interpolation are not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    cfg = get_config(variant)
    check_input_shape("image", (1, 3, height, width), stride=cfg.stride)
    with torch.device("meta"):
        model = DavidModel(cfg, task).eval()
        image = torch.empty(1, 3, height, width)
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(image)
    return params, counter.get_total_flops() // 2
