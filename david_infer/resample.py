"""Separable resampling of small model outputs up to large images, as banded matrix products.

Two weight families: `weights` reproduces Pillow's `Image.resize(size, filter, box=...)` (same
kernels, support scaled when shrinking, weights renormalised at the borders) and `cv2_weights`
OpenCV's `cv2.resize(..., INTER_CUBIC)` (a = -0.75, four taps, replicated border), which the
official runtime uses. Results equal those libraries' to float32 rounding, but the work is two
matrix products per map instead of per-pixel loops, and channels stay interleaved (normals come
out as (H, W, 3) directly).

The products are not BLAS calls: a BLAS library picks its blocking and kernels by its thread
count (OpenBLAS goes multi-threaded above ~2.6e5 multiply-adds), which changes the rounding, so
the same image would give maps differing by an ulp under another OMP_NUM_THREADS (a Ray worker
has 1). Each output row is instead the sum of its source rows in ascending order, one
elementwise multiply and add per source row over a block of output rows (`band_product`):
elementwise float32 operations round each element alone, so the result is the same bits whatever
the BLAS threads, `threads`, batch size or band split (see docs/determinism.md). Our own worker
pool spreads the blocks.
"""
from __future__ import annotations

import threading
from functools import lru_cache
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

_BLOCK_FLOATS = 1 << 16  # elements of one output block (256 KB): the running sums stay in L2 cache


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


_BAND_LOCK = threading.Lock()
_BAND_CACHE: Dict[Tuple[int, int], Tuple[np.ndarray, List[Tuple[int, int, int, int]]]] = {}


def _cached_bands(w: np.ndarray, most: int) -> List[Tuple[int, int, int, int]]:
    """`_bands(w, most)`, remembered for the last few weight matrices (the entry holds `w`, so its
    id cannot name another array meanwhile)."""
    key = (id(w), most)
    with _BAND_LOCK:
        hit = _BAND_CACHE.get(key)
    if hit is not None and hit[0] is w:
        return hit[1]
    bands = _bands(w, most)
    with _BAND_LOCK:
        if len(_BAND_CACHE) >= 64:
            del _BAND_CACHE[next(iter(_BAND_CACHE))]
        _BAND_CACHE[key] = (w, bands)
    return bands


def _bands(w: np.ndarray, most: int) -> List[Tuple[int, int, int, int]]:
    """(o0, o1, i0, i1): output rows o0:o1 read only input rows i0:i1. A band grows (up to `most`
    rows) while it reads at most half again as many input rows as one row has taps, so few of
    the products `band_product` computes are with zero weights."""
    nonzero = w != 0
    lo = nonzero.argmax(axis=1)
    hi = w.shape[1] - nonzero[:, ::-1].argmax(axis=1)
    span = max(1, int(1.5 * (hi - lo).max()))
    out = []
    o0 = 0
    while o0 < w.shape[0]:
        o1, i0, i1 = o0 + 1, int(lo[o0]), int(hi[o0])
        while o1 < min(o0 + most, w.shape[0]) and max(i1, hi[o1]) - min(i0, lo[o1]) <= span:
            i0, i1 = min(i0, int(lo[o1])), max(i1, int(hi[o1]))
            o1 += 1
        out.append((o0, o1, i0, i1))
        o0 = o1
    return out


def band_product(wb: np.ndarray, a: np.ndarray, out: np.ndarray) -> None:
    """out = wb @ a, (R, K) @ (K, N) -> (R, N) float32, summed in a fixed order: source row k = 0,
    1, ... added to every output row (an elementwise multiply and add), in column blocks that stay
    in cache. Zero weights add exact zeros, so each output row is the ascending sum of its own
    nonzero terms whatever the band it is computed in."""
    rows, k = wb.shape
    step = max(256, _BLOCK_FLOATS // max(1, rows))
    wcols = np.ascontiguousarray(wb.T)[:, :, None]  # (K, R, 1): weight column k broadcast over N
    term = np.empty((rows, min(step, a.shape[1])), dtype=np.float32)
    for c0 in range(0, a.shape[1], step):
        acc, src = out[:, c0:c0 + step], a[:, c0:c0 + step]
        t = term[:, :acc.shape[1]]
        np.multiply(wcols[0], src[0], out=acc)
        for i in range(1, k):
            np.multiply(wcols[i], src[i], out=t)
            acc += t


def banded_matmul(
    w: np.ndarray, a: np.ndarray, out: np.ndarray, bands: List[Tuple[int, int, int, int]],
    finish: Optional[Callable[[np.ndarray], None]] = None,
) -> None:
    """out[o0:o1] = w[o0:o1, i0:i1] @ a[i0:i1] for each band; `finish(out[o0:o1])` runs on each
    band while it is still in cache."""
    for o0, o1, i0, i1 in bands:
        band_product(w[o0:o1, i0:i1], a[i0:i1], out[o0:o1])
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
            band_product(w[o0:o1, i0:i1], planes[c, i0:i1], xyz[c, :r])
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
    pool=None, unit_eps: Optional[float] = None,
) -> np.ndarray:
    """out = wy @ x[c] @ wx.T for each channel of `x` (C, R, R'), as banded products.

    Returns (H, W) for one channel, (H, W, C) interleaved otherwise. `finish(rows)` is applied
    in place to each block of output rows, viewed as (rows, W * C). With `unit_eps` (three
    channels) every output vector is divided by max(its length, unit_eps) instead."""
    c, rh, rw = x.shape
    h, w = wy.shape[0], wx.shape[0]
    ybands = _cached_bands(wy, 16)
    y0, y1 = ybands[0][2], max(b[3] for b in ybands)
    xbands = _cached_bands(wx, 64)
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
