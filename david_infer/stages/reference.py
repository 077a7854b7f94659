"""The reference pre/post: the definition the graph and torch stages are tested against, in numpy.

Each resize is two dense matrix products in float64 with the weights of david_infer.resample (no
banding, no tricks): simple to read, slow on large photos (about a second at 4K on two cores). It
runs in production only where the graph stages cannot (no onnx or ONNX Runtime installed) or when
asked for (`stages="reference"`).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..inputs import Decoded
from ..resample import (
    Geometry,
    antialias_weights,
    back_weights,
    official_weights,
    reduction_factor,
    square_geometry,
    vit_weights,
)
from . import Maps, ModelOutputs, PostOptions, Staged, Stages, finish_in_place, open_options


def _separable(a: np.ndarray, wy: np.ndarray, wx: np.ndarray, eight_bit: bool, rows_first: bool = True) -> np.ndarray:
    """(H, W, C) -> (Y, X, C) by wy (Y, H) along the rows and wx (X, W) along the columns, rows
    first (or columns first); 8-bit data rounded to whole levels after each axis (half up, as
    Pillow)."""

    def level(t: np.ndarray) -> np.ndarray:
        return np.floor(t + 0.5) if eight_bit else t

    if rows_first:
        return level(np.tensordot(wx, level(np.tensordot(wy, a, axes=(1, 0))), axes=(1, 1)).transpose(1, 0, 2))
    return level(np.tensordot(wy, level(np.tensordot(wx, a, axes=(1, 1))).transpose(1, 0, 2), axes=(1, 0)))


def network_inputs(
    decoded: Decoded, geometry: Geometry, pipeline: str, vit_size: Optional[int]
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The model's image (3, R, R) and ViT copy (3, V, V), BGR float32 in [0, 1], for one image."""
    a = decoded.numpy()
    eight_bit = a.dtype == np.uint8
    x = a.astype(np.float64)
    x = x[..., None].repeat(3, axis=2) if x.ndim == 2 else x
    if decoded.order == "rgb":
        x = x[..., ::-1]
    if eight_bit and pipeline == "official":
        x, eight_bit = x / 255.0, False
    r = geometry.resolution
    target = max(r, vit_size or 0)
    square = _resize(x, geometry, r, pipeline, target, eight_bit)
    vit = None
    if vit_size:
        if r >= vit_size or pipeline == "official":
            wv = vit_weights(r, vit_size, pipeline)
            vit = _separable(square, wv, wv, eight_bit, rows_first=False)
        else:  # below the ViT size the copy comes from the photo itself, with its detail
            vit = _resize(x, geometry, vit_size, pipeline, target, eight_bit)
    scale = 1.0 / 255.0 if eight_bit else 1.0
    return _chw(square, scale), None if vit is None else _chw(vit, scale)


def _resize(x: np.ndarray, geometry: Geometry, size: int, pipeline: str, target: int, eight_bit: bool) -> np.ndarray:
    """The photo (H, W, 3) padded to its square and resized to size x size by `pipeline` (the
    antialias box reduction sized for `target`, shared by the ViT copy)."""
    h, w, side = geometry.height, geometry.width, geometry.side
    if pipeline == "official":
        wy, wx = official_weights(h, side, geometry.top, size), official_weights(w, side, geometry.left, size)
    else:
        k = reduction_factor(side, target)
        wy, wx = antialias_weights(h, side, geometry.top, size, k), antialias_weights(w, side, geometry.left, size, k)
    return _separable(x, wy, wx, eight_bit)


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
        contract = self.contract
        vit_size = contract.vit_size if contract.vit_input is not None else None
        image, vit = network_inputs(decoded, geometry, self.options.pipeline, vit_size)
        feeds = {contract.image_input: image}
        if contract.vit_input is not None and vit is not None:
            feeds[contract.vit_input] = vit
        return Staged(decoded.name, geometry, geometry.resolution, feeds)

    def finish(self, staged: Staged, outputs: ModelOutputs) -> Maps:
        return finish_maps(outputs, staged.geometry, self.options.post)
