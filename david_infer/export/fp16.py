"""Mixed-precision FP16 conversion of an FP32 ONNX graph, and a strongly-typed checker (docs/export.md):
TensorRT 11 builds FP16 only from a graph that is FP16 already, every op in the type of its inputs.
A pass of our own: onnxconverter-common's `keep_io_types=True` can feed an FP32 input straight into
an FP16 Conv and leaves existing `Cast(to=FLOAT)` nodes pointing at FP32."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

FLOAT = 1  # onnx.TensorProto.FLOAT
FLOAT16 = 10  # onnx.TensorProto.FLOAT16
_FLOATS = (FLOAT, FLOAT16)

# Stay FP32 behind Casts: normalisation, softmax and every reduction (sums of many FP16 terms overflow
# or lose precision).
FP32_OPS: Tuple[str, ...] = (
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "BatchNormalization",
    "Softmax",
    "LogSoftmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceProd",
    "ReduceMax",
    "ReduceMin",
)
# The compute ops whose FP16 share the export reports (the "done when" metric).
COMPUTE_OPS: Tuple[str, ...] = ("Conv", "ConvTranspose", "MatMul", "Gemm")

_TYPE_NAMES = {FLOAT: "float32", FLOAT16: "float16"}


def _type_name(elem_type: Optional[int]) -> str:
    import onnx

    if elem_type is None:
        return "unknown"
    return _TYPE_NAMES.get(elem_type) or onnx.TensorProto.DataType.Name(elem_type).lower()


def _opset(model: Any) -> int:
    return next((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), 1)


def _schema(node: Any, opset: int) -> Optional[Any]:
    import onnx.defs

    if node.domain not in ("", "ai.onnx"):
        return None
    try:
        return onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return None


def _formal(params: Sequence[Any], index: int) -> Optional[Any]:
    """The formal parameter of input/output `index` (a variadic last formal covers the rest)."""
    if index < len(params):
        return params[index]
    if params and params[-1].option == params[-1].option.__class__.Variadic:
        return params[-1]
    return None


def _type_params(schema: Any) -> Dict[str, List[str]]:
    return {c.type_param_str: list(c.allowed_type_strs) for c in schema.type_constraints}


def _groups(node: Any, schema: Optional[Any]) -> Dict[str, List[int]]:
    """Type parameter -> the indices of the node's inputs bound to it (by the op's schema)."""
    groups: Dict[str, List[int]] = {}
    params = _type_params(schema) if schema is not None else {}
    for i, name in enumerate(node.input):
        formal = _formal(schema.inputs, i) if schema is not None else None
        if name and formal is not None and formal.type_str in params:
            groups.setdefault(formal.type_str, []).append(i)
    return groups


def _fixed_type(type_str: str) -> Optional[int]:
    """'tensor(int64)' -> INT64; a type parameter name -> None."""
    import onnx

    if not type_str.startswith("tensor("):
        return None
    return onnx.TensorProto.DataType.Value(type_str[len("tensor(") : -1].upper())


def _light(model: Any) -> Any:
    """The model without weight data (initializers become typed inputs): cheap to infer on (ONNX shape
    inference copies the whole model: 1.3 GB per call for Large)."""
    import onnx

    graph = model.graph
    # Small constants stay: shape inference reads their values (Resize sizes, Reshape shapes).
    large = {i.name for i in graph.initializer if i.data_type in _FLOATS and math.prod(i.dims) > 64}
    small = [i for i in graph.initializer if i.name not in large]
    stubs = [
        onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
        for i in graph.initializer
        if i.name in large
    ]
    light_graph = onnx.helper.make_graph(
        list(graph.node),
        graph.name,
        list(graph.input) + stubs,
        list(graph.output),
        small,
        value_info=list(graph.value_info),
    )
    light = onnx.helper.make_model(light_graph, opset_imports=list(model.opset_import))
    light.ir_version = model.ir_version
    return light


def _elem_types_from_inference(model: Any, strict: bool = False) -> Dict[str, int]:
    """Tensor name -> elem type from ONNX's own type inference (used for attribute-typed outputs)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(_light(model), check_type=strict, strict_mode=strict)
    graph = inferred.graph
    types: Dict[str, int] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types


