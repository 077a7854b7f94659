"""The reference pre/post: the definition the graph and torch stages are tested against, in numpy.

Each resize is two dense matrix products in float64 with the weights of david_infer.resample (no
banding, no tricks): simple to read, slow on large photos (about a second at 4K on two cores). It
runs in production only where the graph stages cannot (no onnx or ONNX Runtime installed) or when
asked for (`stages="reference"`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import numpy as np

from ..inputs import Decoded
from ..resample import Geometry, back_weights, pre_weights, square_geometry, vit_weights
from . import Maps, ModelOutputs, PostOptions, Staged, Stages, finish_in_place, open_options


def separable(
    a: Any, wy: Any, wx: Any, eight_bit: bool, rows_first: bool = True, dot: Any = None, floor: Any = np.floor
) -> Any:
    """(H, W, C) -> (Y, X, C) by wy (Y, H) along the rows and wx (X, W) along the columns, rows
    first (or columns first); 8-bit data rounded to whole levels after each axis (half up, as
    Pillow). `dot(w, x, axis)` contracts w's columns with x's `axis` (default numpy's; the torch
    stages pass torch's, with torch.floor)."""
    dot = dot or (lambda w, x, axis: np.tensordot(w, x, axes=(1, axis)))

    def level(t: Any) -> Any:
        return floor(t + 0.5) if eight_bit else t

    if rows_first:
        return level(dot(wx, level(dot(wy, a, 0)), 1).swapaxes(0, 1))
    return level(dot(wy, level(dot(wx, a, 1)).swapaxes(0, 1), 0))


def resize_to_model(
    x: Any,
    eight_bit: bool,
    geometry: Geometry,
    pipeline: str,
    vit_size: Optional[int],
    matrix: Callable[..., Any] = lambda make, *args: make(*args),
    resize: Callable[..., Any] = separable,
) -> Tuple[Any, Any, float]:
    """The photo (H, W, 3) float64 BGR (0..255 when `eight_bit`) -> its square (R, R, 3), its ViT
    copy (V, V, 3) or None, and the scale that takes both to [0, 1]. `matrix(make, *args)` gives
    the weights make(*args) as `resize` (a `separable`) takes them: the torch stages' on the device."""
    if eight_bit and pipeline == "official":
        x, eight_bit = x / 255.0, False
    g, r = geometry, geometry.resolution
    target = max(r, vit_size or 0)

    def to_square(size: int) -> Any:  # the padded square, size x size
        wy = matrix(pre_weights, g.height, g.side, g.top, size, pipeline, target)
        wx = matrix(pre_weights, g.width, g.side, g.left, size, pipeline, target)
        return resize(x, wy, wx, eight_bit)

    square, vit = to_square(r), None
    if vit_size:
        if r >= vit_size or pipeline == "official":
            wv = matrix(vit_weights, r, vit_size, pipeline)
            vit = resize(square, wv, wv, eight_bit, rows_first=False)
        else:  # below the ViT size the copy comes from the photo itself, with its detail
            vit = to_square(vit_size)
    return square, vit, 1.0 / 255.0 if eight_bit else 1.0


def network_inputs(
    decoded: Decoded, geometry: Geometry, pipeline: str, vit_size: Optional[int]
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The model's image (3, R, R) and ViT copy (3, V, V), BGR float32 in [0, 1], for one image."""
    a = decoded.numpy()
    x = a.astype(np.float64)
    x = x[..., None].repeat(3, axis=2) if x.ndim == 2 else x
    if decoded.order == "rgb":
        x = x[..., ::-1]
    square, vit, scale = resize_to_model(x, a.dtype == np.uint8, geometry, pipeline, vit_size)
    return _chw(square, scale), None if vit is None else _chw(vit, scale)


def _chw(square: np.ndarray, scale: float) -> np.ndarray:
    return np.ascontiguousarray((square * scale).transpose(2, 0, 1), dtype=np.float32)


def resize_back(value: np.ndarray, geometry: Geometry, interpolation: str) -> np.ndarray:
    """A model output (C, R, R) -> (H, W) or (H, W, C) float32 at the image's size, unfinished
    ("auto" interpolation, which a runtime resolves by its pipeline, is bicubic here)."""
    interpolation = "bicubic" if interpolation == "auto" else interpolation
    r = value.shape[-1]
    g = geometry
    wy = back_weights(r, g.side, g.top, g.height, interpolation)
    wx = back_weights(r, g.side, g.left, g.width, interpolation)
    across = np.tensordot(value.astype(np.float64), wx, axes=(2, 1))  # (C, R, W)
    out = np.tensordot(wy, across, axes=(1, 1)).transpose(0, 2, 1)  # (H, W, C)
    out = np.ascontiguousarray(out, dtype=np.float32)
    return out[..., 0] if out.shape[2] == 1 else out


def finish_maps(outputs: ModelOutputs, geometry: Geometry, post: PostOptions) -> Maps:
    """Model outputs (task -> (C, R, R)) for one image -> its finished maps at its size."""
    maps = {task: resize_back(value, geometry, post.interpolation) for task, value in outputs.items()}
    for task, value in maps.items():
        finish_in_place(task, value, post)
    return open_options(maps, post)


class ReferenceStages(Stages):
    """The reference pre/post (see the module docstring)."""

    kind = "reference"

    def prepare(self, decoded: Decoded) -> Staged:
        h, w = decoded.size
        geometry = square_geometry(h, w, self.resolution_for(h, w))
        image, vit = network_inputs(decoded, geometry, self.options.pipeline, self.vit_size)
        return Staged(decoded.name, geometry, geometry.resolution, self.network_feeds(image, vit))

    def finish(self, staged: Staged, outputs: ModelOutputs) -> Maps:
        return finish_maps(outputs, staged.geometry, self.options.post)
