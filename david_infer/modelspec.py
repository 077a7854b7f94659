"""What the runtime needs to know about a model file: its layout, inputs, outputs and tasks.

Our exports carry a manifest (david_infer.manifest). A released Microsoft file has none: it is
recognised from its input and output shapes (one input 1x3x512x512; outputs depth (1,512,512),
normal (1,3,512,512), foreground (1,1,512,512); three outputs = the multi-task model, in the order
depth, normal, foreground) and an equivalent manifest is built in memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from .config import TASK_CHANNELS, TASK_ORDER
from .errors import ModelError
from .manifest import FORMAT, FORMAT_VERSION, POSTPROCESSING_DOC, PREPROCESSING_DOC

DEFAULT_STRIDE = 16
DEFAULT_VIT_SIZE = 384
_TASK_HINTS = (("depth", "depth"), ("normal", "normal"), ("foreground", "foreground"), ("segment", "foreground"))


@dataclass(frozen=True)
class ModelSpec:
    """The contract of one model file, from its manifest or recognised from its shapes."""

    path: Path
    layout: str  # "dynamic" (image + image_384, any size) or "official" (one fixed-size input)
    tasks: Tuple[str, ...]
    image_input: str
    vit_input: Optional[str]
    outputs: Dict[str, str]  # task -> output name
    fixed_resolution: Optional[int]
    fixed_batch: Optional[int]
    stride: int
    vit_size: int
    released: bool  # True for a manifest-less (released) file


def _int_dims(shape: Sequence[Any]) -> bool:
    return all(isinstance(d, int) and d > 0 for d in shape)


def spec_from_manifest(path: Path, manifest: Mapping[str, Any], released: bool = False) -> ModelSpec:
    """ModelSpec from a manifest (ours, or one built by `manifest_from_shapes`)."""
    try:
        inputs = list(manifest["inputs"])
        outputs = {o.get("task", o["name"]): o["name"] for o in manifest["outputs"]}
        tasks = tuple(t for t in TASK_ORDER if t in outputs)
        pre = manifest.get("preprocessing", {})
        image = inputs[0]
        vit = inputs[1]["name"] if len(inputs) > 1 else None
        shape = list(image["shape"])
        names = [image["name"], vit, *outputs.values()]
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ModelError(f"{path}: manifest lacks input/output descriptions ({exc!r})") from None
    if not all(isinstance(n, str) for n in names if n is not None):
        raise ModelError(f"{path}: manifest input/output names must be strings, got {names}")
    if not tasks:
        raise ModelError(f"{path}: manifest lists no known task among outputs {list(outputs)}")
    fixed = _int_dims(shape[2:4])
    if fixed and shape[2] != shape[3]:
        raise ModelError(f"{path}: fixed input {shape[2]}x{shape[3]} is not square")
    return ModelSpec(
        path=path,
        layout=manifest.get("layout") or ("official" if vit is None else "dynamic"),
        tasks=tasks,
        image_input=image["name"],
        vit_input=vit,
        outputs={t: outputs[t] for t in tasks},
        fixed_resolution=int(shape[2]) if fixed else None,
        fixed_batch=int(shape[0]) if isinstance(shape[0], int) else None,
        stride=_positive(path, pre, "stride", DEFAULT_STRIDE),
        vit_size=_positive(path, pre, "vit_size", DEFAULT_VIT_SIZE),
        released=released,
    )


def _positive(path: Path, pre: Any, key: str, default: int) -> int:
    """A positive integer setting of the manifest's preprocessing block (`default` when absent)."""
    value = pre.get(key) if isinstance(pre, Mapping) else None
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{path}: manifest preprocessing {key!r} must be a positive integer, got {value!r}")
    return value


