"""The typed model contract: what the runtime and every backend know about one model file, parsed
and validated once from its manifest (`david_infer.manifest`) or, for a released file without one,
from the graph's shapes (`ModelContract.recognise`); nothing reads the JSON by key after that.
Plain frozen dataclasses: a validation library would weigh on the light runtime for a dozen fields."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from .errors import ModelError
from .files import read_json_object
from .manifest import FORMAT, FORMAT_VERSION, PREPROCESSING_DOC, manifest_path
from .tasks import TASK_ORDER, TASKS, task_table

DEFAULT_STRIDE = 16
DEFAULT_VIT_SIZE = 384
#: "prepost": one uint8 (N, H, W, 3) image in, finished maps out (a pre/post graph)
LAYOUTS = ("dynamic", "official", "prepost")
#: a pre/post graph's resize to the model, by the name its manifest gives ("default": before 0.2)
_GRAPH_PIPELINES = {"antialias": "antialias", "default": "antialias", "official": "official"}
#: a dimension: a size, or a symbolic name ("batch", "height") for a dynamic one
Dim = Union[int, str]
_TASK_HINTS = (("depth", "depth"), ("normal", "normal"), ("foreground", "foreground"), ("segment", "foreground"))
_RELEASED_EXPECTATION = (
    "expected a DAViD model: either our export with its .json manifest beside it, or a released "
    "file with one input (1, 3, 512, 512) and outputs depth (1, 512, 512) / normal (1, 3, 512, 512) "
    "/ foreground (1, 1, 512, 512)"
)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, shape (symbolic dims as strings or None), dtype, its task."""

    name: str
    shape: Tuple[Optional[Dim], ...]
    dtype: str = "float32"
    task: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        """The tensor as a manifest entry."""
        task = {} if self.task is None else {"task": self.task}
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, **task}


@dataclass(frozen=True)
class GraphIO:
    """What a loaded graph says about itself (a runner's or an inspector's view)."""

    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]

    @property
    def input_names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


@dataclass(frozen=True)
class Weights:
    """Where the weights in the file came from: "random" (seed), "file" (our safetensors) or
    "released" (a Microsoft file)."""

    origin: str
    seed: Optional[int] = None
    path: Optional[str] = None
    sha256: Optional[str] = None
    description: str = ""


@dataclass(frozen=True)
class GraphSection:
    """What a pre/post graph (layout "prepost") does inside: its network's resolution, its pipeline
    (david_infer.resample), its resize back ("bicubic" or "official"), the photo's channel order,
    the largest photo side it resamples (None: any)."""

    resolution: int
    pipeline: str
    interpolation: str
    channel_order: str
    max_side: Optional[int] = None


