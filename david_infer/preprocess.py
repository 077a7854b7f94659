"""Preprocessing: pad to a centred square by edge replication, resize, BGR float32 CHW.

Two pipelines, both equivalent to "pad the image to a square, then resample the square":

* `antialias` (our dynamic graphs): Pillow's antialiased bilinear resampling. The padded square is
  never built at full size: resampling is separable and edge padding commutes with resampling
  along the other axis, so we resample the long axis of the unpadded image, pad the (now small)
  short axis, and resample that. The result equals Pillow resizing the full padded square with
  `reducing_gap=3` (a box reduction by an integer factor first) up to 8-bit rounding between the
  passes (at most one grey level). The 384 ViT copy is shrunk from the model-resolution square.
* `official` (the released fixed-512 files): the official runtime's steps. While both sides of the
  square exceed 3 x 512 it is halved by a Gaussian pyramid step (OpenCV `pyrDown`: 5-tap
  [1 4 6 4 1] / 16 kernel, reflect-101 border, even samples), then resized bilinear without
  antialiasing (OpenCV `INTER_LINEAR`) to 512. Here the square is kept virtual: an axis is a
  compact array plus an offset, `virtual[v] = base[clip(v - offset)]`, and rows that are pure
  padding are never materialised. 8-bit data is filtered in integers (uint16 accumulation, one
  rounding per level, as OpenCV does for 8-bit images).

8-bit images stay 8-bit until they are small; float32 appears only at the model resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from .config import DEFAULT_RESOLUTION
from .inputs import Decoded

PIPELINES = ("antialias", "official")
OFFICIAL_PYRAMID_FACTOR = 3  # halve while both sides > 3 x the model resolution (official runtime)
# Box-reduce by an integer factor first while the image stays >= 3x the target: Pillow documents
# reducing_gap >= 3 as indistinguishable from fair resampling in most cases, and it is much faster.
REDUCING_GAP = 3.0


@dataclass(frozen=True)
class Geometry:
    """Where the image sits in the padded square, and the model resolution."""

    height: int
    width: int
    side: int  # padded square side, in image pixels
    top: int
    left: int
    resolution: int

    def crop_box(self) -> Tuple[float, float, float, float]:
        """The image's (x0, y0, x1, y1) in model-output pixels."""
        s = self.resolution / self.side
        return (self.left * s, self.top * s, (self.left + self.width) * s, (self.top + self.height) * s)


@dataclass
class Prepared:
    """Model inputs for one image: BGR float32 (3, R, R) in [0, 1], and the ViT copy if wanted."""

    image: np.ndarray
    image_384: Optional[np.ndarray]
    geometry: Geometry


