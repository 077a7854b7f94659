"""The resampling of the pre/post, written once as per-axis weight matrices (numpy, float64).

Every resize is separable, `out = Wy @ x @ Wx.T`, the photo's centred edge padding folded into the
matrices (the padded square is never built). The reference and torch stages multiply by these
matrices; the graph builder (david_infer.stages.builder) computes the same weights inside its
graphs; the parity tests hold them together. The two pipelines (`antialias`: Pillow's; `official`:
OpenCV's, as Microsoft's runtime) and the resize back: docs/prepost.md, "What is inside".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PIPELINES = ("antialias", "official")
#: how the model's outputs are resized back to the image
INTERPOLATIONS = ("bicubic", "bilinear", "official")
OFFICIAL_PYRAMID_FACTOR = 3  # pyrDown while both sides exceed 3 x the model resolution
#: box-reduce first while the square stays >= 3x the target: Pillow documents reducing_gap >= 3
#: as indistinguishable from fair resampling in most cases, and it is much faster
REDUCING_GAP = 3
PYRAMID_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)  # OpenCV pyrDown's kernel, / 16 per axis
#: pyramid levels a pre/post graph can take: squares up to 3 x R x 2**10 pixels a side
MAX_PYRAMID_LEVELS = 10


@dataclass(frozen=True)
class Geometry:
    """Where the image sits in its padded square, and the model resolution."""

    height: int
    width: int
    side: int  # padded square side, in image pixels
    top: int
    left: int
    resolution: int


def square_geometry(height: int, width: int, resolution: int) -> Geometry:
    """Centred square padding, as the official runtime: pad = diff // 2 before, the rest after."""
    side = max(height, width)
    return Geometry(height, width, side, (side - height) // 2, (side - width) // 2, resolution)


def dynamic_resolution(height: int, width: int, stride: int) -> int:
    """The padded square's side rounded to the nearest multiple of `stride` (at least `stride`)."""
    return max(stride, int(round(max(height, width) / stride)) * stride)


def reduction_factor(side: int, target: int) -> int:
    """The antialias pipeline's box reduction of a square of `side` made into `target` pixels."""
    return max(1, side // (REDUCING_GAP * target))


# --------------------------------------------------------------------------- filter families


def _keys(x: np.ndarray, a: float) -> np.ndarray:
    """The cubic convolution kernel (Pillow a = -0.5, OpenCV a = -0.75)."""
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.maximum(1.0 - np.abs(x), 0.0)


def pillow_coeffs(in_size: int, start: float, stop: float, out_size: int, kernel: str) -> np.ndarray:
    """(out_size, in_size) weights of Pillow's `resize(filter, box=(start, stop))` along one axis:
    centre = start + (o + 0.5) * scale, support widened by the scale when shrinking, weights
    renormalised over the pixels that exist."""
    support = 1.0 if kernel == "bilinear" else 2.0
    scale = (stop - start) / out_size
    filterscale = max(scale, 1.0)
    centers = start + (np.arange(out_size) + 0.5) * scale
    lo = np.clip(np.trunc(centers - support * filterscale + 0.5), 0, in_size).astype(np.int64)
    hi = np.clip(np.trunc(centers + support * filterscale + 0.5), 0, in_size).astype(np.int64)
    cols = np.arange(in_size)
    x = (cols[None, :] + 0.5 - centers[:, None]) / filterscale
    w = _triangle(x) if kernel == "bilinear" else _keys(x, -0.5)
    w = np.where((cols[None, :] >= lo[:, None]) & (cols[None, :] < hi[:, None]), w, 0.0)
    return w / w.sum(axis=1, keepdims=True)


def cv2_cubic_coeffs(in_size: int, out_full: int, offset: int, count: int) -> np.ndarray:
    """(count, in_size) weights of outputs offset .. offset + count - 1 of OpenCV's INTER_CUBIC
    resize of in_size to out_full pixels (replicated border): "resize to the padded square, then
    crop" without computing the cropped-off part."""
    fx = (np.arange(offset, offset + count) + 0.5) * (in_size / out_full) - 0.5
    sx = np.floor(fx)
    w = np.zeros((count, in_size))
    rows = np.arange(count)
    for k in range(-1, 3):  # taps sx - 1 .. sx + 2; outside the axis they read the edge pixel
        np.add.at(w, (rows, np.clip(sx.astype(np.int64) + k, 0, in_size - 1)), _keys(sx + k - fx, -0.75))
    return w


def cv2_linear_coeffs(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) weights of OpenCV's INTER_LINEAR resize (half-pixel centres, no
    antialiasing, the edge pixel beyond either end)."""
    fx = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    sx = np.floor(fx)
    f = fx - sx
    f[sx < 0] = 0.0
    sx = np.maximum(sx, 0)
    last = sx >= in_size - 1
    f[last], sx[last] = 0.0, in_size - 1
    w = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(w, (rows, sx.astype(np.int64)), 1.0 - f)
    np.add.at(w, (rows, np.minimum(sx + 1, in_size - 1).astype(np.int64)), f)
    return w


def fold_padding(w: np.ndarray, offset: int, n: int) -> np.ndarray:
    """(out, side) weights over the padded axis -> (out, n) over the image's pixels: virtual pixel v
    is image pixel clip(v - offset, 0, n - 1) (edge replication)."""
    folded = np.zeros((w.shape[0], n))
    np.add.at(folded.T, np.clip(np.arange(w.shape[1]) - offset, 0, n - 1), w.T)
    return folded


# ------------------------------------------------------------------------------ the pipelines


@lru_cache(maxsize=32)
def antialias_weights(n: int, side: int, offset: int, size: int, k: int) -> np.ndarray:
    """(size, n): the antialias pipeline along one axis of n image pixels at `offset` in the
    square: box reduction by k (the last box partial), then Pillow's bilinear filter to `size`."""
    reduced = -(-side // k)
    w = pillow_coeffs(reduced, 0.0, side / k, size, "bilinear")
    box = np.arange(side) // k
    counts = np.minimum(k, side - box * k)
    return _frozen(fold_padding(w[:, box] / counts, offset, n))


@lru_cache(maxsize=32)
def official_weights(n: int, side: int, offset: int, size: int) -> np.ndarray:
    """(size, n): the official pipeline along one axis of n image pixels at `offset` in the square:
    pyrDown while the square exceeds 3 x `size` (each level (len + 1) // 2 samples, reflect-101 at
    its own border), then INTER_LINEAR to `size`."""
    lengths = [side]
    while lengths[-1] > OFFICIAL_PYRAMID_FACTOR * size:
        lengths.append((lengths[-1] + 1) // 2)
    w = cv2_linear_coeffs(lengths[-1], size)
    taps = np.array(PYRAMID_TAPS) / 16.0
    for below in reversed(lengths[:-1]):
        out = np.zeros((size, below))
        for u, tap in enumerate(taps):  # sample s of the level above reads 2s + u - 2 below
            source = np.abs(2 * np.arange(w.shape[1]) + u - 2)
            source = np.where(source > below - 1, 2 * (below - 1) - source, source)
            np.add.at(out.T, source, tap * w.T)
        w = out
    return _frozen(fold_padding(w, offset, n))


def pre_weights(n: int, side: int, offset: int, size: int, pipeline: str, target: int) -> np.ndarray:
    """(size, n): the resize to the model along one axis by `pipeline` (the antialias box reduction
    sized for `target`, the larger of the model's resolution and the ViT copy's side)."""
    if pipeline == "official":
        return official_weights(n, side, offset, size)
    return antialias_weights(n, side, offset, size, reduction_factor(side, target))


def vit_weights(resolution: int, vit_size: int, pipeline: str) -> np.ndarray:
    """(vit, R): the ViT copy made from the model-resolution square (both axes alike)."""
    if pipeline == "official":
        return _frozen(cv2_linear_coeffs(resolution, vit_size))
    return antialias_weights(resolution, resolution, 0, vit_size, 1)


@lru_cache(maxsize=32)
def back_weights(r: int, side: int, offset: int, count: int, interpolation: str) -> np.ndarray:
    """(count, r): the resize back along one axis, from the model's r outputs to the image's
    `count` pixels at `offset` in the padded square of `side`."""
    if interpolation == "official":
        return _frozen(cv2_cubic_coeffs(r, side, offset, count))
    s = r / side
    return _frozen(pillow_coeffs(r, offset * s, (offset + count) * s, count, interpolation))


def _frozen(w: np.ndarray) -> np.ndarray:
    w.setflags(write=False)  # cached: shared between threads and calls
    return w
