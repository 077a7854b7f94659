"""Separable resampling of small model outputs up to large images, as banded matrix products.

The weights reproduce Pillow's `Image.resize(size, filter, box=...)` (same kernels, support scaled
when shrinking, weights renormalised at the borders), so results equal Pillow's to float32
rounding, but the work is two matrix products per map instead of Pillow's double-precision loops,
and channels stay interleaved (normals come out as (H, W, 3) directly).

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


@lru_cache(maxsize=64)
def weights(in_size: int, start: float, stop: float, out_size: int, kernel: str) -> np.ndarray:
    """(out_size, in_size) float32 resampling matrix of source span [start, stop) (Pillow's
    precompute_coeffs: centre = start + (i + 0.5) * scale, support widened when shrinking)."""
    fn, support = KERNELS[kernel]
    scale = (stop - start) / out_size
    filterscale = max(scale, 1.0)
    reach = support * filterscale
    centers = start + (np.arange(out_size) + 0.5) * scale
    lo = np.maximum(np.trunc(centers - reach + 0.5), 0)[:, None]
    hi = np.minimum(np.trunc(centers + reach + 0.5), in_size)[:, None]
    cols = np.arange(in_size)[None, :]
    w = fn((cols - centers[:, None] + 0.5) / filterscale)
    w[(cols < lo) | (cols >= hi)] = 0.0
    w /= w.sum(axis=1, keepdims=True)
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


def banded_matmul(
    w: np.ndarray, a: np.ndarray, out: np.ndarray, bands: List[Tuple[int, int, int, int]],
    finish: Optional[Callable[[np.ndarray], None]] = None,
) -> None:
    """out[o0:o1] = w[o0:o1, i0:i1] @ a[i0:i1] for each band, in single-thread-sized column
    blocks; `finish(out[o0:o1])` runs on each band while it is still in cache."""
    n = a.shape[1]
    for o0, o1, i0, i1 in bands:
        wb = w[o0:o1, i0:i1]
        step = max(256, _BLAS_SINGLE_THREAD_MNK // max(1, (o1 - o0) * (i1 - i0)))
        for c0 in range(0, n, step):
            np.matmul(wb, a[i0:i1, c0:c0 + step], out=out[o0:o1, c0:c0 + step])
        if finish is not None:
            finish(out[o0:o1])


def _split(items: List, parts: int) -> List[List]:
    size = -(-len(items) // parts)
    return [items[i:i + size] for i in range(0, len(items), size)]


def resize_box(
    x: np.ndarray, box: Tuple[float, float, float, float], size: Tuple[int, int], kernel: str = "bicubic",
    finish: Optional[Callable[[np.ndarray], None]] = None, pool=None, band_rows: int = 16,
) -> np.ndarray:
    """Resample the region `box` = (x0, y0, x1, y1) of `x` (C, R, R') to `size` = (H, W).

    Returns (H, W) for one channel, (H, W, C) interleaved otherwise. `finish(rows)` is applied
    in place to each block of output rows, viewed as (rows, W * C)."""
    c, rh, rw = x.shape
    h, w = size
    wy = weights(rh, float(box[1]), float(box[3]), h, kernel)
    wx = weights(rw, float(box[0]), float(box[2]), w, kernel)
    ybands = _bands(wy, band_rows)
    y0, y1 = ybands[0][2], max(b[3] for b in ybands)
    xbands = _bands(wx, 64)
    # Horizontal pass on the few source rows needed: (W, C * rows) = wx @ (R', C * rows).
    src = np.ascontiguousarray(x[:, y0:y1, :].transpose(2, 0, 1).reshape(rw, c * (y1 - y0)))
    horiz = np.empty((w, c * (y1 - y0)), dtype=np.float32)
    banded_matmul(wx, src, horiz, xbands)
    # Interleave: (rows, W * C), row-major, ready for contiguous row blocks.
    mid = np.ascontiguousarray(horiz.reshape(w, c, y1 - y0).transpose(2, 0, 1).reshape(y1 - y0, w * c))
    ybands = [(o0, o1, i0 - y0, i1 - y0) for o0, o1, i0, i1 in ybands]
    out = np.empty((h, w * c), dtype=np.float32)
    wy_local = wy[:, y0:y1]
    if pool is not None and len(ybands) > 1:
        parts = _split(ybands, getattr(pool, "_max_workers", 2))
        list(pool.map(lambda part: banded_matmul(wy_local, mid, out, part, finish), parts))
    else:
        banded_matmul(wy_local, mid, out, ybands, finish)
    return out.reshape(h, w) if c == 1 else out.reshape(h, w, c)