def square_geometry(height: int, width: int, resolution: int) -> Geometry:
    """Centred square padding: pad = diff // 2 before, the rest after."""
    side = max(height, width)
    return Geometry(height, width, side, (side - height) // 2, (side - width) // 2, resolution)


def dynamic_resolution(height: int, width: int, stride: int) -> int:
    """The padded square's side rounded to the nearest multiple of `stride` (at least `stride`)."""
    return max(stride, int(round(max(height, width) / stride)) * stride)


# ----------------------------------------------------------------------------- antialias pipeline


def _edge_pad(img: Image.Image, axis: int, before: int, after: int) -> Image.Image:
    """Replicate the first/last rows (axis 0) or columns (axis 1) of a PIL image."""
    if before == 0 and after == 0:
        return img
    a = np.asarray(img)
    widths = [(0, 0)] * a.ndim
    widths[axis] = (before, after)
    return Image.fromarray(np.pad(a, widths, mode="edge"))


def reduce_long_axis(img: Image.Image, geometry: Geometry, size: int) -> Tuple[Image.Image, float]:
    """Box-reduce the long axis by an integer factor k while it stays >= REDUCING_GAP x `size`
    (Pillow's `reducing_gap` idea, done once for every target size). Returns (image, k)."""
    long_side = max(geometry.width, geometry.height)
    k = int(long_side / (REDUCING_GAP * size))
    if k < 2:
        return img, 1.0
    return img.reduce((k, 1) if geometry.width >= geometry.height else (1, k)), float(k)


def square_resize(img: Image.Image, geometry: Geometry, size: int, reduced: float = 1.0) -> Image.Image:
    """`img` padded to `geometry`'s square and resized to size x size (Pillow bilinear,
    antialiased), without materialising the full-resolution square. `img` may have its long axis
    box-reduced by `reduced` (see reduce_long_axis)."""
    w, h, side = geometry.width, geometry.height, geometry.side
    resample = Image.Resampling.BILINEAR
    if w >= h:  # landscape or square: the long axis is x, padding goes on y
        box = (0.0, 0.0, w / reduced, float(h))
        a = img if img.size == (size, h) else img.resize((size, h), resample, box=box)
        a = _edge_pad(a, 0, geometry.top, side - h - geometry.top)
    else:
        box = (0.0, 0.0, float(w), h / reduced)
        a = img if img.size == (w, size) else img.resize((w, size), resample, box=box)
        a = _edge_pad(a, 1, geometry.left, side - w - geometry.left)
    return a if a.size == (size, size) else a.resize((size, size), resample, reducing_gap=REDUCING_GAP)


def _to_chw_bgr(planes: List[np.ndarray], order: str) -> np.ndarray:
    """Resized planes ((S, S, 3) / (S, S) uint8, or float32 channels in `order`) -> BGR (3, S, S)."""
    if len(planes) == 1:
        a = planes[0]
        chw = np.stack([a] * 3) if a.ndim == 2 else a.transpose(2, 0, 1)
    else:
        chw = np.stack(planes)
    if order == "rgb":
        chw = chw[::-1]
    if chw.dtype == np.uint8:
        return np.divide(chw, np.float32(255.0), dtype=np.float32)
    return np.ascontiguousarray(chw, dtype=np.float32)


def _map(pool, fn, items: list) -> list:
    return list(pool.map(fn, items)) if pool is not None and len(items) > 1 else [fn(i) for i in items]


def antialias_prepare(decoded: Decoded, resolution: int, vit_size: Optional[int], pool=None) -> Prepared:
    """Model inputs through the antialias pipeline; `pool` (an executor) parallelises the resizes.

    The ViT copy is the model-resolution square shrunk to vit_size when the resolution is at least
    that (one small resize instead of another pass over the full image); otherwise it is resized
    from the image itself so it keeps the detail the low resolution would lose."""
    h, w = decoded.size
    geometry = square_geometry(h, w, resolution)
    target = max(resolution, vit_size or 0)
    planes = [reduce_long_axis(p, geometry, target) for p in decoded.pil_planes()]
    squares = _map(pool, lambda job: square_resize(job[0], geometry, resolution, job[1]), planes)
    image = _to_chw_bgr([np.asarray(s) for s in squares], decoded.order)
    if not vit_size:
        return Prepared(image, None, geometry)
    if resolution >= vit_size:
        vit = [s.resize((vit_size, vit_size), Image.Resampling.BILINEAR) for s in squares]
    else:
        vit = _map(pool, lambda job: square_resize(job[0], geometry, vit_size, job[1]), planes)
    return Prepared(image, _to_chw_bgr([np.asarray(v) for v in vit], decoded.order), geometry)


# ------------------------------------------------------------------------------ official pipeline


@dataclass
class _VirtualAxis:
    """A padded axis kept compact: virtual index v reads base index clip(v - offset, 0, n - 1)."""

    offset: int
    length: int

    def base_index(self, v: np.ndarray, n: int) -> np.ndarray:
        return np.clip(v - self.offset, 0, n - 1)


def _reflect101(v: np.ndarray, length: int) -> np.ndarray:
    """OpenCV BORDER_REFLECT_101 (gfedcb|abcdefgh|gfedcba) for indices at most length-1 outside."""
    if length == 1:
        return np.zeros_like(v)
    v = np.where(v < 0, -v, v)
    return np.where(v >= length, 2 * (length - 1) - v, v)


def _along(axis: int, ndim: int, index: slice) -> tuple:
    key = [slice(None)] * ndim
    key[axis] = index
    return tuple(key)


def _gather(a: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    """np.take(a, index, axis) as a concatenation of slices: `index` here is a long run of
    consecutive indices with a few reflected or clipped ones at the ends, and copying slices is
    much faster than an element-wise gather along the last axis."""
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    runs = np.split(index, breaks)
    if len(runs) > 16:  # not the shape this is for
        return np.take(a, index, axis=axis)
    return np.concatenate([a[_along(axis, a.ndim, slice(int(r[0]), int(r[-1]) + 1))] for r in runs], axis=axis)


def _pyr_down_axis(a: np.ndarray, axis: int, ax: _VirtualAxis) -> Tuple[np.ndarray, _VirtualAxis]:
    """One unnormalised pyrDown pass ([1 4 6 4 1], weights sum to 16) along `axis`.

    Output rows whose five taps all read the first (last) base row equal that row times 16: one
    of each is kept and the new virtual axis points at it. The rows in between are computed from
    one gathered strip with strided slices (no per-tap gathers).
    """
    n = a.shape[axis]
    out_len = (ax.length + 1) // 2
    j = np.arange(out_len)
    taps = np.stack([ax.base_index(_reflect101(2 * j + k - 2, ax.length), n) for k in range(5)])
    head = np.flatnonzero(~(taps == 0).all(axis=0))
    tail = np.flatnonzero(~(taps == n - 1).all(axis=0))
    first = int(head[0]) if head.size else out_len
    last = int(tail[-1]) if tail.size else -1
    m = max(last - first + 1, 0)
    lead, trail = int(first > 0), int(last < out_len - 1)
    acc = np.uint16 if a.dtype == np.uint8 or a.dtype == np.uint16 else np.float32
    shape = list(a.shape)
    shape[axis] = lead + m + trail
    out = np.empty(shape, dtype=acc)
    if lead:
        out[_along(axis, a.ndim, slice(0, 1))] = np.take(a, [0], axis=axis).astype(acc) * acc(16)
    if trail:
        out[_along(axis, a.ndim, slice(-1, None))] = np.take(a, [n - 1], axis=axis).astype(acc) * acc(16)
    if m:
        v = np.arange(2 * first - 2, 2 * last + 3)
        strip = _gather(a, ax.base_index(_reflect101(v, ax.length), n), axis).astype(acc, copy=False)

        def tap(k: int) -> np.ndarray:
            return strip[_along(axis, a.ndim, slice(k, k + 2 * m - 1, 2))]

        core = out[_along(axis, a.ndim, slice(lead, lead + m))]
        np.add(tap(0), tap(4), out=core)
        tmp = np.add(tap(1), tap(3))
        tmp *= acc(4)
        core += tmp
        np.multiply(tap(2), acc(6), out=tmp)
        core += tmp
    return out, _VirtualAxis(max(first - 1, 0), out_len)


def _pyr_down(a: np.ndarray, axes: List[_VirtualAxis], channels_last: bool) -> Tuple[np.ndarray, List[_VirtualAxis]]:
    """cv2.pyrDown on the virtual square: rows, then columns, one rounding at the end.

    `a` is (H, W, C) when channels_last, else planar (C, H, W); the result is always planar, so
    the column pass (and every later level) runs numpy loops along long rows, not along C = 3.
    """
    was_uint8 = a.dtype == np.uint8
    a, ax0 = _pyr_down_axis(a, 0 if channels_last else 1, axes[0])
    if channels_last:
        a = np.ascontiguousarray(a.transpose(2, 0, 1))
    a, ax1 = _pyr_down_axis(a, 2, axes[1])
    if was_uint8:  # 256 * 255 + 128 still fits in uint16
        a += np.uint16(128)
        a >>= np.uint16(8)
        a = a.astype(np.uint8)
    else:
        a = a * np.float32(1.0 / 256.0)
    return a, [ax0, ax1]


def _linear_taps(ax: _VirtualAxis, n: int, size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cv2.resize INTER_LINEAR source indices and weights (half-pixel centres, no antialiasing)."""
    scale = ax.length / size
    fx = (np.arange(size) + 0.5) * scale - 0.5
    sx = np.floor(fx).astype(np.int64)
    f = (fx - sx).astype(np.float32)
    f[sx < 0] = 0.0
    sx = np.maximum(sx, 0)
    top = sx >= ax.length - 1
    f[top] = 0.0
    sx[top] = ax.length - 1
    i1 = np.minimum(sx + 1, ax.length - 1)
    return ax.base_index(sx, n), ax.base_index(i1, n), f


def _linear_resize(a: np.ndarray, axes: List[_VirtualAxis], size: int, first_axis: int = 0) -> np.ndarray:
    """Bilinear (OpenCV INTER_LINEAR) resize of the virtual square to size x size, float32; the
    spatial axes of `a` are first_axis and first_axis + 1."""
    for axis, ax in enumerate(axes, start=first_axis):
        i0, i1, f = _linear_taps(ax, a.shape[axis], size)
        shape = [1] * a.ndim
        shape[axis] = size
        f = f.reshape(shape)
        a0 = np.take(a, i0, axis=axis).astype(np.float32, copy=False)
        a1 = np.take(a, i1, axis=axis).astype(np.float32, copy=False)
        a = a0 + (a1 - a0) * f
    return a


def linear_resize_chw(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (half-pixel, no antialiasing) resize of a (3, R, R) float32 image to size x size,
    which is what a graph without a ViT input does inside (the official layout's 512 -> 384)."""
    side = image.shape[-1]
    out = _linear_resize(image, [_VirtualAxis(0, side), _VirtualAxis(0, side)], size, first_axis=1)
    return np.ascontiguousarray(out, dtype=np.float32)


def official_prepare(decoded: Decoded, resolution: int = DEFAULT_RESOLUTION) -> Prepared:
    """Model input for a released fixed-size file, following the official runtime's steps."""
    a = decoded.numpy()
    channels_last = a.ndim == 3
    if not channels_last:
        a = a[None]  # gray: planar with one channel
    h, w = decoded.size
    geometry = square_geometry(h, w, resolution)
    axes = [_VirtualAxis(geometry.top, geometry.side), _VirtualAxis(geometry.left, geometry.side)]
    limit = OFFICIAL_PYRAMID_FACTOR * resolution
    while axes[0].length > limit and axes[1].length > limit:
        a, axes = _pyr_down(a, axes, channels_last)
        channels_last = False
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / np.float32(255.0)
    resized = _linear_resize(a, axes, resolution, first_axis=0 if channels_last else 1)
    planes = [resized[..., c] for c in range(3)] if channels_last else list(resized)
    image = _to_chw_bgr(planes, decoded.order)
    return Prepared(image, None, geometry)
