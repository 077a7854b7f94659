"""The camera's motion between two frames, a zoom and a shift (pan, tilt, shake), and maps moved
with it: `estimate_motion` fits `previous(s * (x - c) + c + t) ~ current(x)` on the stabiliser's
grey cells (Huber-weighted Gauss-Newton, coarse to fine); `plan_warp` moves maps by the nearest
pixel (a bilinear warp measured no less flicker and costs more passes). No matrix products (numpy's
BLAS may start threads that spin on the other core)."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np

#: the coarsest pyramid level's smaller side, in pixels
COARSEST = 12
#: the smallest side (pixels) an image needs for a fit; smaller ones are taken as still
SMALLEST = 6
#: Gauss-Newton steps per pyramid level, and on the finest
STEPS = 3
FINE_STEPS = 1
#: the most pixels a robust scale of the residual reads
SCALE_PIXELS = 4096
#: grey levels at which a pixel's difference stops counting in a motion's cost
TRUNCATE = 20.0


@dataclasses.dataclass(frozen=True)
class Motion:
    """Where the current frame's pixels were in the previous frame: `scale * (x - centre) + centre +
    shift` per axis (rows, columns), x in pixels, the centre given where it is used."""

    scale: float = 1.0
    shift: Tuple[float, float] = (0.0, 0.0)

    def largest(self, size: Tuple[int, int]) -> float:
        """The largest displacement (pixels) anywhere in a frame of `size`."""
        return float(np.hypot(*self.shift)) + abs(self.scale - 1.0) * float(np.hypot(*size)) / 2.0

    def scaled(self, factor: float) -> "Motion":
        """The same motion in pixels `factor` times as large."""
        return Motion(self.scale, (self.shift[0] * factor, self.shift[1] * factor))


STILL = Motion()


def _down(image: np.ndarray) -> np.ndarray:
    """2x2 means (an odd last row or column dropped)."""
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    a = image[:h:2, :w:2] + image[1:h:2, :w:2]
    a += image[:h:2, 1:w:2]
    a += image[1:h:2, 1:w:2]
    a *= np.float32(0.25)
    return a


def _coordinates(n: int, scale: float, shift: float, centre: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index along one axis: (lower source index, weight of the next, inside)."""
    x = (np.arange(n, dtype=np.float64) - centre) * scale + centre + shift
    inside = (x >= 0.0) & (x <= n - 1)
    x = np.clip(x, 0.0, n - 1)
    low = np.minimum(np.floor(x).astype(np.intp), max(n - 2, 0))
    return low, (x - low).astype(np.float32), inside


def _taps(f: np.ndarray, cubic: bool) -> Tuple[Tuple[int, np.ndarray], ...]:
    """(offset, weight) of the samples an interpolation at fractions `f` reads: linear, or Catmull-Rom."""
    if not cubic:
        return ((0, 1.0 - f), (1, f))
    f2, f3 = f * f, f * f * f
    return (
        (-1, -0.5 * f3 + f2 - 0.5 * f),
        (0, 1.5 * f3 - 2.5 * f2 + 1.0),
        (1, -1.5 * f3 + 2.0 * f2 + 0.5 * f),
        (2, 0.5 * f3 - 0.5 * f2),
    )


def resample(
    image: np.ndarray, motion: Motion, centre: Tuple[float, float], cubic: bool = False
) -> Tuple[np.ndarray, np.ndarray]:
    """`image` (2-D) at `motion`'s source positions, and where the source lies inside the image
    (bool); bilinear, or `cubic` (Catmull-Rom: about ten times less error on texture of a few pixels'
    period, which the motion test would take for motion). Separable: scale and shift act per axis."""
    h, w = image.shape
    r0, fr, rows_inside = _coordinates(h, motion.scale, motion.shift[0], centre[0])
    c0, fc, cols_inside = _coordinates(w, motion.scale, motion.shift[1], centre[1])
    rows = sum(image[np.clip(r0 + offset, 0, h - 1)] * k[:, None] for offset, k in _taps(fr, cubic))
    out = sum(np.take(rows, np.clip(c0 + offset, 0, w - 1), 1) * k for offset, k in _taps(fc, cubic))
    return out, rows_inside[:, None] & cols_inside[None, :]


def _fit_level(
    previous: np.ndarray, current: np.ndarray, motion: Motion, centre: Tuple[float, float], steps: int, fine: bool
) -> Motion:
    """Gauss-Newton steps of scale and shift on one pyramid level, Huber-weighted. The residual
    r = previous(W(x)) - current(x), W(x) = s (x - c) + c + t, has the derivatives g . (x - c) in s
    and g in t, g the previous image's gradient at W(x): taken as the mean of the warped image's
    and the current image's gradients over s (efficient second-order minimisation). `fine`: the
    finest level, resampled cubic (a linear interpolation pulls the fit towards whole pixels)."""
    h, w = current.shape
    v = (np.arange(h, dtype=np.float32) - np.float32(centre[0]))[:, None]
    u = (np.arange(w, dtype=np.float32) - np.float32(centre[1]))[None, :]
    gradient_current = np.gradient(current)
    for _ in range(steps):
        warped, inside = resample(previous, motion, centre, cubic=fine)
        r = warped - current
        r *= inside  # outside: no residual, no weight below
        half = np.float32(0.5 / motion.scale)
        gy, gx = ((g + g_current) * half for g, g_current in zip(np.gradient(warped), gradient_current))
        a = np.abs(r)
        sample = a[inside][:: max(1, int(inside.sum()) // SCALE_PIXELS)]
        if sample.size < 16:
            return motion
        sigma = 1.4826 * float(np.median(sample)) + 1e-3
        weight = np.float32(1.345 * sigma) / np.maximum(a, np.float32(1e-6))
        np.minimum(weight, 1.0, out=weight)
        weight *= inside
        columns = (gx * u + gy * v, gy, gx)
        normal, rhs = np.empty((3, 3)), np.empty(3)
        for i in range(3):  # sums of products, not np.dot: BLAS may start threads that spin after it
            weighted = columns[i] * weight
            rhs[i] = -float((weighted * r).sum())
            for j in range(i, 3):
                normal[i, j] = normal[j, i] = float((weighted * columns[j]).sum())
        if not np.all(np.isfinite(normal)) or np.linalg.cond(normal) > 1e9:
            return motion
        d = np.linalg.solve(normal, rhs)
        motion = Motion(motion.scale + float(d[0]), (motion.shift[0] + float(d[1]), motion.shift[1] + float(d[2])))
        if abs(d[1]) + abs(d[2]) + abs(d[0]) * max(h, w) < 0.01:
            break
    return motion


def _cost(previous: np.ndarray, current: np.ndarray, motion: Motion, centre: Tuple[float, float]) -> float:
    """How badly `motion` brings `previous` onto `current`: the mean absolute difference where it is
    defined, each pixel's capped at TRUNCATE grey levels (what moves in the scene counts no more)."""
    warped, inside = resample(previous, motion, centre, cubic=True)
    a = np.abs(warped - current)[inside]
    return float(np.minimum(a, TRUNCATE).mean()) if a.size else float("inf")


def _apart(a: Motion, b: Motion, size: Tuple[int, int]) -> float:
    """The largest distance (pixels) between where two motions take a frame's pixels."""
    return Motion(1.0 + a.scale - b.scale, (a.shift[0] - b.shift[0], a.shift[1] - b.shift[1])).largest(size)


def estimate_motion(
    previous: np.ndarray, current: np.ndarray, still: float = 0.0, guess: Motion = STILL
) -> Tuple[Motion, np.ndarray, Optional[np.ndarray]]:
    """The camera's motion from `previous` to `current` (grey float32 images of one size), in their
    pixels; `previous` warped onto `current`; where that is defined (bool). Under `still` pixels
    of displacement, or on images under SMALLEST pixels a side: STILL, `previous`, None. `guess`
    (the previous frame's motion) is followed where it still holds, else fits from it and from no
    motion compete (docs/video.md, "The camera")."""
    if min(current.shape) < SMALLEST:
        return STILL, previous, None  # too small to fit a motion on
    pyramid = [(previous, current, ((current.shape[0] - 1) / 2.0, (current.shape[1] - 1) / 2.0))]
    while min(pyramid[-1][1].shape) // 2 >= COARSEST:
        p, c, (y, x) = pyramid[-1]
        pyramid.append((_down(p), _down(c), ((y - 0.5) / 2.0, (x - 0.5) / 2.0)))  # the same centre, a level down
    compare = min(1, len(pyramid) - 1)  # where the guess competes
    top, motion = len(pyramid) - 1, STILL
    if guess != STILL:
        p, c, centre = pyramid[compare]
        expected = guess.scaled(0.5**compare)
        followed = _fit_level(p, c, expected, centre, STEPS, compare == 0)
        if _apart(followed, expected, c.shape) < 0.5 and _cost(p, c, followed, centre) <= _cost(p, c, STILL, centre):
            top, motion = compare - 1, followed.scaled(2.0 if compare else 1.0)
    for level in range(top, -1, -1):
        p, c, centre = pyramid[level]
        if level == 0 and len(pyramid) > 1 and motion.largest(c.shape) < still / 2:
            return STILL, previous, None  # the next coarser level found the camera still
        motion = _fit_level(p, c, motion, centre, FINE_STEPS if level == 0 else STEPS, level == 0)
        if level == compare and top > compare and motion.largest(c.shape) >= 0.5:
            expected = guess.scaled(0.5**level)
            if guess == STILL or _apart(motion, expected, c.shape) >= 0.5:  # no guess, or it disagrees
                starts = [STILL] + ([expected] if guess != STILL else [])
                candidates = [motion] + [_fit_level(p, c, start, centre, STEPS, level == 0) for start in starts]
                costs = [_cost(p, c, m, centre) for m in candidates]
                motion = candidates[int(np.argmin(costs))]
        if level:
            motion = motion.scaled(2.0)
    if not (0.5 < motion.scale < 2.0 and np.all(np.isfinite(motion.shift))) or motion.largest(current.shape) < still:
        return STILL, previous, None
    warped, inside = resample(previous, motion, pyramid[0][2], cubic=True)
    return motion, warped, inside


@dataclasses.dataclass(frozen=True)
class Warp:
    """Where each pixel of the current frame takes its value from in the previous frame's maps (the
    nearest pixel): `rows` (H,), `cols` (W,) source indices, clipped, with where they fall inside
    (`rows_inside`, `cols_inside`); `shift` (rows, columns) when it is a whole-pixel shift."""

    rows: np.ndarray
    cols: np.ndarray
    rows_inside: np.ndarray
    cols_inside: np.ndarray
    shift: Optional[Tuple[int, int]]

    def band(self, a: np.ndarray, fill: np.ndarray, rows: slice) -> np.ndarray:
        """Rows `rows` of `apply(a, fill)`, made on their own (the moved estimate is never made whole)."""
        inside = self.rows_inside[rows]
        if self.shift is None:
            out = np.take(a[self.rows[rows]], self.cols, axis=1)
        else:
            (dy, dx), w = self.shift, a.shape[1]
            source = a[rows.start + dy : rows.stop + dy] if inside.all() else a[self.rows[rows]]
            out = np.empty(source.shape, a.dtype)
            x0, x1 = max(0, -dx), min(w, w - dx)
            if x0 < x1:
                out[:, x0:x1] = source[:, x0 + dx : x1 + dx]
        if not inside.all():
            out[~inside] = fill[rows][~inside]
        if not self.cols_inside.all():
            out[:, ~self.cols_inside] = fill[rows][:, ~self.cols_inside]
        return out

    def samples(self, a: np.ndarray, fill: np.ndarray, step: int) -> np.ndarray:
        """`apply(a, fill)[::step, ::step]`, made on its own."""
        rows, cols = self.rows[::step], self.cols[::step]
        out = a[np.ix_(rows, cols)]
        outside = ~(self.rows_inside[::step][:, None] & self.cols_inside[::step][None, :])
        if outside.any():
            out[outside] = fill[::step, ::step][outside]
        return out

    def apply(self, a: np.ndarray, fill: np.ndarray) -> np.ndarray:
        """`a` (H, W[, C]) of the previous frame brought onto the current one (a new array); where the
        source lies outside, `fill`'s values (the current frame's own)."""
        return self.band(a, fill, slice(0, a.shape[0]))


def plan_warp(
    motion: Motion, size: Tuple[int, int], centre: Tuple[float, float], carried: Tuple[float, float] = (0.0, 0.0)
) -> Tuple[Warp, Tuple[float, float]]:
    """The nearest-pixel `Warp` of `motion` (about `centre`) for maps of `size`, and the rounding to
    carry to the next frame. `carried`: the earlier warps' rounding (the maps' content sits that
    far from where it belongs); a shift takes it off, so whole-pixel shifts add up to the camera's
    path instead of drifting from it; a zoom rounds per pixel and carries nothing (tracking its
    rounding per row and column measured worse on the benchmark's zoom)."""
    h, w = size
    shift_only = abs(motion.scale - 1.0) * max(h, w) / 2.0 < 0.5
    if shift_only:
        dy = int(np.rint(motion.shift[0] - carried[0]))
        dx = int(np.rint(motion.shift[1] - carried[1]))
        rows, cols = np.arange(h) + dy, np.arange(w) + dx
        rest = (dy + carried[0] - motion.shift[0], dx + carried[1] - motion.shift[1])
    else:
        y = (np.arange(h) - centre[0]) * motion.scale + centre[0] + motion.shift[0] - carried[0]
        x = (np.arange(w) - centre[1]) * motion.scale + centre[1] + motion.shift[1] - carried[1]
        rows, cols = np.rint(y).astype(np.intp), np.rint(x).astype(np.intp)
        rest = (0.0, 0.0)
    rows_inside, cols_inside = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
    shift = (dy, dx) if shift_only else None
    return Warp(np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1), rows_inside, cols_inside, shift), rest
