"""A small stand-in for an exported pixels-to-maps graph: the interface of `export --prepost` (uint8
(N, H, W, 3) `image` in; `depth`, `normal`, `foreground` at the input's size out) with per-pixel
arithmetic in place of the network, and its manifest. Every output depends on the channel order,
so a host that feeds BGR to an RGB graph (or the reverse) gets different maps."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TASKS = ("depth", "normal", "foreground")
OUTPUT_SHAPES = {
    "depth": ["batch", "height", "width"],
    "normal": ["batch", "height", "width", 3],
    "foreground": ["batch", "height", "width"],
}


def build_graph(tasks: Sequence[str] = TASKS, input_name: str = "image", centre: float = 127.4):
    """The onnx.ModelProto: x = float(image); depth = x . (0.5, 0.3, 0.2) / 255; normal = (x - centre)
    normalised per pixel (a whole-number `centre` makes 0 / 0 = NaN where a pixel is that gray);
    foreground = sigmoid(x . (1, -1, 0.5) / 64)."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: np.ndarray):
        return numpy_helper.from_array(np.asarray(value), name)

    nodes = [helper.make_node("Cast", [input_name], ["x"], to=TensorProto.FLOAT)]
    inits = [const("squeeze_axes", np.array([3], np.int64))]
    if "depth" in tasks:
        inits.append(const("depth_w", np.array([[0.5], [0.3], [0.2]], np.float32) / 255))
        nodes += [
            helper.make_node("MatMul", ["x", "depth_w"], ["depth_1"]),
            helper.make_node("Squeeze", ["depth_1", "squeeze_axes"], ["depth"]),
        ]
    if "normal" in tasks:
        inits += [const("centre", np.array(centre, np.float32)), const("reduce_axes", np.array([3], np.int64))]
        nodes += [
            helper.make_node("Sub", ["x", "centre"], ["centred"]),
            helper.make_node("ReduceL2", ["centred", "reduce_axes"], ["length"], keepdims=1),
            helper.make_node("Div", ["centred", "length"], ["normal"]),
        ]
    if "foreground" in tasks:
        inits.append(const("fg_w", np.array([[1.0], [-1.0], [0.5]], np.float32) / 64))
        nodes += [
            helper.make_node("MatMul", ["x", "fg_w"], ["fg_1"]),
            helper.make_node("Sigmoid", ["fg_1"], ["fg_2"]),
            helper.make_node("Squeeze", ["fg_2", "squeeze_axes"], ["foreground"]),
        ]
    outputs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, OUTPUT_SHAPES[t]) for t in tasks]
    graph = helper.make_graph(
        nodes,
        "prepost_stand_in",
        [helper.make_tensor_value_info(input_name, TensorProto.UINT8, ["batch", "height", "width", 3])],
        outputs,
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def manifest(channel_order: str, tasks: Sequence[str] = TASKS, input_name: str = "image") -> dict:
    """The manifest of `build_graph`'s graph (the schema of docs/prepost.md, the fields a host reads)."""
    inputs = [
        {
            "name": input_name,
            "shape": ["batch", "height", "width", 3],
            "dtype": "uint8",
            "layout": "NHWC",
            "channel_order": channel_order,
        }
    ]
    return {
        "format": "david-infer-manifest",
        "format_version": 1,
        "kind": "onnx",
        "layout": "prepost",
        "tasks": list(tasks),
        "inputs": inputs,
        "outputs": [{"name": t, "task": t, "dtype": "float32", "shape": OUTPUT_SHAPES[t]} for t in tasks],
        "prepost": {"input": input_name, "layout": "NHWC", "dtype": "uint8", "channel_order": channel_order},
    }


def write(
    folder: Path, channel_order: str = "bgr", tasks: Sequence[str] = TASKS, stem: str = "", centre: float = 127.4
) -> Path:
    """Write the graph and its manifest to FOLDER/STEM.onnx + .json; return the .onnx path."""
    import onnx

    path = folder / f"{stem or 'prepost-' + channel_order}.onnx"
    onnx.save(build_graph(tasks, centre=centre), str(path))
    path.with_suffix(".json").write_text(json.dumps(manifest(channel_order, tasks), indent=2))
    return path