def _output_type(
    node: Any, schema: Optional[Any], index: int, bound: Mapping[str, Optional[int]], fallback: Dict[str, int]
) -> Optional[int]:
    name = node.output[index]
    if node.op_type == "Cast":
        return next(a.i for a in node.attribute if a.name == "to")
    if schema is not None:
        formal = _formal(schema.outputs, index)
        if formal is not None:
            fixed = _fixed_type(formal.type_str)
            if fixed is not None:
                return fixed
            if formal.type_str in bound:
                return bound[formal.type_str]
    return fallback.get(name)


def check_strongly_typed(model: Any) -> List[str]:
    """Every problem a strongly typed parser would reject, one line each ([] when the graph is fine):
    types propagated through each node by its ONNX schema, where all inputs bound to one type
    parameter must share one type, and every type must be known."""
    graph = model.graph
    opset = _opset(model)
    fallback = _elem_types_from_inference(model)
    types: Dict[str, int] = {i.name: i.data_type for i in graph.initializer}
    for vi in graph.input:
        types[vi.name] = vi.type.tensor_type.elem_type
    problems: List[str] = []
    for node in graph.node:
        label = f"{node.op_type} node {node.name or '(unnamed)'}"
        schema = _schema(node, opset)
        bound: Dict[str, int] = {}
        first: Dict[str, str] = {}
        for param, indices in _groups(node, schema).items():
            for name in (node.input[i] for i in indices):
                t = types.get(name)
                if t is None:
                    problems.append(f"{label}: input {name} has no known type")
                    continue
                previous = bound.setdefault(param, t)
                first.setdefault(param, name)
                if previous != t:
                    problems.append(
                        f"{label}: inputs of type {param} mix {_type_name(previous)} "
                        f"({first[param]}) and {_type_name(t)} ({name}); insert a Cast"
                    )
        for j, out in enumerate(node.output):
            if out:
                t = _output_type(node, schema, j, bound, fallback)
                if t is None:
                    problems.append(f"{label}: output {out} has no known type")
                else:
                    types[out] = t
    for vi in graph.output:
        declared = vi.type.tensor_type.elem_type
        if types.get(vi.name) not in (None, declared):
            problems.append(
                f"graph output {vi.name} is declared {_type_name(declared)} but computed as "
                f"{_type_name(types[vi.name])}"
            )
    return problems


