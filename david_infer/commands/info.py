"""Describe a model or engine file: manifest, inputs and outputs, size and checksum.

For an .onnx file the inputs and outputs are read from the graph (with onnx when installed, else
with an ONNX Runtime session); for a TensorRT engine from its manifest (FILE.engine.json), so no
GPU or TensorRT is needed. The file's SHA-256 is compared with the one in its manifest (or, for a
downloaded released model, its download record). Exit status 1 when they differ.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .. import zoo
from ..contract import read_manifest
from ..errors import ModelError
from ..files import sha256_file
from ..manifest import manifest_path
from ..zoo import resolve_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="an .onnx file, an .engine/.plan, or a cached released model's name")
    p.add_argument("--json", action="store_true", help="print the description as JSON")


def run(args: argparse.Namespace) -> int:
    info = describe(resolve_model(args.file, download=False))  # never a 1 GB download to describe
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 1 if info["sha256_check"].startswith("MISMATCH") else 0


def describe(path: Path) -> Dict[str, Any]:
    """A dict: file, kind, size_bytes, sha256, sha256_check, manifest (or None), inputs, outputs."""
    path = Path(path)
    if path.is_dir():
        from ..runtime import resolve_model_path

        path = resolve_model_path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    kind = "tensorrt" if path.suffix in (".engine", ".plan") else "onnx"
    mpath = manifest_path(path)
    manifest = read_manifest(mpath) if mpath.exists() else None
    if kind == "onnx":
        inputs, outputs = onnx_io(path)
    elif manifest is None:
        raise ModelError(
            f"{path}: no manifest ({mpath}); a plan cannot be described without "
            f"TensorRT and a GPU. Rebuild it with `david-infer build-engine`"
        )
    else:
        inputs, outputs = (
            [tensor(e["name"], e.get("shape", []), e.get("dtype", "?")) for e in manifest[side]]
            for side in ("inputs", "outputs")
        )
    digest = sha256_file(path)
    if manifest is not None and manifest.get("sha256"):
        expected, source = manifest["sha256"], f"manifest {mpath.name}"
    else:
        expected = (zoo.read_download_record(path) or {}).get("sha256")
        source = f"download record {zoo.download_record_path(path).name}"
    if expected is None:
        check = "no recorded SHA-256 to compare with"
    elif expected == digest:
        check = f"OK (matches the {source})"
    else:
        check = f"MISMATCH: the {source} records {expected}; the file was changed or belongs to another manifest"
    return {
        "file": str(path),
        "kind": kind,
        "size_bytes": path.stat().st_size,
        "sha256": digest,
        "sha256_check": check,
        "manifest_file": str(mpath) if manifest else None,
        "manifest": manifest,
        "inputs": inputs,
        "outputs": outputs,
    }


def tensor(name: str, shape: Any, dtype: str) -> Dict[str, Any]:
    """A tensor as `info` lists it; unknown dims are "?"."""
    return {"name": name, "shape": ["?" if d is None else d for d in shape], "dtype": dtype}


def onnx_io(path: Path) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(inputs, outputs) of an ONNX file as [{name, shape, dtype}] (symbolic dims are strings), read
    with onnx, else with an ONNX Runtime session."""
    try:
        import onnx
    except ImportError:
        from ..backends.onnxruntime import OnnxRuntimeBackend

        io = OnnxRuntimeBackend().inspect(path)
        return [tensor(t.name, t.shape, t.dtype) for t in io.inputs], [
            tensor(t.name, t.shape, t.dtype) for t in io.outputs
        ]
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    if not model.graph.output:  # protobuf reads an empty or truncated file as an empty model
        raise ModelError(f"{path}: not an ONNX model (no graph outputs; {path.stat().st_size} bytes); re-export it")

    def entry(value: Any) -> Dict[str, Any]:
        t = value.type.tensor_type
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in t.shape.dim]
        return tensor(value.name, dims, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name)

    initializers = {i.name for i in model.graph.initializer}
    return [entry(v) for v in model.graph.input if v.name not in initializers], [entry(v) for v in model.graph.output]


def format_info(info: Dict[str, Any]) -> str:
    """The human-readable description `david-infer info` prints."""
    lines = [
        f"file:     {info['file']}",
        f"kind:     {info['kind']}",
        f"size:     {info['size_bytes']:,} bytes ({info['size_bytes'] / 1e6:.2f} MB)",
        f"sha256:   {info['sha256']}",
        f"check:    {info['sha256_check']}",
    ]
    m = info["manifest"]
    if m is None:
        lines.append("manifest: none (a released file, or not a david-infer export)")
    else:
        weights = (m.get("weights") or {}).get("description", "?")
        lines.append(f"manifest: {info['manifest_file']}")
        for key in ("variant", "task", "layout", "precision", "opset"):
            if m.get(key) is not None:
                lines.append(f"  {key + ':':<11}{m[key]}")
        lines.append(f"  {'tasks:':<11}{', '.join(m.get('tasks', []))}")
        lines.append(f"  {'weights:':<11}{weights}")
        if m.get("tensorrt"):
            trt = m["tensorrt"]
            lines.append(
                f"  {'tensorrt:':<11}{trt.get('version')} on {trt.get('gpu')} (sm {trt.get('compute_capability')}), "
                f"hardware compat {trt.get('hardware_compat')}"
            )
    for title in ("inputs", "outputs"):
        lines.append(f"{title}:")
        for t in info[title]:
            shape = "x".join(str(d) for d in t["shape"])
            lines.append(f"  {t['name']:<16} {shape:<28} {t['dtype']}")
    return "\n".join(lines)