@dataclass(frozen=True)
class ModelContract:
    """The contract of one model file, validated: built by `load`, `from_dict` or `recognise`;
    `as_dict()` gives the manifest JSON back."""

    path: Path
    format_version: int
    kind: str  # "onnx", "tensorrt-engine", ...
    task: str  # "depth", "normal", "foreground" or "multitask"
    tasks: Tuple[str, ...]  # in output order
    layout: str  # "dynamic" (image + image_384, any size) or "official" (one fixed-size input)
    precision: str
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    stride: int = DEFAULT_STRIDE
    vit_size: int = DEFAULT_VIT_SIZE
    variant: Optional[str] = None
    sha256: Optional[str] = None
    weights: Weights = Weights("released")
    released: bool = False  # True for a manifest-less (released) file
    #: a pre/post graph's section (layout "prepost"), else None
    graph: Optional[GraphSection] = None
    #: the manifest as read, for blocks this class does not type (e.g. a TensorRT engine manifest's
    #: "tensorrt" block, read by that backend alone)
    document: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def image_input(self) -> str:
        """The image input's name."""
        return self.inputs[0].name

    @property
    def vit_input(self) -> Optional[str]:
        """The ViT copy's input name (None for a one-input file)."""
        return self.inputs[1].name if len(self.inputs) > 1 else None

    @property
    def output_names(self) -> Dict[str, str]:
        """task -> output name."""
        return {t.task: t.name for t in self.outputs if t.task in self.tasks}

    @property
    def fixed_resolution(self) -> Optional[int]:
        """The side of a fixed-size input (released files: 512), None for a dynamic one."""
        h, w = self.inputs[0].shape[2:4]
        return h if isinstance(h, int) and isinstance(w, int) else None

    @property
    def fixed_batch(self) -> Optional[int]:
        """The batch of a fixed-batch input, None for a dynamic one."""
        b = self.inputs[0].shape[0]
        return b if isinstance(b, int) else None

    @property
    def built_resolution(self) -> Optional[int]:
        """The one resolution the file runs at (a fixed-size input's side, a pre/post graph's); None
        for a dynamic network."""
        return self.graph.resolution if self.graph is not None else self.fixed_resolution

    @property
    def built_pipeline(self) -> Optional[str]:
        """The pipeline the file needs (a pre/post graph's own, "official" for a fixed-size file); None
        for a dynamic network, which runs either."""
        if self.graph is not None:
            return self.graph.pipeline
        return "official" if self.vit_input is None else None

    def section(self, name: str) -> Mapping[str, Any]:
        """An untyped block of the manifest (empty if absent), read-only."""
        value = self.document.get(name)
        return MappingProxyType(dict(value)) if isinstance(value, Mapping) else MappingProxyType({})

    def as_dict(self) -> Dict[str, Any]:
        """The manifest JSON of this contract."""
        return json.loads(json.dumps(dict(self.document)))

    @classmethod
    def load(cls, model_path: Union[str, Path]) -> "ModelContract":
        """The contract from the manifest beside `model_path` (ModelError if absent or invalid)."""
        model_path = Path(model_path)
        return cls.from_dict(
            model_path, read_json_object(manifest_path(model_path), "JSON manifest", expect_object=False)
        )

    @classmethod
    def from_dict(cls, model_path: Union[str, Path], data: Any, released: bool = False) -> "ModelContract":
        """Validate a manifest dict; ModelError naming the manifest and the bad field otherwise."""
        return _parse(Path(model_path), data, released)

    @classmethod
    def recognise(cls, model_path: Union[str, Path], io: GraphIO) -> "ModelContract":
        """The contract of a manifest-less (released) file from its graph's inputs and outputs, or
        ModelError saying why it is not one."""
        path = Path(model_path)
        return cls.from_dict(path, _released_manifest(path, io), released=True)

    def check_graph(self, io: GraphIO) -> None:
        """ModelError unless the loaded graph has the inputs and outputs this contract names, with 3
        image channels and each task's channel count wherever it states a number (so a manifest
        paired with the wrong file fails when the model is loaded)."""
        inputs = {t.name: t.shape for t in io.inputs}
        outputs = {t.name: t.shape for t in io.outputs}
        wanted_in = [n for n in (self.image_input, self.vit_input) if n]
        problems = []
        if any(n not in inputs for n in wanted_in) or len(inputs) != len(wanted_in):
            problems.append(f"inputs {list(inputs)} (the manifest describes {wanted_in})")
        absent = [n for n in self.output_names.values() if n not in outputs]
        if absent:
            problems.append(f"outputs {list(outputs)} lack {absent}")
        for name in wanted_in:
            shape = tuple(inputs.get(name) or ())
            if len(shape) not in (0, 4) or (len(shape) == 4 and isinstance(shape[1], int) and shape[1] != 3):
                problems.append(f"input {name!r} has shape {shape}, expected (batch, 3, height, width)")
        for task, name in self.output_names.items():
            if name in TASKS and name != task:  # an output named after another task: the manifest was edited
                problems.append(f"output {name!r} is given the task {task!r}")
            shape = tuple(outputs.get(name) or ())
            channels = TASKS[task].channels
            rank3_ok = len(shape) == 3 and channels == 1
            bad_channels = len(shape) == 4 and isinstance(shape[1], int) and shape[1] != channels
            if shape and not rank3_ok and (len(shape) != 4 or bad_channels):
                problems.append(
                    f"{task} output {name!r} has shape {shape}, expected (batch, {channels}, height, width)"
                )
        if problems:
            raise ModelError(
                f"{self.path}: the graph does not match its manifest: "
                + "; ".join(problems)
                + ". The manifest belongs to another file, or the file was not exported by david-infer"
            )


