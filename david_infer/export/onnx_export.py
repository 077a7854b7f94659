"""PyTorch -> ONNX export of DAViD models (the dynamic or the released "official" layout, FP32 or mixed
FP16) with the manifest a C++ host needs (docs/export.md)."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

from .. import __version__
from .._optional import quiet_logger, require
from ..backends.onnxruntime import OnnxRuntimeBackend
from ..config import DEFAULT_RESOLUTION, get_config
from ..contract import GraphIO, ModelContract
from ..errors import ExportError
from ..files import make_temp_path, sha256_file
from ..manifest import (
    FORMAT,
    FORMAT_VERSION,
    PREPROCESSING_DOC,
    manifest_path,
    write_manifest,
)
from ..tasks import TASKS, task_outputs, task_table
from .fp16 import FP32_OPS, check_strongly_typed, convert_to_mixed_fp16, precision_report

LAYOUTS = ("dynamic", "official")
PRECISIONS = ("fp32", "fp16")
OFFICIAL_RESOLUTION = DEFAULT_RESOLUTION  # the released files' fixed size
MIN_OPSET = 17
# the newest opset torch 2.13's exporter writes a valid graph for (at 26 it writes Gelu nodes the
# checker refuses, after the whole export)
MAX_OPSET = 25


def layout_module(model: Any, layout: str) -> Any:
    """A module whose forward returns a tuple of outputs in task order, in the layout's shapes."""
    import torch

    class Layout(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def outputs(self, out: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, ...]:
            # as the released files: a map of "NHW" axes without its channel axis
            squeeze = layout == "official"
            return tuple(
                out[n].squeeze(1) if squeeze and TASKS[n].released_axes == "NHW" else out[n] for n in model.outputs
            )

    class DynamicLayout(Layout):
        def forward(self, image: torch.Tensor, image_384: torch.Tensor) -> Tuple[torch.Tensor, ...]:
            return self.outputs(self.model(image, image_384))

    class OfficialLayout(Layout):
        def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
            return self.outputs(self.model(image))

    return (DynamicLayout if layout == "dynamic" else OfficialLayout)().eval()


def _tensor_specs(variant: str, task: str, layout: str) -> Tuple[list, list]:
    cfg, r = get_config(variant), OFFICIAL_RESOLUTION
    image = {"dtype": "float32", "axes": "NCHW", "channel_order": "BGR", "value_range": [0.0, 1.0]}
    if layout == "dynamic":
        inputs = [
            {"name": "image", "shape": ["batch", 3, "height", "width"], **image},
            {"name": "image_384", "shape": ["batch", 3, cfg.vit_size, cfg.vit_size], **image},
        ]
        inputs[0]["constraints"] = f"height and width are multiples of {cfg.stride}"
        inputs[1]["constraints"] = "the same padded square as image, resized bilinear to the ViT size"
    else:
        inputs = [{"name": "image", "shape": [1, 3, r, r], **image}]
    outputs = []
    for n in task_outputs(task):
        row, shape = TASKS[n], ["batch", TASKS[n].channels, "height", "width"]
        if layout == "official":
            shape = [1, r, r] if row.released_axes == "NHW" else [1, row.channels, r, r]
        axes = row.released_axes if layout == "official" else "NCHW"
        outputs.append({"name": n, "task": n, "shape": shape, "dtype": "float32", "axes": axes})
    return inputs, outputs


def _producer_versions() -> Dict[str, str]:
    """Versions of everything that shaped the file (onnxruntime only when installed)."""
    versions = {"david_infer": __version__}
    for module in ("torch", "onnx", "onnxscript", "onnxruntime"):
        try:
            versions[module] = importlib.import_module(module).__version__
        except ImportError:
            pass
    return versions


def _precision_doc(precision: str, report: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    if precision == "fp32":
        return {"compute": "float32", "io_dtype": "float32"}
    assert report is not None
    return {
        "compute": "mixed: Conv/ConvTranspose/MatMul/Gemm and elementwise ops in float16",
        "io_dtype": "float32 (Casts at the graph boundaries)",
        "kept_fp32_ops": sorted(report["fp32_ops"]),
        "kept_fp32_rule": f"these op types always stay float32 behind explicit Casts: {', '.join(FP32_OPS)}",
        "compute_ops": report["compute_ops"],
        "compute_fp16_fraction": round(report["compute_fp16_fraction"], 4),
        "strongly_typed": "every op's inputs share one float type (TensorRT 11 strongly typed parser)",
    }


def build_manifest(
    onnx_path: Path,
    sha256: str,
    variant: str,
    task: str,
    layout: str,
    precision: str,
    opset: int,
    weights: Optional[str],
    seed: int,
    fp16_report: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The manifest for an exported file (see david_infer.manifest)."""
    cfg = get_config(variant)
    inputs, outputs = _tensor_specs(variant, task, layout)
    if weights is None:
        note = f"RANDOM weights from seed {seed}: not a trained model; outputs are meaningless."
        origin: Dict[str, Any] = {"origin": "random", "seed": seed, "description": note}
    else:
        note = "weights loaded strictly from a david-infer safetensors checkpoint"
        origin = {"origin": "file", "path": str(weights), "sha256": sha256_file(weights), "description": note}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "onnx",
        "model_file": onnx_path.name,
        "sha256": sha256,
        "variant": variant,
        "task": task,
        "tasks": list(task_outputs(task)),
        "output_order": [o["name"] for o in outputs],
        "layout": layout,
        "precision": precision,
        "precision_detail": _precision_doc(precision, fp16_report),
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
        "postprocessing": {n: TASKS[n].postprocessing() for n in task_outputs(task)},
        "task_table": task_table(task_outputs(task)),
        "weights": origin,
        "producer": _producer_versions(),
    }


def _check_args(variant: str, task: str, layout: str, precision: str, opset: int, output: Path) -> None:
    try:
        get_config(variant)
        task_outputs(task)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: LayerNormalization needs opset {MIN_OPSET} or newer")
    if opset > MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported: the exporter writes opsets {MIN_OPSET} to {MAX_OPSET}")
    check_output(output)


def check_output(output: Path) -> None:
    """ExportError unless `output` is a file name ending in .onnx in a folder we can write in."""
    if output.suffix != ".onnx":
        raise ExportError(f"output {output} must end in .onnx (the manifest goes beside it as .json)")
    if not output.parent.is_dir():
        raise ExportError(f"output folder {output.parent} does not exist")
    if output.is_dir():
        raise ExportError(f"output {output} is a folder; give a file name ending in .onnx")
    try:  # a real probe: os.access says yes to root even on read-only file systems
        make_temp_path(output, suffix=".probe").unlink()
    except OSError as exc:
        raise ExportError(f"output folder {output.parent} is not writable ({exc.strerror})") from None


def _to_fp16(path: Path) -> Dict[str, Any]:
    """Rewrite the FP32 graph at `path` as mixed FP16 in place; return its precision report."""
    import onnx

    model = convert_to_mixed_fp16(onnx.load(str(path)), inplace=True)
    problems = check_strongly_typed(model)
    if problems:  # a bug of ours, never the user's: say what is wrong and stop
        raise ExportError(f"the FP16 graph is not strongly typed ({len(problems)} problems): {problems[0]}")
    onnx.save(model, str(path))
    return precision_report(model)


def export_onnx(
    variant: str,
    task: str,
    output: Union[str, Path],
    layout: str = "dynamic",
    weights: Optional[Union[str, Path]] = None,
    seed: int = 0,
    opset: int = 18,
    precision: str = "fp32",
) -> Dict[str, Any]:
    """Export one model to `output` (.onnx) and write its manifest beside it; return the manifest.

    precision "fp16" writes a mixed-precision graph (export/fp16.py): FP16 compute, FP32
    normalisation/softmax/reductions and FP32 inputs and outputs. Both files appear only when
    everything succeeded (temporary names, atomic renames).
    """
    torch = require("torch", "export")
    onnx = require("onnx", "export")
    from ..model import build_model

    output = Path(output)
    _check_args(variant, task, layout, precision, opset, output)
    weights_str = str(weights) if weights is not None else None
    model = build_model(variant, task, weights=weights_str, seed=seed)
    wrapped = layout_module(model, layout)
    cfg = model.cfg
    names_out = list(model.outputs)
    if layout == "dynamic":
        # Dummy sizes differ from every real size and from each other so none can be frozen.
        h, w = (max(cfg.stride, d // cfg.stride * cfg.stride) for d in (64, 96))
        args: Tuple[Any, ...] = (torch.rand(2, 3, h, w), torch.rand(2, 3, cfg.vit_size, cfg.vit_size))
        batch, height, width = (torch.export.Dim(n) for n in ("batch", "height", "width"))
        dynamic = {"image": {0: batch, 2: height, 3: width}, "image_384": {0: batch}}
        names_in = ["image", "image_384"]
    else:
        args = (torch.rand(1, 3, OFFICIAL_RESOLUTION, OFFICIAL_RESOLUTION),)
        dynamic = None
        names_in = ["image"]

    def write(tmp: Path) -> Dict[str, Any]:
        # The exporter prints progress and warns about optional torchvision ops; keep the CLI quiet.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), quiet_logger("torch.onnx"):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped,
                args,
                str(tmp),
                input_names=names_in,
                output_names=names_out,
                dynamic_shapes=dynamic,
                opset_version=opset,
                dynamo=True,
                external_data=False,
            )
        report = _to_fp16(tmp) if precision == "fp16" else None
        onnx.checker.check_model(str(tmp), full_check=True)
        return build_manifest(
            output, sha256_file(tmp), variant, task, layout, precision, opset, weights_str, seed, report
        )

    return write_with_manifest(output, write)


def onnx_contract(path: Path) -> Tuple[ModelContract, GraphIO]:
    """An .onnx file's contract (its manifest's, or recognised from its graph) and its graph's inputs and
    outputs, checked against each other."""
    io = OnnxRuntimeBackend().inspect(path)
    contract = ModelContract.load(path) if manifest_path(path).exists() else ModelContract.recognise(path, io)
    contract.check_graph(io)
    return contract, io


def write_with_manifest(output: Path, write: Callable[[Path], Dict[str, Any]]) -> Dict[str, Any]:
    """`write(tmp)` writes the model to a temporary file beside `output` and returns its manifest;
    then the manifest and the model take their final names. On any failure neither is left behind
    (a manifest that existed before stays)."""
    try:
        tmp = make_temp_path(output, suffix=".onnx.tmp")
    except OSError as exc:
        raise ExportError(f"cannot write to the output folder {output.parent}: {exc.strerror}") from None
    final_manifest = manifest_path(output)
    existed = final_manifest.exists()
    try:
        manifest = write(tmp)
        write_manifest(final_manifest, manifest)
        os.replace(tmp, output)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if not existed:  # a manifest without its model would describe nothing
            final_manifest.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ExportError(f"could not write {output}: {exc}") from None
        raise
    return manifest
