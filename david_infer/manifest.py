"""The JSON manifest beside every exported model (`model.onnx` -> `model.json`, docs/export.md): the
file format alone; reading and validating it is `david_infer.contract`'s."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

from .errors import ModelError
from .files import sha256_file, write_json

FORMAT = "david-infer-manifest"
FORMAT_VERSION = 1
#: prefix of the entry of a served model's V2 metadata `versions` that carries its manifest JSON
#: (`david-infer serve` publishes it, the triton backend reads it)
SERVED_MANIFEST_PREFIX = "david-infer-manifest:"

PREPROCESSING_DOC = {
    "channel_order": "BGR",
    "value_range": [0.0, 1.0],
    "dtype": "float32",
    "axes": "NCHW",
    "normalization": "inside the graph: (x - mean) / std with ImageNet statistics in BGR order",
    "padding": "replicate edge pixels to a square, centred: pad = (long - short) // 2 before, the rest after",
    "resize": "the padded square is resized (bilinear) to the model resolution, a multiple of the stride",
    "vit_input": "image_384: the padded square resized bilinear (half-pixel centres) to vit_size x vit_size",
}


def manifest_path(model_path: Union[str, Path]) -> Path:
    """The manifest path beside a model file: `x.onnx` -> `x.json`, `x.engine` -> `x.engine.json`."""
    model_path = Path(model_path)
    if model_path.suffix == ".onnx":
        return model_path.with_suffix(".json")
    return model_path.with_name(model_path.name + ".json")


def write_manifest(path: Union[str, Path], manifest: Dict[str, Any]) -> None:
    """Write a manifest as indented JSON, atomically."""
    write_json(path, manifest)


def check_sha256(model_path: Union[str, Path], expected: Optional[str]) -> None:
    """ModelError if the model file's SHA-256 differs from `expected`, its manifest's (None: none)."""
    if expected and sha256_file(model_path) != expected:
        raise ModelError(
            f"{model_path}: SHA-256 does not match its manifest ({manifest_path(model_path)}); "
            "the file was modified or the manifest belongs to another file. Re-export the model."
        )
