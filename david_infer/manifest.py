"""The JSON manifest written beside every exported model (`model.onnx` -> `model.json`).

It holds everything a host needs to run the file without Python: tensor names, shapes (symbolic
dims as strings), dtypes, the preprocessing contract, per-task postprocessing, provenance and the
SHA-256 of the model file. `FORMAT` / `FORMAT_VERSION` identify the schema.

This module is the file format alone (what `david_infer.contract` builds on): it knows no
contract. Reading a manifest goes through the contract, which validates it
(`contract.read_manifest`, `ModelContract.load`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .errors import ModelError
from .files import atomic_write_bytes, sha256_file

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
    atomic_write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())


def check_sha256(model_path: Union[str, Path], expected: Optional[str]) -> None:
    """ModelError if the model file's SHA-256 differs from `expected` (the one its manifest
    records; None = nothing recorded, nothing to check)."""
    if expected and sha256_file(model_path) != expected:
        raise ModelError(
            f"{model_path}: SHA-256 does not match its manifest ({manifest_path(model_path)}); "
            "the file was modified or the manifest belongs to another file. Re-export the model."
        )
