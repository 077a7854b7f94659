"""The JSON manifest written beside every exported model (`model.onnx` -> `model.json`).

It holds everything a host needs to run the file without Python: tensor names, shapes (symbolic
dims as strings), dtypes, the preprocessing contract, per-task postprocessing, provenance and the
SHA-256 of the model file. `FORMAT` / `FORMAT_VERSION` identify the schema.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

from .errors import ModelError

FORMAT = "david-infer-manifest"
FORMAT_VERSION = 1
#: prefix of the entry of a served model's V2 metadata `versions` that carries its manifest JSON
#: (`david-infer serve` publishes it, the triton backend reads it)
SERVED_MANIFEST_PREFIX = "david-infer-manifest:"

PREPROCESSING_DOC = {
    "channel_order": "BGR",
    "value_range": [0.0, 1.0],
    "dtype": "float32",
    "tensor_layout": "NCHW",
    "normalization": "inside the graph: (x - mean) / std with ImageNet statistics in BGR order",
    "padding": "replicate edge pixels to a square, centred: pad = (long - short) // 2 before, the rest after",
    "resize": "the padded square is resized (bilinear) to the model resolution, a multiple of the stride",
    "vit_input": "image_384: the padded square resized bilinear (half-pixel centres) to vit_size x vit_size",
}

POSTPROCESSING_DOC = {
    "depth": "relative depth, larger = farther (no activation); resize to the padded square, crop the "
    "padding, resize to the image. Optional: negate (inverse) and min-max normalise to [0, 1].",
    "normal": "surface normals xyz (no activation); resize, crop, then renormalise each pixel to unit length.",
    "foreground": "soft mask (no activation); resize, crop, clip to [0, 1]; optional threshold.",
}


def manifest_path(model_path: Union[str, Path]) -> Path:
    """The manifest path beside a model file: `x.onnx` -> `x.json`, `x.engine` -> `x.engine.json`."""
    model_path = Path(model_path)
    if model_path.suffix == ".onnx":
        return model_path.with_suffix(".json")
    return model_path.with_name(model_path.name + ".json")


def sha256_file(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask_mode(mode: int = 0o666) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def make_temp_path(final: Union[str, Path], suffix: str = ".tmp") -> Path:
    """An empty temporary file beside `final` with ordinary permissions, for an atomic rename."""
    final = Path(final)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=suffix)
    os.close(fd)
    os.chmod(tmp, _umask_mode())
    return Path(tmp)


def atomic_write(path: Union[str, Path], write: Callable[[Path], None], suffix: str = ".tmp") -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it to `path` atomically.

    On any failure the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = make_temp_path(path, suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_manifest(path: Union[str, Path], manifest: Dict[str, Any]) -> None:
    """Write a manifest as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())


def read_manifest(path: Union[str, Path]) -> Dict[str, Any]:
    """A manifest file as a dict, validated by `david_infer.contract.ModelContract` (for tools that
    rewrite manifests; the runtime works on the contract itself)."""
    from .contract import ModelContract
    from .jsonfile import read_json_object

    path = Path(path)
    data = read_json_object(path, "JSON manifest", expect_object=False)
    ModelContract.from_dict(path.with_suffix(".onnx") if path.suffix == ".json" else path, data)
    return data


def check_sha256(model_path: Union[str, Path], expected: Optional[str]) -> None:
    """ModelError if the model file's SHA-256 differs from `expected` (the one its manifest
    records; None = nothing recorded, nothing to check)."""
    if expected and sha256_file(model_path) != expected:
        raise ModelError(
            f"{model_path}: SHA-256 does not match its manifest ({manifest_path(model_path)}); "
            "the file was modified or the manifest belongs to another file. Re-export the model."
        )
