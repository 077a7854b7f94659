"""A multi-task model whose mask is keyed on colour, for tests that need masks they control (the
random tiny models' masks keep every pixel or none): the tiny export's interface and manifest
(`image` (N, 3, H, W) BGR in [0, 1] and `image_384` in; depth, normal, foreground (N, C, H, W) out)
with three 1x1 convolutions in place of the network:

    foreground = clip(KEY_GAIN * (red - green) + 0.5, 0, 1)   red people on green grass: 1 and 0
    depth      = red + 0.5 * blue                             structure to align
    normal     = (blue, green, red) - 0.5                     renormalised by the postprocessing

Run through DavidRuntime like any export (its stages resize in and out), so a red figure's mask
follows the figure at the model's resolution."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

KEY_GAIN = 8.0


TASKS = ("depth", "normal", "foreground")


def build_graph(tasks: Sequence[str] = TASKS, vit_size: int = 384):
    """The onnx.ModelProto (opset 18) with the outputs of `tasks`."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: np.ndarray):
        return numpy_helper.from_array(np.asarray(value, np.float32), name)

    # channels of `image` are B, G, R
    inits = [
        const("fg_w", np.array([0.0, -KEY_GAIN, KEY_GAIN]).reshape(1, 3, 1, 1)),
        const("fg_b", np.array([0.5])),
        const("depth_w", np.array([0.5, 0.0, 1.0]).reshape(1, 3, 1, 1)),
        const("depth_b", np.array([0.0])),
        const("normal_w", np.eye(3).reshape(3, 3, 1, 1)),
        const("normal_b", np.full(3, -0.5)),
        const("zero", np.array(0.0)),
        const("one", np.array(1.0)),
    ]
    nodes = {
        "foreground": [
            helper.make_node("Conv", ["image", "fg_w", "fg_b"], ["fg_linear"]),
            helper.make_node("Clip", ["fg_linear", "zero", "one"], ["foreground"]),
        ],
        "depth": [helper.make_node("Conv", ["image", "depth_w", "depth_b"], ["depth"])],
        "normal": [helper.make_node("Conv", ["image", "normal_w", "normal_b"], ["normal"])],
    }
    dims = ["batch", 3, "height", "width"]
    inputs = [
        helper.make_tensor_value_info("image", TensorProto.FLOAT, dims),
        helper.make_tensor_value_info(f"image_{vit_size}", TensorProto.FLOAT, ["batch", 3, vit_size, vit_size]),
    ]
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", channels, "height", "width"])
        for name, channels in (("depth", 1), ("normal", 3), ("foreground", 1))
        if name in tasks
    ]
    used = {name for task in tasks for node in nodes[task] for name in node.input}
    graph = helper.make_graph(
        [node for task in tasks for node in nodes[task]],
        "colour_keyed",
        inputs,
        outputs,
        [init for init in inits if init.name in used],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def write(folder: Path, tiny_export: Path, stem: str = "keyed", tasks: Sequence[str] = TASKS) -> Path:
    """FOLDER/STEM.onnx and its manifest: `tiny_export`'s manifest (an export of the tiny
    multi-task model) with this graph's file, hash, weights and `tasks`. Returns the .onnx path."""
    import onnx

    path = folder / f"{stem}.onnx"
    onnx.save(build_graph(tasks), str(path))
    manifest = json.loads(tiny_export.with_suffix(".json").read_text())
    manifest["tasks"] = manifest["output_order"] = list(tasks)
    manifest["task"] = tasks[0] if len(tasks) == 1 else "multitask"
    manifest["outputs"] = [o for o in manifest["outputs"] if o["task"] in tasks]
    for key in ("postprocessing", "task_table"):
        manifest[key] = {t: v for t, v in manifest[key].items() if t in tasks}
    manifest["model_file"] = path.name
    manifest["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["weights"] = {
        "origin": "test",
        "description": "colour-keyed 1x1 convolutions (tests/support/keyed_model.py)",
    }
    path.with_suffix(".json").write_text(json.dumps(manifest, indent=2))
    return path


def scene(size: tuple = (360, 640), people: tuple = ((40, 200, 70, 330),), seed: int = 0) -> tuple:
    """(image (H, W, 3) uint8 RGB, person boxes): green grass with texture, red figures (ellipses)
    filling the boxes (x0, y0, x1, y1) given."""
    rng = np.random.default_rng(seed)
    h, w = size
    image = np.empty((h, w, 3), np.float32)
    image[..., 0] = 40 + 20 * rng.random((h, w))
    image[..., 1] = 150 + 40 * rng.random((h, w))
    image[..., 2] = 40 + 20 * rng.random((h, w))
    yy, xx = np.mgrid[0:h, 0:w]
    for x0, y0, x1, y1 in people:
        cx, cy, rx, ry = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        shade = 0.6 + 0.4 * (yy - y0) / max(1, y1 - y0)
        image[inside] = np.stack([220 * shade[inside], 40 + 0 * shade[inside], 60 * shade[inside]], -1)
    return image.clip(0, 255).astype(np.uint8), [tuple(p) for p in people]
