"""Separable resampling of small model outputs up to large images, as banded matrix products.

Two weight families: `weights` reproduces Pillow's `Image.resize(size, filter, box=...)` (same
kernels, support scaled when shrinking, weights renormalised at the borders) and `cv2_weights`
OpenCV's `cv2.resize(..., INTER_CUBIC)` (a = -0.75, four taps, replicated border), which the
official runtime uses. Results equal those libraries' to float32 rounding, but the work is two
matrix products per map instead of per-pixel loops, and channels stay interleaved (normals come
out as (H, W, 3) directly).

The products are cut into blocks small enough that OpenBLAS runs each on one thread (it spins up
its own threads above ~2.6e5 multiply-adds, which only hurts on a busy machine); our own worker
pool spreads the blocks instead.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, List, Optional, Tuple

import numpy as np

_BLAS_SINGLE_THREAD_MNK = 262144  # OpenBLAS: products below 65536 * 4 multiply-adds run on one thread


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    return np.maximum(1.0 - np.abs(x), 0.0)


KERNELS = {"bicubic": (_bicubic, 2.0), "bilinear": (_bilinear, 1.0)}


@lru_cache(maxsize=16)  # a few sizes (video, one camera) stay cached; each 4K matrix is ~8 MB
def weights(in_size: int, start: float, stop: float, out_size: int, kernel: str) -> np.ndarray:
    """(out_size, in_size) float32 resampling matrix of source span [start, stop) (Pillow's
    precompute_coeffs: centre = start + (i + 0.5) * scale, support widened when shrinking).
    Only the taps inside each output's window are evaluated."""
    dense = pillow_coeffs(in_size, start, stop, out_size, kernel).astype(np.float32)
    dense.setflags(write=False)
    return dense


def pillow_coeffs(in_size: int, start: float, stop: float, out_size: int, kernel: str) -> np.ndarray:
    """`weights` in float64, as Pillow computes them before its 8-bit fixed-point rounding."""
    fn, support = KERNELS[kernel]
    scale = (stop - start) / out_size
    filterscale = max(scale, 1.0)
    reach = support * filterscale
    centers = start + (np.arange(out_size) + 0.5) * scale
    lo = np.maximum(np.trunc(centers - reach + 0.5), 0).astype(np.int64)
    hi = np.minimum(np.trunc(centers + reach + 0.5), in_size).astype(np.int64)
    cols = lo[:, None] + np.arange(int((hi - lo).max()))[None, :]
    valid = cols < hi[:, None]
    w = np.where(valid, fn((cols - centers[:, None] + 0.5) / filterscale), 0.0)
    w /= w.sum(axis=1, keepdims=True)
    dense = np.zeros((out_size, in_size))
    rows = np.broadcast_to(np.arange(out_size)[:, None], cols.shape)
    dense[rows[valid], cols[valid]] = w[valid]
    return dense


@lru_cache(maxsize=16)
def cv2_weights(in_size: int, out_full: int, offset: int, count: int, a: float = -0.75) -> np.ndarray:
    """(count, in_size) float32 weights of output pixels offset .. offset + count - 1 of
    cv2.resize(src of in_size, out_full, INTER_CUBIC) along one axis: "resize to the full padded
    square, then crop" without computing the cropped-off part."""
    scale = in_size / out_full
    fx = (np.arange(offset, offset + count) + 0.5) * scale - 0.5
    sx = np.floor(fx)
    x = fx - sx
    # OpenCV's interpolateCubic coefficients for taps sx-1 .. sx+2.
    w0 = ((a * (x + 1) - 5 * a) * (x + 1) + 8 * a) * (x + 1) - 4 * a
    w1 = ((a + 2) * x - (a + 3)) * x * x + 1
    w2 = ((a + 2) * (1 - x) - (a + 3)) * (1 - x) * (1 - x) + 1
    taps = np.stack([w0, w1, w2, 1.0 - w0 - w1 - w2], axis=1)
    w = np.zeros((count, in_size))
    rows = np.arange(count)
    for k in range(4):  # out-of-range taps read the edge pixel (BORDER_REPLICATE)
        np.add.at(w, (rows, np.clip(sx.astype(np.int64) - 1 + k, 0, in_size - 1)), taps[:, k])
    w = w.astype(np.float32)
    w.setflags(write=False)
    return w


def _bands(w: np.ndarray, rows: int) -> List[Tuple[int, int, int, int]]:
    """(o0, o1, i0, i1): output rows o0:o1 read only input rows i0:i1."""
    out = []
    nonzero = w != 0
    for o0 in range(0, w.shape[0], rows):
        o1 = min(o0 + rows, w.shape[0])
        cols = np.flatnonzero(nonzero[o0:o1].any(axis=0))
        out.append((o0, o1, int(cols[0]), int(cols[-1]) + 1))
    return out


