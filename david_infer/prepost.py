"""Running a pre/post graph (`david-infer export --prepost`): the photo in, finished maps out.

Such a graph takes the image itself, uint8 (N, H, W, 3) in the channel order its manifest names,
and returns depth (N, H, W) (negated: larger = nearer), normal (N, H, W, 3) and foreground
(N, H, W) at the image's size (see docs/prepost.md). `DavidRuntime` recognises it from the
manifest's `"layout": "prepost"` and uses these helpers instead of its own pre/postprocessing;
only what the graph leaves open (depth direction and normalisation, the mask threshold) is done here.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from .errors import InputError, ModelError
from .inputs import Decoded
from .postprocess import PostOptions
from .preprocess import Prepared, square_geometry

LAYOUT = "prepost"
#: the graph's pipeline -> the runtime's name for the same steps, and its output interpolation
PIPELINES = {"default": ("antialias", "bicubic"), "official": ("official", "official")}
GRAPH_DEPTH_SIGN = -1


def graph_settings(section: Mapping[str, Any], where: str) -> Tuple[int, str, str, str]:
    """(resolution, runtime pipeline, interpolation, channel order) of a manifest's `prepost` section."""
    resolution, pipeline, order = section.get("resolution"), section.get("pipeline"), section.get("channel_order")
    if (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1
            or pipeline not in PIPELINES or order not in ("rgb", "bgr")):
        raise ModelError(f"{where}: the manifest's prepost section needs an integer resolution, pipeline "
                         f"'default' or 'official' and channel_order 'rgb' or 'bgr'; got {resolution!r}, "
                         f"{pipeline!r}, {order!r}")
    return (resolution,) + PIPELINES[pipeline] + (order,)


def prepare(decoded: Decoded, resolution: int, channel_order: str, max_side: Optional[int] = None) -> Prepared:
    """The graph's input for one image: (H, W, 3) uint8 in the graph's channel order. 16-bit and
    float images are rounded to 8 bits (the graph takes bytes)."""
    a = decoded.numpy()
    h, w = decoded.size
    if max_side is not None and max(h, w) > max_side:
        raise InputError(f"{decoded.name}: {w}x{h} has a side over {max_side}, the largest this pre/post graph "
                         "resamples; use the network file with DavidRuntime's own preprocessing")
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif decoded.order != channel_order:
        a = a[..., ::-1]
    return Prepared(np.ascontiguousarray(a), None, square_geometry(h, w, resolution))


def expected_shape(task: str, n: int, size: Tuple[int, int]) -> Tuple[int, ...]:
    return (n,) + tuple(size) + ((3,) if task == "normal" else ())


def finish(outputs: Mapping[str, np.ndarray], opts: PostOptions) -> Dict[str, np.ndarray]:
    """The graph's maps for one image with the options the graph leaves open applied."""
    maps: Dict[str, np.ndarray] = {}
    for task, value in outputs.items():
        out = np.array(value, dtype=np.float32)
        if task == "depth":
            if not opts.invert_depth:  # the graph returns the runtime's default, negated depth
                np.negative(out, out=out)
            if opts.normalize_depth:
                lo, hi = float(out.min()), float(out.max())
                out -= lo
                if hi > lo:
                    out *= np.float32(1.0 / (hi - lo))
        elif task == "foreground" and opts.foreground_threshold is not None:
            out = (out > opts.foreground_threshold).astype(np.float32)
        maps[task] = out
    return maps