def check_graph(spec: ModelSpec, inputs: Mapping[str, Sequence[Any]], outputs: Mapping[str, Sequence[Any]]) -> None:
    """ModelError unless the loaded graph has the inputs and outputs `spec` (its manifest) names,
    with 3 image channels and each task's channel count wherever the graph states a number.

    `inputs`/`outputs` map names to shapes (an unknown shape may be empty). Checked when the model
    is loaded, so a manifest paired with the wrong file fails at once, not on the first image."""
    wanted_in = [n for n in (spec.image_input, spec.vit_input) if n]
    problems = []
    missing = [n for n in wanted_in if n not in inputs]
    if missing or len(inputs) != len(wanted_in):
        problems.append(f"inputs {list(inputs)} (the manifest describes {wanted_in})")
    absent = [n for n in spec.outputs.values() if n not in outputs]
    if absent:
        problems.append(f"outputs {list(outputs)} lack {absent}")
    for name in wanted_in:
        shape = tuple(inputs.get(name) or ())
        if len(shape) not in (0, 4) or (len(shape) == 4 and isinstance(shape[1], int) and shape[1] != 3):
            problems.append(f"input {name!r} has shape {shape}, expected (batch, 3, height, width)")
    for task, name in spec.outputs.items():
        shape = tuple(outputs.get(name) or ())
        channels = TASK_CHANNELS[task]
        ok_rank3 = len(shape) == 3 and channels == 1
        bad_channels = len(shape) == 4 and isinstance(shape[1], int) and shape[1] != channels
        if shape and not ok_rank3 and (len(shape) != 4 or bad_channels):
            problems.append(f"{task} output {name!r} has shape {shape}, expected (batch, {channels}, height, width)")
    if problems:
        raise ModelError(f"{spec.path}: the graph does not match its manifest: " + "; ".join(problems)
                         + ". The manifest belongs to another file, or the file was not exported by david-infer")


def _task_from_shape(path: Path, name: str, shape: Tuple[Any, ...]) -> str:
    """Task of a released file's only output: from its name or file name, else from its shape."""
    for text in (name.lower(), path.name.lower()):
        for hint, task in _TASK_HINTS:
            if hint in text:
                return task
    if len(shape) == 3:
        return "depth"
    if len(shape) == 4 and shape[1] == 3:
        return "normal"
    return "foreground"


def _check_output(path: Path, name: str, shape: Tuple[Any, ...], task: str, size: int) -> None:
    c = TASK_CHANNELS[task]
    allowed = [(1, c, size, size)] + ([(1, size, size)] if c == 1 else [])
    if tuple(shape) not in allowed:
        raise ModelError(
            f"{path}: output {name!r} has shape {tuple(shape)}; a released DAViD {task} output is "
            f"{' or '.join(str(a) for a in allowed)}"
        )


def manifest_from_shapes(
    path: Path, input_shapes: Mapping[str, Tuple[Any, ...]], output_shapes: Mapping[str, Tuple[Any, ...]]
) -> Dict[str, Any]:
    """An in-memory manifest for a released (manifest-less) file, or ModelError saying why it is
    not one."""
    path = Path(path)
    expect = (
        "expected a DAViD model: either our export with its .json manifest beside it, or a released "
        "file with one input (1, 3, 512, 512) and outputs depth (1, 512, 512) / normal (1, 3, 512, 512) "
        "/ foreground (1, 1, 512, 512)"
    )
    if len(input_shapes) != 1:
        raise ModelError(f"{path}: no manifest and {len(input_shapes)} inputs {list(input_shapes)}; {expect}")
    (in_name, in_shape), = input_shapes.items()
    if len(in_shape) != 4 or not _int_dims(in_shape) or in_shape[:2] != (1, 3) or in_shape[2] != in_shape[3]:
        raise ModelError(f"{path}: no manifest and input {in_name!r} has shape {in_shape}; {expect}")
    size = int(in_shape[2])
    names = list(output_shapes)
    if len(names) == 3:
        tasks = list(TASK_ORDER)
    elif len(names) == 1:
        tasks = [_task_from_shape(path, names[0], output_shapes[names[0]])]
    else:
        raise ModelError(f"{path}: no manifest and {len(names)} outputs {names}; {expect}")
    for name, task in zip(names, tasks):
        _check_output(path, name, tuple(output_shapes[name]), task, size)
    task = tasks[0] if len(tasks) == 1 else "multitask"
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "onnx",
        "model_file": path.name,
        "variant": None,
        "task": task,
        "tasks": tasks,
        "layout": "official",
        "precision": "fp32",
        "inputs": [{"name": in_name, "shape": list(in_shape), "dtype": "float32"}],
        "outputs": [
            {"name": n, "task": t, "shape": list(output_shapes[n]), "dtype": "float32"} for n, t in zip(names, tasks)
        ],
        "preprocessing": {**PREPROCESSING_DOC, "stride": DEFAULT_STRIDE, "vit_size": DEFAULT_VIT_SIZE,
                          "resolution": size, "default_resolution": size},
        "postprocessing": {t: POSTPROCESSING_DOC[t] for t in tasks},
        "weights": {"origin": "released", "description": "recognised from its shapes (no manifest)"},
    }