class _Converter:
    """State of one conversion: current tensor types, Casts and converted weights made so far."""

    def __init__(self, model: Any, keep_fp32: Iterable[str]) -> None:
        self.model = model
        self.keep_fp32 = set(keep_fp32)
        self.opset = _opset(model)
        self.original = _elem_types_from_inference(model)
        graph = model.graph
        self.initializers = {i.name: i for i in graph.initializer}
        self.types: Dict[str, int] = {n: i.data_type for n, i in self.initializers.items()}
        for vi in graph.input:
            self.types[vi.name] = vi.type.tensor_type.elem_type
        self.casts: Dict[Tuple[str, int], str] = {}
        self.new_inits: Dict[Tuple[str, int], Any] = {}
        self.nodes: List[Any] = []
        self.used_names = {n for node in graph.node for n in list(node.input) + list(node.output)}
        self.used_names |= set(self.initializers) | {vi.name for vi in graph.input}

    def _fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.used_names:
            k += 1
            name = f"{base}_{k}"
        self.used_names.add(name)
        return name

    def as_type(self, name: str, target: int) -> str:
        """`name` as a tensor of type `target`: itself, a converted weight, or a (shared) Cast."""
        import numpy as np
        import onnx
        from onnx import numpy_helper

        if self.types.get(name) == target:
            return name
        key = (name, target)
        if name in self.initializers:
            if key not in self.new_inits:
                array = numpy_helper.to_array(self.initializers[name])
                if target == FLOAT16:  # saturate instead of overflowing to inf (such weights are rare)
                    converted = np.clip(array, -65504, 65504).astype(np.float16)
                else:
                    converted = array.astype(np.float32)
                tensor = numpy_helper.from_array(converted, self._fresh(f"{name}_{_type_name(target)}"))
                self.new_inits[key] = tensor
                self.types[tensor.name] = target
            return self.new_inits[key].name
        if key not in self.casts:
            out = self._fresh(f"{name}_{_type_name(target)}")
            self.nodes.append(onnx.helper.make_node("Cast", [name], [out], name=f"Cast_{out}", to=target))
            self.types[out] = target
            self.casts[key] = out
        return self.casts[key]

    def convert_node(self, node: Any) -> None:
        schema = _schema(node, self.opset)
        target = FLOAT if node.op_type in self.keep_fp32 else FLOAT16
        if node.op_type == "Cast" and target == FLOAT16:
            for a in node.attribute:
                if a.name == "to" and a.i == FLOAT:
                    a.i = FLOAT16  # the leftover Cast(to=FLOAT) pitfall: follow the compute type
        bound: Dict[str, Optional[int]] = {}
        params = _type_params(schema) if schema is not None else {}
        flowing = {f.type_str for f in schema.outputs} if schema is not None else set()
        for param, indices in _groups(node, schema).items():
            current = [self.types.get(node.input[i]) for i in indices]
            if not all(t in _FLOATS for t in current) or (param not in flowing and len(set(current)) == 1):
                bound[param] = current[0]  # not floats, or (e.g. Shape) a type that flows nowhere
                continue
            allowed = f"tensor({'float16' if target == FLOAT16 else 'float'})" in params[param]
            want = target if allowed else FLOAT
            for i in indices:
                node.input[i] = self.as_type(node.input[i], want)
            bound[param] = want
        for j, out in enumerate(node.output):
            if out:
                t = _output_type(node, schema, j, bound, self.original)
                if t is not None:
                    self.types[out] = t
        self.nodes.append(node)

    def finish(self) -> Any:
        import onnx

        graph = self.model.graph
        for node in list(graph.node):
            self.convert_node(node)
        # Graph outputs stay FP32: rename the FP16 producer's tensor and Cast back under the old name.
        for vi in graph.output:
            declared = vi.type.tensor_type.elem_type
            if self.types.get(vi.name) != declared:
                inner = self._fresh(f"{vi.name}_{_type_name(self.types[vi.name])}")
                for node in self.nodes:
                    node.output[:] = [inner if o == vi.name else o for o in node.output]
                    node.input[:] = [inner if i == vi.name else i for i in node.input]
                self.nodes.append(
                    onnx.helper.make_node("Cast", [inner], [vi.name], name=f"Cast_{vi.name}", to=declared)
                )
        used = {n for node in self.nodes for n in node.input}
        inits = [i for i in graph.initializer if i.name in used]
        inits += [t for t in self.new_inits.values() if t.name in used]
        del graph.node[:]
        graph.node.extend(self.nodes)
        del graph.initializer[:]
        graph.initializer.extend(inits)
        del graph.value_info[:]  # stale FP32 annotations
        _elem_types_from_inference(self.model, strict=True)  # ONNX's own type check; raises on a mismatch
        return self.model


def convert_to_mixed_fp16(model: Any, keep_fp32: Iterable[str] = FP32_OPS, inplace: bool = False) -> Any:
    """A mixed-precision version of an FP32 model: `keep_fp32` op types stay FP32, the rest runs in
    FP16, inputs and outputs stay FP32. inplace=True rewrites `model` itself (no copy of the weights)."""
    import onnx

    if not inplace:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    return _Converter(model, keep_fp32).finish()


def _node_type(node: Any, types: Dict[str, int]) -> Optional[int]:
    return next((types[n] for n in node.input if n and types.get(n) in _FLOATS), None)


def precision_report(model: Any) -> Dict[str, Any]:
    """Counts of what runs in which precision: the export's done-when figures and the manifest's."""
    types = _elem_types_from_inference(model)
    compute: Counter = Counter()
    fp32_ops: Counter = Counter()
    for node in model.graph.node:
        t = _node_type(node, types)
        if node.op_type in COMPUTE_OPS:
            compute[_type_name(t)] += 1
        # Shape/Size only read a tensor's dimensions; Casts are the boundaries themselves.
        if t == FLOAT and node.op_type not in ("Cast", "Shape", "Size"):
            fp32_ops[node.op_type] += 1
    total = sum(compute.values())
    return {
        "compute_ops": {k: int(v) for k, v in compute.items()},
        "compute_fp16_fraction": (compute["float16"] / total) if total else 0.0,
        "fp32_ops": dict(sorted(fp32_ops.items())),
        "casts": sum(1 for n in model.graph.node if n.op_type == "Cast"),
    }
