"""`david-infer export --prepost`: a network file wrapped in its pre/post (david_infer.stages.builder),
one ONNX graph from the uint8 photo to finished maps, with its manifest; and the check that such a
graph is one TensorRT 10 parses (docs/prepost.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

from .._optional import require
from ..contract import ModelContract
from ..errors import ExportError, ModelError
from ..files import sha256_file
from ..resample import MAX_PYRAMID_LEVELS, OFFICIAL_PYRAMID_FACTOR
from ..stages.builder import MIN_OPSET, GraphSpec, default_opset, wrap
from ..tasks import TASKS, task_table
from .onnx_export import check_output, onnx_contract, write_with_manifest

OPS_TABLE = Path(__file__).with_name("tensorrt10_ops.json")
#: what each pipeline's resize and resize back are, for the manifest
RESIZE = {"antialias": "pillow-bilinear-antialias", "official": "opencv-pyrdown-linear"}
RESIZE_BACK = {"antialias": "pillow-bicubic", "official": "opencv-cubic"}


def _load_source(source: Path) -> Tuple[Any, ModelContract]:
    """The network graph and its contract; ModelError naming the file when it cannot be wrapped."""
    onnx = require("onnx", "export")
    if source.suffix != ".onnx":
        raise ModelError(
            f"{source}: --prepost wraps an .onnx file (ours or a released one), not "
            f"{source.suffix or 'a suffix-less file'}"
        )
    if not source.is_file():
        raise ModelError(f"model file not found: {source}")
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # protobuf raises its own DecodeError types
        raise ModelError(
            f"{source}: not a readable ONNX file ({type(exc).__name__}: {exc}); re-download or re-export it"
        ) from None
    contract = onnx_contract(source)[0]
    if contract.layout == "prepost":
        raise ModelError(
            f'{source}: already a pre/post graph (its manifest says layout "prepost"); wrap the '
            "network file it was made from"
        )
    if contract.precision != "fp32" and any(t.dtype != "float32" for t in contract.inputs):
        raise ModelError(f"{source}: inputs {[t.dtype for t in contract.inputs]}; the pre/post graph feeds float32")
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise ModelError(
            f"{source}: ONNX opset {opset}; wrapping needs opset {MIN_OPSET} or newer "
            "(re-export it, or convert it with onnx.version_converter)"
        )
    return model, contract


def build_prepost_model(
    network: Any, contract: ModelContract, channel_order: str = "rgb", resolution: int = 512
) -> Tuple[Any, Dict[str, Any]]:
    """The network ModelProto (described by `contract`) wrapped in pre/post, and the manifest's
    `prepost` section; a fixed-size (official) network keeps its pipeline and size."""
    pipeline = contract.built_pipeline or "antialias"
    resolution = contract.built_resolution or resolution
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, int)
        or resolution < contract.stride
        or resolution % contract.stride
    ):
        raise ExportError(f"resolution must be a positive multiple of {contract.stride}, got {resolution!r}")
    vit = contract.vit_size if contract.vit_input is not None else None
    interpolation = "official" if pipeline == "official" else "bicubic"
    spec = GraphSpec(pipeline, resolution, vit, channel_order, interpolation)
    ranks = {t.task: (t.name, len(t.shape)) for t in contract.outputs if t.task in contract.tasks}
    outputs = {task: ranks[task] for task in contract.tasks}
    model = wrap(network, spec, contract.image_input, contract.vit_input, outputs, contract.fixed_batch or "batch")
    section = {
        "input": "image",
        "axes": "NHWC",
        "dtype": "uint8",
        "channel_order": channel_order,
        "pipeline": pipeline,
        "resolution": resolution,
        "vit_size": vit,
        "resize": RESIZE[pipeline],
        "resize_back": RESIZE_BACK[pipeline],
        "depth_sign": TASKS["depth"].sign,
        "finishing": "each map finished as task_table says (sign, unit length, clip)",
        "tensorrt": f"onnx-tensorrt 10 operators only ({OPS_TABLE.name})",
    }
    if pipeline == "official":
        section["max_side"] = OFFICIAL_PYRAMID_FACTOR * resolution * 2**MAX_PYRAMID_LEVELS
    return model, section


def _prepost_manifest(
    output: Path, source: Path, contract: ModelContract, section: Dict[str, Any], sha256: str, batch: Union[int, str]
) -> Dict[str, Any]:
    doc = contract.as_dict()
    tasks = list(contract.tasks)
    doc.update(
        {
            "model_file": output.name,
            "sha256": sha256,
            "layout": "prepost",
            "task": tasks[0] if len(tasks) == 1 else "multitask",
            "tasks": tasks,
            "output_order": tasks,
            "inputs": [
                {
                    "name": "image",
                    "shape": [batch, "height", "width", 3],
                    "dtype": "uint8",
                    "axes": "NHWC",
                    "channel_order": section["channel_order"],
                }
            ],
            "outputs": [
                {
                    "name": t,
                    "task": t,
                    "shape": [batch, "height", "width"] + ([TASKS[t].channels] if TASKS[t].channels > 1 else []),
                    "dtype": "float32",
                    "axes": "NHWC" if TASKS[t].channels > 1 else "NHW",
                }
                for t in tasks
            ],
            "task_table": task_table(contract.tasks),
            "preprocessing": {
                "inside_the_graph": f"{section['resize']} at {section['resolution']}",
                "stride": contract.stride,
                "vit_size": contract.vit_size,
                "resolution": section["resolution"],
                "default_resolution": section["resolution"],
            },
            "postprocessing": {t: "inside the graph" for t in tasks},
            "prepost": {
                **section,
                "source": {
                    "file": source.name,
                    "sha256": contract.sha256 or sha256_file(source),
                    "layout": contract.layout,
                },
            },
        }
    )
    return doc


def wrap_prepost(
    source: Union[str, Path], output: Union[str, Path], channel_order: str = "rgb", resolution: int = 512
) -> Dict[str, Any]:
    """Write `output` (.onnx): the network file `source` (ours, or a released file) wrapped in pre/post,
    with its manifest beside it (both, or neither); return the manifest."""
    onnx = require("onnx", "export")
    source, output = Path(source), Path(output)
    if output.resolve() == source.resolve():
        raise ExportError(f"output {output} is the source file; write the pre/post graph to another file")
    check_output(output)
    network, contract = _load_source(source)
    model, section = build_prepost_model(network, contract, channel_order, resolution)

    def write(tmp: Path) -> Dict[str, Any]:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))
        return _prepost_manifest(output, source, contract, section, sha256_file(tmp), contract.fixed_batch or "batch")

    return write_with_manifest(output, write)


def tensorrt_ops_table() -> Dict[str, Any]:
    """The operator table of TensorRT 10's ONNX parser kept beside this module (its source named inside)."""
    return json.loads(OPS_TABLE.read_text(encoding="utf-8"))