def read_manifest(path: Union[str, Path]) -> Dict[str, Any]:
    """A manifest file as a dict, validated by `ModelContract` (for tools that rewrite manifests)."""
    path = Path(path)
    data = read_json_object(path, "JSON manifest", expect_object=False)
    ModelContract.from_dict(path.with_suffix(".onnx") if path.suffix == ".json" else path, data)
    return data


def _parse(path: Path, data: Any, released: bool) -> ModelContract:
    where = str(path if released else manifest_path(path))
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise ModelError(f'{where}: not a david-infer manifest (missing "format": "{FORMAT}")')
    version = data.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ModelError(f"{where}: manifest format_version must be an integer, got {version!r}")
    if version < 0:
        raise ModelError(f"{where}: manifest format_version {version} is not a version (0 or more)")
    if version > FORMAT_VERSION:
        raise ModelError(
            f"{where}: manifest format version {version} is newer than this david-infer understands "
            f"({FORMAT_VERSION}); upgrade david-infer"
        )
    for key in ("inputs", "outputs", "tasks"):
        if key not in data:
            raise ModelError(f"{where}: manifest lacks the required key {key!r}")
    inputs = _tensors(where, data["inputs"], "inputs")
    outputs = _tensors(where, data["outputs"], "outputs", outputs=True)
    if len(inputs) not in (1, 2):
        raise ModelError(f"{where}: manifest describes {len(inputs)} inputs; expected the image (and image_384)")
    tasks = tuple(t for t in TASK_ORDER if any(o.task == t for o in outputs))
    if not tasks:
        raise ModelError(
            f"{where}: manifest lists no known task ({', '.join(TASK_ORDER)}) among outputs {[o.name for o in outputs]}"
        )
    shape = inputs[0].shape
    if len(shape) != 4:
        raise ModelError(f"{where}: input {inputs[0].name!r} has shape {list(shape)}; expected 4 dims (N, 3, H, W)")
    h, w = shape[2:4]
    if isinstance(h, int) and isinstance(w, int) and h != w:
        raise ModelError(f"{where}: fixed input {h}x{w} is not square")
    layout = data.get("layout") or ("official" if len(inputs) == 1 else "dynamic")
    if layout not in LAYOUTS:
        raise ModelError(f"{where}: manifest layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    pre = data.get("preprocessing") or {}
    if not isinstance(pre, Mapping):
        raise ModelError(f"{where}: manifest preprocessing must be an object, got {type(pre).__name__}")
    graph = _graph_section(where, data.get("prepost")) if layout == "prepost" else None
    return ModelContract(
        path=path,
        format_version=version,
        kind=_text(where, data, "kind", "onnx"),
        task=_text(where, data, "task", tasks[0] if len(tasks) == 1 else "multitask"),
        tasks=tasks,
        layout=layout,
        precision=_text(where, data, "precision", "fp32"),
        inputs=inputs,
        outputs=outputs,
        stride=_positive(where, pre, "stride", DEFAULT_STRIDE),
        vit_size=_positive(where, pre, "vit_size", DEFAULT_VIT_SIZE),
        variant=data.get("variant") if isinstance(data.get("variant"), str) else None,
        sha256=data.get("sha256") if isinstance(data.get("sha256"), str) else None,
        weights=_weights(where, data.get("weights")),
        released=released,
        graph=graph,
        document=MappingProxyType(dict(data)),
    )


def _graph_section(where: str, section: Any) -> GraphSection:
    """The typed `prepost` section of a pre/post graph's manifest."""
    section = section if isinstance(section, Mapping) else {}
    resolution, order = section.get("resolution"), section.get("channel_order")
    pipeline = _GRAPH_PIPELINES.get(str(section.get("pipeline")))
    max_side = section.get("max_side")
    side_ok = max_side is None or _count(max_side)
    if not (_count(resolution) and pipeline is not None and order in ("rgb", "bgr") and side_ok):
        raise ModelError(
            f"{where}: the manifest's prepost section needs an integer resolution, pipeline "
            f"'antialias' or 'official', channel_order 'rgb' or 'bgr' (and max_side an integer); got "
            f"{resolution!r}, {section.get('pipeline')!r}, {order!r}, {max_side!r}. Re-export the graph "
            "with david-infer export --prepost"
        )
    interpolation = "official" if pipeline == "official" else "bicubic"
    return GraphSection(resolution, pipeline, interpolation, order, max_side)


def _count(value: Any) -> bool:
    """Whether `value` is a positive int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _text(where: str, data: Mapping[str, Any], key: str, default: str) -> str:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ModelError(f"{where}: manifest {key!r} must be a string, got {value!r}")
    return default if value is None else value


def _tensors(where: str, items: Any, key: str, outputs: bool = False) -> Tuple[TensorSpec, ...]:
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)) or not items:
        raise ModelError(f"{where}: manifest {key!r} must be a non-empty list of tensor descriptions")
    specs = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise ModelError(f'{where}: manifest {key}[{i}] needs a string "name", got {item!r}')
        shape: Any = item.get("shape")
        is_list = isinstance(shape, Sequence) and not isinstance(shape, (str, bytes))
        if not is_list or not all(d is None or isinstance(d, str) or _count(d) for d in shape):
            raise ModelError(
                f"{where}: manifest {key}[{i}] ({item['name']!r}) has shape {shape!r}; expected a "
                "list of positive sizes or dimension names"
            )
        task = item.get("task", item["name"]) if outputs else None
        specs.append(TensorSpec(item["name"], tuple(shape), str(item.get("dtype", "float32")), task))
    return tuple(specs)


def _positive(where: str, pre: Mapping[str, Any], key: str, default: int) -> int:
    value = pre.get(key)
    if value is not None and not _count(value):
        raise ModelError(f"{where}: manifest preprocessing {key!r} must be a positive integer, got {value!r}")
    return default if value is None else value


def _weights(where: str, block: Any) -> Weights:
    if block is None:
        return Weights("released")
    if not isinstance(block, Mapping):
        raise ModelError(f"{where}: manifest weights must be an object, got {block!r}")
    seed = block.get("seed")
    return Weights(
        str(block.get("origin", "unknown")),
        seed if isinstance(seed, int) else None,
        block.get("path"),
        block.get("sha256"),
        str(block.get("description", "")),
    )


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


def _released_manifest(path: Path, io: GraphIO) -> Dict[str, Any]:
    if len(io.inputs) != 1:
        raise ModelError(
            f"{path}: no manifest and {len(io.inputs)} inputs {list(io.input_names)}; {_RELEASED_EXPECTATION}"
        )
    image = io.inputs[0]
    shape = tuple(image.shape)
    dims = tuple(d for d in shape if isinstance(d, int) and d > 0)  # the fixed sizes
    if len(shape) != 4 or len(dims) != 4 or dims[:2] != (1, 3) or dims[2] != dims[3]:
        raise ModelError(f"{path}: no manifest and input {image.name!r} has shape {shape}; {_RELEASED_EXPECTATION}")
    size = int(dims[2])
    if len(io.outputs) == 3:
        tasks = list(TASK_ORDER)
    elif len(io.outputs) == 1:
        tasks = [_task_from_shape(path, io.outputs[0].name, tuple(io.outputs[0].shape))]
    else:
        raise ModelError(
            f"{path}: no manifest and {len(io.outputs)} outputs {list(io.output_names)}; {_RELEASED_EXPECTATION}"
        )
    for out, task in zip(io.outputs, tasks):
        c = TASKS[task].channels
        allowed = [(1, c, size, size)] + ([(1, size, size)] if c == 1 else [])
        if tuple(out.shape) not in allowed:
            raise ModelError(
                f"{path}: output {out.name!r} has shape {tuple(out.shape)}; a released DAViD {task} "
                f"output is {' or '.join(str(a) for a in allowed)}"
            )
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "onnx",
        "model_file": path.name,
        "variant": None,
        "task": tasks[0] if len(tasks) == 1 else "multitask",
        "tasks": tasks,
        "layout": "official",
        "precision": "fp32",
        "inputs": [{"name": image.name, "shape": list(shape), "dtype": "float32"}],
        "outputs": [{**o.as_dict(), "task": t} for o, t in zip(io.outputs, tasks)],
        "preprocessing": {
            **PREPROCESSING_DOC,
            "stride": DEFAULT_STRIDE,
            "vit_size": DEFAULT_VIT_SIZE,
            "resolution": size,
            "default_resolution": size,
        },
        "postprocessing": {t: TASKS[t].postprocessing() for t in tasks},
        "task_table": task_table(tuple(tasks)),
        "weights": {"origin": "released", "description": "recognised from its shapes (no manifest)"},
    }
