"""The stabiliser's per-pixel blend, one pass per map (numba): the same arithmetic in numpy took about
50 passes over a 1280x720 frame's maps and 20 ms of the stabiliser's 24 (benchmarks/video_stability.py).
Each kernel reads the estimate through the camera's nearest-pixel warp (per row: the source row and
whether it falls inside; per column: the same; outside, the frame's own value), takes each pixel's
gain from its grid cell, and returns whether the frame's map was finite."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# no fast-math: reordered or fused arithmetic differs between a loop's vector body and its scalar
# rest, so results would depend on where numpy placed the arrays (measured: runs differed)


@njit(cache=True, nogil=True, error_model="numpy")
def _before(estimate, frame, i, rows, cols, rows_in, cols_in, identity, buffer):
    """Row i of the estimate moved by the warp (a view where it did not move)."""
    if identity:
        return estimate[i]
    if not rows_in[i]:
        buffer[:] = frame[i]
        return buffer
    source, own = estimate[rows[i]], frame[i]
    for j in range(cols.shape[0]):
        buffer[j] = source[cols[j]] if cols_in[j] else own[j]
    return buffer


@njit(cache=True, nogil=True, error_model="numpy")
def _spread_row(gain, gi, grid, out):
    """Row gi of the per-cell gains on the pixels of a row (each cell's value on its `grid` columns)."""
    for j in range(out.shape[0]):
        out[j] = gain[gi, j // grid]


@njit(cache=True, nogil=True, error_model="numpy")
def blend_depth(
    top, bottom, estimate, frame, rows, cols, rows_in, cols_in, identity, gain, grid, s, b, out, samples, shown, u0, u1
):
    """Rows top..bottom of the depth: the frame's aligned by scale `s` and shift `b`; `shown` (unless
    empty): the result in the output's units (times u0 plus u1)."""
    w = frame.shape[1]
    finite = True
    buffer, gains = np.empty(w, np.float32), np.empty(w, np.float32)
    for i in range(top, bottom):
        if i % grid == 0 or i == top:
            _spread_row(gain, i // grid, grid, gains)
        before = _before(estimate, frame, i, rows, cols, rows_in, cols_in, identity, buffer)
        own, o = frame[i], out[i]
        for j in range(w):
            r = own[j] * s + b - before[j]
            finite &= r - r == 0  # False for NaN and infinity
            o[j] = before[j] + r * gains[j]
        if shown.shape[0]:
            shown[i] = o * u0 + u1
        if i % grid == 0:
            samples[i // grid] = o[::grid]
    return finite


@njit(cache=True, nogil=True, error_model="numpy")
def blend_foreground(
    top, bottom, estimate, frame, rows, cols, rows_in, cols_in, identity, gain, limit, grid, out, samples
):
    """Rows top..bottom of the mask, each pixel's step bounded by its cell's `limit`."""
    w = frame.shape[1]
    finite = True
    buffer, gains, bounds = np.empty(w, np.float32), np.empty(w, np.float32), np.empty(w, np.float32)
    for i in range(top, bottom):
        if i % grid == 0 or i == top:
            _spread_row(gain, i // grid, grid, gains)
            _spread_row(limit, i // grid, grid, bounds)
        before = _before(estimate, frame, i, rows, cols, rows_in, cols_in, identity, buffer)
        own, o = frame[i], out[i]
        for j in range(w):
            r = own[j] - before[j]
            finite &= r - r == 0  # False for NaN and infinity
            o[j] = before[j] + min(max(r * gains[j], -bounds[j]), bounds[j])
        if i % grid == 0:
            samples[i // grid] = o[::grid]
    return finite


@njit(cache=True, nogil=True, error_model="numpy")
def blend_normal(top, bottom, estimate, frame, rows, cols, rows_in, cols_in, identity, gain, grid, floor, out, samples):
    """Rows top..bottom of the normals (H, W, 3), blended then unit length (at least `floor` long
    before it)."""
    h, w = frame.shape[:2]
    finite = True
    flat = frame.reshape(h, 3 * w)
    buffer, gains, lengths = np.empty(3 * w, np.float32), np.empty(3 * w, np.float32), np.empty(w, np.float32)
    columns, columns_in = np.empty(3 * w, cols.dtype), np.empty(3 * w, np.bool_)
    for j in range(3 * w):  # the warp on interleaved xyz: column j // 3, component j % 3
        columns[j], columns_in[j] = 3 * cols[j // 3] + j % 3, cols_in[j // 3]
    for i in range(top, bottom):
        if i % grid == 0 or i == top:
            _spread_row(gain, i // grid, 3 * grid, gains)
        before = _before(estimate.reshape(h, 3 * w), flat, i, rows, columns, rows_in, columns_in, identity, buffer)
        own, o, norms = flat[i], out[i].reshape(3 * w), out[i]
        for j in range(3 * w):  # separate loops: each one vectorises
            o[j] = before[j] + gains[j] * (own[j] - before[j])
        for j in range(w):
            lengths[j] = norms[j, 0] * norms[j, 0] + norms[j, 1] * norms[j, 1] + norms[j, 2] * norms[j, 2]
        for j in range(w):
            finite &= lengths[j] - lengths[j] == 0
            lengths[j] = np.float32(1.0) / max(math.sqrt(lengths[j]), floor)
        for j in range(w):
            norms[j, 0] *= lengths[j]
            norms[j, 1] *= lengths[j]
            norms[j, 2] *= lengths[j]
        if i % grid == 0:
            samples[i // grid] = norms[::grid]
    return finite


@njit(cache=True, nogil=True, error_model="numpy")
def copy_runs(top, bottom, out, source, rows, starts, ends, grid, u0, u1):
    """out[i, starts[k]:ends[k]] = source[i, starts[k]:ends[k]] * u0 + u1 on the pixel rows i of grid
    row rows[k] (those in top..bottom), for each run k; `out` and `source` (H, W * channels)."""
    for k in range(rows.shape[0]):
        for i in range(max(top, rows[k] * grid), min(bottom, (rows[k] + 1) * grid)):
            o, s = out[i], source[i]
            for j in range(starts[k], ends[k]):
                o[j] = s[j] * u0 + u1
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def cell_grey(image, grid, out):
    """Each whole grid cell's grey mean over its odd rows (a box filter; half the rows halve the cost)
    into `out` (image rows // grid, columns // grid)."""
    rows, cols = out.shape
    scale = np.float32(1.0 / (3 * grid * (grid // 2)))
    sums = np.zeros(cols, np.uint32)
    for r in range(rows):
        sums[:] = 0
        for i in range(r * grid + 1, (r + 1) * grid, 2):
            line = image[i]
            for c in range(cols):
                for j in range(c * grid, (c + 1) * grid):
                    sums[c] += line[j, 0] + line[j, 1] + line[j, 2]
        for c in range(cols):
            out[r, c] = sums[c] * scale
