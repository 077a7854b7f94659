"""A Triton model repository for NVIDIA's `tritonserver` from an ONNX export (a pre/post graph too) or a
TensorRT plan: REPO/NAME/config.pbtxt (dims from the graph or the engine manifest, -1 where dynamic,
batching, an instance group, the manifest in parameters["david_manifest"]), REPO/NAME/1/model.onnx
or model.plan, and REPO/NAME/manifest.json; written beside its place and renamed into it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Tuple, Union

from ..backends.tensorrt.engine_manifest import profile_ranges, read_engine_manifest
from ..backends.triton import CONFIG_MANIFEST_KEY
from ..contract import GraphIO, ModelContract, TensorSpec
from ..errors import InputError, ModelError
from ..manifest import write_manifest
from .onnx_export import onnx_contract

PLATFORMS = {
    ".onnx": ("onnxruntime_onnx", "model.onnx"),
    ".engine": ("tensorrt_plan", "model.plan"),
    ".plan": ("tensorrt_plan", "model.plan"),
}
#: how long dynamic batching waits to fill a batch
MAX_QUEUE_DELAY_US = 100
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "uint8": "TYPE_UINT8"}


def _contract_and_io(model: Path) -> Tuple[ModelContract, GraphIO, Optional[int]]:
    """The contract, the graph's inputs/outputs, and the largest batch the file accepts (None = any)."""
    if model.suffix == ".onnx":
        return (*onnx_contract(model), None)
    engine_manifest = read_engine_manifest(model)  # a plan is described by its engine manifest
    contract = ModelContract.from_dict(model, engine_manifest)
    largest = min(r.max[0] for r in profile_ranges(engine_manifest).values())
    return contract, GraphIO(contract.inputs, contract.outputs), largest


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tensor(spec: TensorSpec, batched: bool) -> str:
    dtype = _TYPES.get(spec.dtype)
    if dtype is None:
        raise ModelError(f"tensor {spec.name!r} has data type {spec.dtype}, which this export does not map to Triton")
    dims = [d if isinstance(d, int) else -1 for d in (spec.shape[1:] if batched else spec.shape)]
    return f"  {{ name: {_quote(spec.name)} data_type: {dtype} dims: [ {', '.join(map(str, dims))} ] }}"


def triton_config(
    name: str,
    platform: str,
    io: GraphIO,
    manifest: dict,
    max_batch_size: int,
    instance: str,
    instances: int,
) -> str:
    """The config.pbtxt text. With max_batch_size > 0 the dims leave out the batch dim (the graph's
    first dim must then be dynamic); 0 = the graph's full, fixed shapes and no batching."""
    batched = max_batch_size > 0
    lines = [
        f"name: {_quote(name)}",
        f"platform: {_quote(platform)}",
        f"max_batch_size: {max_batch_size}",
        "input [",
        ",\n".join(_tensor(t, batched) for t in io.inputs),
        "]",
        "output [",
        ",\n".join(_tensor(t, batched) for t in io.outputs),
        "]",
    ]
    if batched:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US} }}")
    lines.append(f"instance_group [ {{ count: {instances} kind: {INSTANCE_KINDS[instance]} }} ]")
    text = json.dumps(manifest, separators=(",", ":"), ensure_ascii=False)
    lines.append(f"parameters {{ key: {_quote(CONFIG_MANIFEST_KEY)} value {{ string_value: {_quote(text)} }} }}")
    return "\n".join(lines) + "\n"


def write_triton_repo(
    model: Union[str, Path],
    repo: Union[str, Path],
    name: Optional[str] = None,
    max_batch_size: Optional[int] = None,
    instance: Optional[str] = None,
    instances: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write REPO/NAME for `model` (an .onnx with or without our manifest, or an .engine/.plan with its
    engine manifest); return that folder. name: default the file's stem; max_batch_size: default 8,
    or 0 (no batching) for a graph with a fixed batch; instance: "cpu" or "gpu" (default cpu for
    ONNX, gpu for a plan); instances: model copies."""
    model = Path(model)
    if model.suffix not in PLATFORMS:
        raise InputError(f"{model}: a Triton repository is made from an .onnx, .engine or .plan file")
    if not model.is_file():
        raise ModelError(f"model file not found: {model}")
    name = name or model.stem
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise InputError(f"Triton model name {name!r}: use letters, digits, - _ . (not starting with .)")
    platform, filename = PLATFORMS[model.suffix]
    instance = instance or ("gpu" if platform == "tensorrt_plan" else "cpu")
    if instance not in INSTANCE_KINDS:
        raise InputError(f"instance must be 'cpu' or 'gpu', got {instance!r}")
    if platform == "tensorrt_plan" and instance != "gpu":
        raise InputError(f"{model}: a TensorRT plan runs on a GPU only; instance must be 'gpu'")
    contract, io, largest = _contract_and_io(model)
    fixed = [t.name for t in io.inputs if isinstance(t.shape[0], int)]
    if max_batch_size is None:
        max_batch_size = 0 if fixed else min(8, largest or 8)
    for label, value, low in (
        ("max_batch_size", max_batch_size, 0),
        ("instances", instances, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{label} must be an integer >= {low}, got {value!r}")
    if largest is not None and max_batch_size > largest:
        raise InputError(
            f"{model}: the plan was built for batches up to {largest}; max_batch_size {max_batch_size} is more"
        )
    if max_batch_size > 0 and fixed:
        raise InputError(
            f"{model}: inputs {fixed} have a fixed batch dim ({io.inputs[0].shape}); Triton batching "
            "needs a dynamic one: export with --layout dynamic, or use max_batch_size 0"
        )
    repo = Path(repo)
    final = repo / name
    if final.exists() and not overwrite:
        raise InputError(f"{final} exists; choose another name or pass overwrite")
    repo.mkdir(parents=True, exist_ok=True)
    manifest = {**contract.as_dict(), "model_file": filename}  # the file's name inside the repository
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
    try:
        (staging / "1").mkdir()
        shutil.copyfile(model, staging / "1" / filename)
        write_manifest(staging / "manifest.json", manifest)
        (staging / "config.pbtxt").write_text(
            triton_config(name, platform, io, manifest, max_batch_size, instance, instances),
            encoding="utf-8",
        )
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=repo))
            os.replace(final, old / name)
            shutil.rmtree(old)
        os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final