def _matmul_blocks(wb: np.ndarray, a: np.ndarray, out: np.ndarray) -> None:
    """out = wb @ a in column blocks small enough for OpenBLAS to stay on one thread."""
    step = max(256, _BLAS_SINGLE_THREAD_MNK // max(1, wb.shape[0] * wb.shape[1]))
    for c0 in range(0, a.shape[1], step):
        np.matmul(wb, a[:, c0:c0 + step], out=out[:, c0:c0 + step])


def banded_matmul(
    w: np.ndarray, a: np.ndarray, out: np.ndarray, bands: List[Tuple[int, int, int, int]],
    finish: Optional[Callable[[np.ndarray], None]] = None,
) -> None:
    """out[o0:o1] = w[o0:o1, i0:i1] @ a[i0:i1] for each band; `finish(out[o0:o1])` runs on each
    band while it is still in cache."""
    for o0, o1, i0, i1 in bands:
        _matmul_blocks(w[o0:o1, i0:i1], a[i0:i1], out[o0:o1])
        if finish is not None:
            finish(out[o0:o1])


def _unit_bands(w: np.ndarray, planes: np.ndarray, out: np.ndarray, bands: List[Tuple[int, int, int, int]],
                eps: float) -> None:
    """Three planar row blocks per band, normalised to unit length in cache, written interleaved
    into out (H, W, 3). Planar maths keeps numpy's inner loops long and contiguous."""
    width = planes.shape[2]
    rows = max(o1 - o0 for o0, o1, _, _ in bands)
    xyz = np.empty((3, rows, width), dtype=np.float32)
    norm = np.empty((rows, width), dtype=np.float32)
    tmp = np.empty((rows, width), dtype=np.float32)
    for o0, o1, i0, i1 in bands:
        r = o1 - o0
        for c in range(3):
            _matmul_blocks(w[o0:o1, i0:i1], planes[c, i0:i1], xyz[c, :r])
        x, y, z, n, t = xyz[0, :r], xyz[1, :r], xyz[2, :r], norm[:r], tmp[:r]
        np.multiply(x, x, out=n)
        np.multiply(y, y, out=t)
        n += t
        np.multiply(z, z, out=t)
        n += t
        np.sqrt(n, out=n)
        np.maximum(n, eps, out=n)
        np.divide(1.0, n, out=n)
        block = out[o0:o1]
        for c in range(3):
            np.multiply(xyz[c, :r], n, out=block[..., c])


def _split(items: List, parts: int) -> List[List]:
    size = -(-len(items) // parts)
    return [items[i:i + size] for i in range(0, len(items), size)]


def resize_box(
    x: np.ndarray, box: Tuple[float, float, float, float], size: Tuple[int, int], kernel: str = "bicubic",
    finish: Optional[Callable[[np.ndarray], None]] = None, pool=None, unit_eps: Optional[float] = None,
) -> np.ndarray:
    """Resample the region `box` = (x0, y0, x1, y1) of `x` (C, R, R') to `size` = (H, W) with
    Pillow's filter `kernel`. See `resize_separable` for the result and the other arguments."""
    c, rh, rw = x.shape
    h, w = size
    wy = weights(rh, float(box[1]), float(box[3]), h, kernel)
    wx = weights(rw, float(box[0]), float(box[2]), w, kernel)
    return resize_separable(x, wy, wx, finish, pool, unit_eps)


def resize_separable(
    x: np.ndarray, wy: np.ndarray, wx: np.ndarray, finish: Optional[Callable[[np.ndarray], None]] = None,
    pool=None, unit_eps: Optional[float] = None, band_rows: int = 16,
) -> np.ndarray:
    """out = wy @ x[c] @ wx.T for each channel of `x` (C, R, R'), as banded products.

    Returns (H, W) for one channel, (H, W, C) interleaved otherwise. `finish(rows)` is applied
    in place to each block of output rows, viewed as (rows, W * C). With `unit_eps` (three
    channels) every output vector is divided by max(its length, unit_eps) instead."""
    c, rh, rw = x.shape
    h, w = wy.shape[0], wx.shape[0]
    ybands = _bands(wy, band_rows)
    y0, y1 = ybands[0][2], max(b[3] for b in ybands)
    xbands = _bands(wx, 64)
    # Horizontal pass on the few source rows needed: (W, C * rows) = wx @ (R', C * rows).
    src = np.ascontiguousarray(x[:, y0:y1, :].transpose(2, 0, 1).reshape(rw, c * (y1 - y0)))
    horiz = np.empty((w, c * (y1 - y0)), dtype=np.float32)
    banded_matmul(wx, src, horiz, xbands)
    ybands = [(o0, o1, i0 - y0, i1 - y0) for o0, o1, i0, i1 in ybands]
    wy_local = wy[:, y0:y1]
    parts = _split(ybands, getattr(pool, "_max_workers", 1)) if pool is not None else [ybands]
    if unit_eps is not None and c == 3:
        planes = np.ascontiguousarray(horiz.reshape(w, c, y1 - y0).transpose(1, 2, 0))  # (C, rows, W)
        out = np.empty((h, w, 3), dtype=np.float32)
        _run_parts(pool, parts, lambda part: _unit_bands(wy_local, planes, out, part, unit_eps))
        return out
    # Interleave: (rows, W * C), row-major, ready for contiguous row blocks.
    mid = np.ascontiguousarray(horiz.reshape(w, c, y1 - y0).transpose(2, 0, 1).reshape(y1 - y0, w * c))
    out = np.empty((h, w * c), dtype=np.float32)
    _run_parts(pool, parts, lambda part: banded_matmul(wy_local, mid, out, part, finish))
    return out.reshape(h, w) if c == 1 else out.reshape(h, w, c)


def _run_parts(pool, parts: List, fn: Callable) -> None:
    if pool is not None and len(parts) > 1:
        list(pool.map(fn, parts))
    else:
        for part in parts:
            fn(part)
