"""PyTorch -> ONNX export of DAViD models, with the manifest a C++ host needs.

Layouts:
  dynamic  (default) inputs image (batch, 3, height, width) and image_384 (batch, 3, 384, 384);
           outputs depth / normal / foreground, each (batch, C, height, width).
  official the released files' contract: one input image (1, 3, 512, 512) BGR [0, 1]; outputs
           depth (1, 512, 512), normal (1, 3, 512, 512), foreground (1, 1, 512, 512).
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from david_infer import __version__
from david_infer._optional import require
from david_infer.errors import ExportError
from david_infer.manifest import (
    FORMAT,
    FORMAT_VERSION,
    POSTPROCESSING_DOC,
    PREPROCESSING_DOC,
    make_temp_path,
    manifest_path,
    sha256_file,
    write_manifest,
)
from david_infer.config import TASK_CHANNELS, get_config, task_outputs

LAYOUTS = ("dynamic", "official")
OFFICIAL_RESOLUTION = 512
MIN_OPSET = 17


def _wrap(model: Any, layout: str) -> Any:
    """A module whose forward returns a tuple of outputs in task order, in the layout's shapes."""
    import torch

    class DynamicLayout(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image: torch.Tensor, image_384: torch.Tensor) -> Tuple[torch.Tensor, ...]:
            out = self.model(image, image_384)
            return tuple(out[name] for name in self.model.outputs)

    class OfficialLayout(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
            out = self.model(image)
            # The released depth model returns (1, H, W): no channel axis.
            return tuple(out[n].squeeze(1) if n == "depth" else out[n] for n in self.model.outputs)

    return (DynamicLayout if layout == "dynamic" else OfficialLayout)().eval()


def _tensor_specs(variant: str, task: str, layout: str) -> Tuple[list, list]:
    cfg = get_config(variant)
    outputs = task_outputs(task)
    if layout == "dynamic":
        inputs = [
            {"name": "image", "shape": ["batch", 3, "height", "width"], "dtype": "float32"},
            {"name": "image_384", "shape": ["batch", 3, cfg.vit_size, cfg.vit_size], "dtype": "float32"},
        ]
        outs = [
            {"name": n, "task": n, "shape": ["batch", TASK_CHANNELS[n], "height", "width"], "dtype": "float32"}
            for n in outputs
        ]
    else:
        r = OFFICIAL_RESOLUTION
        inputs = [{"name": "image", "shape": [1, 3, r, r], "dtype": "float32"}]
        outs = [
            {"name": n, "task": n, "shape": [1, r, r] if n == "depth" else [1, TASK_CHANNELS[n], r, r],
             "dtype": "float32"}
            for n in outputs
        ]
    return inputs, outs


def build_manifest(
    onnx_path: Path, sha256: str, variant: str, task: str, layout: str, precision: str, opset: int,
    weights: Optional[str], seed: int,
) -> Dict[str, Any]:
    """The manifest for an exported file (see david_infer.manifest)."""
    import onnx
    import torch

    cfg = get_config(variant)
    inputs, outputs = _tensor_specs(variant, task, layout)
    if weights is None:
        origin = {
            "origin": "random",
            "seed": seed,
            "description": f"RANDOM weights from seed {seed}: not a trained model; outputs are meaningless.",
        }
    else:
        origin = {"origin": "file", "path": str(weights), "sha256": sha256_file(weights),
                  "description": "weights loaded strictly from a david-infer safetensors checkpoint"}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "onnx",
        "model_file": onnx_path.name,
        "sha256": sha256,
        "variant": variant,
        "task": task,
        "tasks": list(task_outputs(task)),
        "layout": layout,
        "precision": precision,
        "opset": opset,
        "inputs": inputs,
        "outputs": outputs,
        "preprocessing": {
            **PREPROCESSING_DOC,
            "stride": cfg.stride,
            "vit_size": cfg.vit_size,
            "resolution": OFFICIAL_RESOLUTION if layout == "official" else None,
            "default_resolution": OFFICIAL_RESOLUTION,
            "mean_bgr": list(cfg.mean[::-1]),
            "std_bgr": list(cfg.std[::-1]),
        },
        "postprocessing": {n: POSTPROCESSING_DOC[n] for n in task_outputs(task)},
        "weights": origin,
        "producer": {
            "david_infer": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
        },
    }


@contextlib.contextmanager
def _quiet_torch_logs() -> Any:
    import logging

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_args(variant: str, task: str, layout: str, opset: int, output: Path) -> None:
    try:
        get_config(variant)
        task_outputs(task)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: LayerNormalization needs opset {MIN_OPSET} or newer")
    if output.suffix != ".onnx":
        raise ExportError(f"output {output} must end in .onnx (the manifest goes beside it as .json)")
    if not output.parent.is_dir():
        raise ExportError(f"output folder {output.parent} does not exist")
    if not os.access(output.parent, os.W_OK):
        raise ExportError(f"output folder {output.parent} is not writable")


def export_onnx(
    variant: str,
    task: str,
    output: Union[str, Path],
    layout: str = "dynamic",
    weights: Optional[Union[str, Path]] = None,
    seed: int = 0,
    opset: int = 18,
    dummy_size: Tuple[int, int] = (64, 96),
) -> Dict[str, Any]:
    """Export one model to `output` (.onnx) and write its manifest beside it; return the manifest.

    Both files appear only when everything succeeded (temporary names, atomic renames).
    """
    torch = require("torch", "export")
    onnx = require("onnx", "export")
    from david_infer.model import build_model

    output = Path(output)
    _check_args(variant, task, layout, opset, output)
    weights_str = str(weights) if weights is not None else None
    model = build_model(variant, task, weights=weights_str, seed=seed)
    wrapped = _wrap(model, layout)
    cfg = model.cfg
    names_out = list(model.outputs)
    if layout == "dynamic":
        # Dummy sizes differ from every real size and from each other so none can be frozen.
        h, w = (max(cfg.stride, d // cfg.stride * cfg.stride) for d in dummy_size)
        args = (torch.rand(2, 3, h, w), torch.rand(2, 3, cfg.vit_size, cfg.vit_size))
        batch, height, width = (torch.export.Dim(n) for n in ("batch", "height", "width"))
        dynamic = {"image": {0: batch, 2: height, 3: width}, "image_384": {0: batch}}
        names_in = ["image", "image_384"]
    else:
        args = (torch.rand(1, 3, OFFICIAL_RESOLUTION, OFFICIAL_RESOLUTION),)
        dynamic = None
        names_in = ["image"]

    tmp = make_temp_path(output, suffix=".onnx.tmp")
    try:
        # The exporter prints progress and warns about optional torchvision ops; keep the CLI quiet.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_torch_logs():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped, args, str(tmp), input_names=names_in, output_names=names_out,
                dynamic_shapes=dynamic, opset_version=opset, dynamo=True, external_data=False,
            )
        onnx.checker.check_model(str(tmp), full_check=True)
        manifest = build_manifest(output, sha256_file(tmp), variant, task, layout, "fp32", opset, weights_str, seed)
        write_manifest(manifest_path(output), manifest)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return manifest