def tensorrt_problems(model: Any) -> List[str]:
    """What in `model` (a ModelProto) TensorRT 10's ONNX parser does not take, by `tensorrt10_ops.json`:
    operators, attributes, inputs that must be constants, uint8 tensors read by anything but Cast, the
    opset; empty when the graph is portable."""
    from onnx import TensorProto, helper, shape_inference

    table = tensorrt_ops_table()
    low, high = table["opsets"]
    problems = []
    opset = default_opset(model)
    if not low <= opset <= high:
        problems.append(f"opset {opset} outside {low}..{high}")
    inferred = shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    }
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for node in model.graph.node:
        where = f"{node.op_type} node {node.name!r}"
        if node.op_type not in table["operators"]:
            problems.append(f"{where}: not an operator of TensorRT 10's ONNX parser")
            continue
        rules = table["rules"].get(node.op_type, {})
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        for name, allowed in rules.items():
            if name == "constant_inputs":
                for index in allowed:
                    if index < len(node.input) and node.input[index] and node.input[index] not in constants:
                        problems.append(f"{where}: input {index} ({node.input[index]!r}) must be a constant")
                continue
            value = attrs.get(name)
            value = value.decode() if isinstance(value, bytes) else value
            if value is not None and value not in allowed:
                problems.append(f"{where}: {name}={value!r} (TensorRT 10 takes {allowed})")
        if node.op_type != "Cast" and any(types.get(i) == TensorProto.UINT8 for i in node.input):
            problems.append(f"{where}: reads a uint8 tensor ({table['uint8']})")
    return problems
