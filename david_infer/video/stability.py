"""Temporal stabilisation of a clip's maps (depth, normals, foreground), so they do not flicker.

DAViD predicts each frame on its own: a relative depth with its own scale and shift per frame,
and maps whose small errors change from frame to frame. `stabilize(predictions, mode)` turns a
clip's per-frame predictions into a steady sequence, without any training, per shot (the frames
between cuts):

1. Cuts. A shot begins at the first frame, at a frame of another size, and where the coarse colour
   histogram of a frame (64 bins) differs from the previous frame's by more than `cut_threshold`
   (L1 distance, 0..2): the estimate starts again from that frame.
2. Depth alignment. Each frame's depth is mapped by one scale and shift onto the running
   estimate, solved on a grid of every 4th pixel inside both foregrounds where nothing moved (the
   alignment DAViD's authors evaluate with), Huber-weighted, as a Deming fit: the estimate is less
   noisy than a frame, and plain least squares would shrink the scale a little in every frame,
   compounding. Fallbacks, in order: too few such pixels (or too little correlation), the
   foreground's median and interquartile range; no foreground (an empty or absent mask), the whole
   frame's; a scale not positive or over MAX_SCALE_STEP from the previous frame's, the next
   fallback, at last the previous frame's alignment. The output's depth units are a leaky
   average of the frames' own (UNITS_WEIGHT; offline run both ways), so they cannot drift.
3. Motion, per grid cell: the grey image (box-blurred) against the previous frame's, a change over
   `motion_threshold` grey levels or, on texture, a displacement over about a pixel (normal flow);
   when most textured cells moved, the camera did and the whole frame counts as moved. Spread by
   one cell (the foreground's to the four neighbours). Beside it, a cell whose map changed by more
   than `gate` times the frame's robust noise (depth after alignment; normals by angle) counts as
   moved: a moving limb of one flat colour shows no change inside in the image, but its maps do.
4. A recursive filter per pixel (a Kalman filter on a random walk, its gain per grid cell): a
   cell that moved takes the new frame as it is (gain 1), so moving limbs do not smear; where
   nothing moved the gain falls as frames accumulate (1, 1/2, 1/3, ...) down to `frame_weight`
   (the foreground's to FOREGROUND_WEIGHT of it). Depth and foreground are blended linearly,
   normals likewise and renormalised (unit length).

`online`: causal, the filter's estimate is each frame's output (no latency; memory: the estimate,
a few frames' worth). `offline`: the forward pass writes its estimate and gains to a temporary
file (`spool_dir`), a backward pass (Rauch-Tung-Striebel) folds the later frames into each frame,
the last pass yields: each frame gets the frames after it too, and memory stays bounded whatever
the clip's length (disk: about 15 bytes per pixel per frame).

What it cannot fix: an error the model makes the same way frame after frame (a wrong depth of an
arm, a missed hand) stays; a global depth change the model cannot tell from its per-frame scale
(the person walking towards the camera) is held to the running scale; while the camera moves
nothing is blended (no motion compensation), only the depth aligned.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from .._arrays import row_bands
from ..errors import InputError
from ..prediction import Prediction

STABILIZE_MODES = ("online", "offline")
#: the motion test's and the alignment's grid: every GRID-th pixel in each direction
GRID = 4
#: fewest grid pixels a least-squares depth alignment is solved on
MIN_ALIGN_PIXELS = 24
#: the foreground's settled weight of a new frame, as a share of `frame_weight` (its flicker is at
#: the edges, which move by a pixel or two from frame to frame; its accuracy gains from more frames)
FOREGROUND_WEIGHT = 0.3
#: the share of the textured grid cells whose normal flow marks motion from which the whole frame
#: counts as moved (the camera moves; without motion compensation nothing can be blended)
CAMERA_MOVES = 0.5
#: the most grid pixels an alignment or a noise estimate reads
FIT_PIXELS = 8192
#: the least correlation of a frame's depth with the estimate's on the still pixels for a fit
MIN_CORRELATION = 0.5
#: the most a frame's depth scale may differ from the previous frame's (beyond: the next fallback)
MAX_SCALE_STEP = 2.0
#: the weight of a frame's own depth units in the output's (a leaky average: the estimate's units,
#: chained from frame to frame, may drift; the output's follow the frames' over about 1 / this)
UNITS_WEIGHT = 0.05
#: the displacement (grid cells) where the normal-flow test starts to mark motion
FLOW_CELLS = 0.2
_MAPS = ("depth", "normal", "foreground")
_ONE3 = np.ones(3, np.float32)


@dataclasses.dataclass(frozen=True)
class StabilizeOptions:
    """How `stabilize` works (see the module docstring).

    frame_weight: the weight of a new frame where nothing moved, once the estimate is settled
        (0 < w <= 1; 1: no smoothing, the depth is still aligned). Smaller: steadier, slower to
        follow slow changes the motion test lets through.
    motion_threshold: grey levels (0..255) of change in the blurred image that mark motion.
    gate: a map change beyond this many robust noise units (of the frame's own noise) marks motion.
    cut_threshold: colour-histogram distance (0..2) from the previous frame that starts a new shot.
    align_depth: map each frame's depth onto the estimate by scale and shift (False: as predicted).
    spool_dir: offline mode's temporary file goes here (default: the system's temporary folder).
    """

    frame_weight: float = 0.2
    motion_threshold: float = 4.0
    gate: float = 3.0
    cut_threshold: float = 0.5
    align_depth: bool = True
    spool_dir: Optional[str] = None

    def __post_init__(self) -> None:
        if not 0.0 < self.frame_weight <= 1.0:
            raise InputError(f"frame_weight must be in (0, 1], got {self.frame_weight}")
        for name in ("motion_threshold", "gate", "cut_threshold"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)}")

    @classmethod
    def from_keywords(cls, options: Mapping[str, Any]) -> "StabilizeOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"stabilize: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**options)


def stabilize(frames: Iterable[Any], mode: str = "online", **options: Any) -> Iterator[Any]:
    """A clip's predictions, stabilised over time: one output per input, in order, of the same kind.

    frames: `Prediction`s (as `DavidRuntime.predict`/`predict_video` give them) or mappings with
        `depth` (H, W), `normal` (H, W, 3), `foreground` (H, W) float32 and `image` (H, W, 3)
        uint8 (the frame; the motion test reads it); a map that is None or absent is left out.
        A live source works in online mode: any iterator, read one frame at a time.
    mode: "online" (causal: each output as soon as its frame is in; for live streams) or
        "offline" (the whole clip first, then every frame smoothed with the frames before and
        after it; two passes over a temporary file, memory bounded).
    options: fields of `StabilizeOptions` (frame_weight, motion_threshold, gate, cut_threshold,
        align_depth, spool_dir).

    Yields a `Prediction` (same image and `depth_inverse`) for a `Prediction`, a new dict with the
    maps replaced for a mapping (its other entries kept). InputError, naming the frame, for a
    map that is not finite, maps of different sizes within a frame, or a frame that lacks a map
    the first frame had; a frame of another size starts a new shot.
    """
    opts = StabilizeOptions.from_keywords(options)
    for _, out in stabilize_pairs(((None, frame) for frame in frames), mode, opts):
        yield out


def stabilize_pairs(
    pairs: Iterable[Tuple[Any, Any]],
    mode: str,
    options: Optional[StabilizeOptions] = None,
    spool: Optional[Path] = None,
) -> Iterator[Tuple[Any, Any]]:
    """`stabilize` on (tag, prediction) pairs; each tag comes back with its frame (offline mode
    keeps the tags in memory until the end: keep them small). `spool`: offline mode's temporary
    file (an existing file, rewritten and removed at the end), instead of one in `spool_dir`."""
    if mode not in STABILIZE_MODES:
        raise InputError(f"stabilize: mode must be one of {', '.join(STABILIZE_MODES)}, got {mode!r}")
    opts = options or StabilizeOptions()
    return _online(pairs, opts) if mode == "online" else _offline(pairs, opts, spool)


# ------------------------------------------------------------------------------------ frames


@dataclasses.dataclass
class _Frame:
    """One input's maps, checked: float32, finite, one size."""

    index: int
    depth: Optional[np.ndarray]
    normal: Optional[np.ndarray]
    foreground: Optional[np.ndarray]
    image: np.ndarray

    @property
    def size(self) -> Tuple[int, int]:
        return (int(self.image.shape[0]), int(self.image.shape[1]))

    @property
    def tasks(self) -> Tuple[bool, bool, bool]:
        return (self.depth is not None, self.normal is not None, self.foreground is not None)


def _field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, Mapping) else getattr(item, name)


def _read(item: Any, index: int) -> _Frame:
    if not isinstance(item, (Prediction, Mapping)):
        raise InputError(
            f"stabilize: frame {index} is a {type(item).__name__}; expected a Prediction or a mapping with "
            f"depth, normal, foreground and image"
        )
    image = _field(item, "image")
    if image is None:
        raise InputError(f"stabilize: frame {index} has no image; the motion test needs the frame (H, W, 3) uint8")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise InputError(
            f"stabilize: frame {index}: image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}"
        )
    size = image.shape[:2]
    maps: Dict[str, Optional[np.ndarray]] = {}
    for name, channels in zip(_MAPS, (None, 3, None)):
        value = _field(item, name)
        if value is None:
            maps[name] = None
            continue
        a = np.asarray(value)
        want = size + ((channels,) if channels else ())
        if a.shape != want or not np.issubdtype(a.dtype, np.number):
            raise InputError(
                f"stabilize: frame {index}: {name} must be {'x'.join(map(str, want))} numbers like its image, "
                f"got {a.shape} {a.dtype}"
            )
        a = a.astype(np.float32, copy=False)
        if not np.isfinite(a.sum()) and not np.isfinite(a).all():  # a NaN or inf makes the sum so
            raise InputError(
                f"stabilize: frame {index}: {name} holds NaN or infinity; a broken model output cannot be stabilised"
            )
        maps[name] = a
    return _Frame(index, maps["depth"], maps["normal"], maps["foreground"], image)


def _rebuild(item: Any, maps: Tuple[Optional[np.ndarray], ...], image: np.ndarray) -> Any:
    depth, normal, foreground = maps
    if isinstance(item, Prediction):
        return Prediction(image, depth, normal, foreground, item.depth_inverse, item.regions)
    out = dict(item)
    out["image"] = image
    for name, value in zip(_MAPS, maps):
        if value is not None:
            out[name] = value
    return out


# ------------------------------------------------------------------------------ image tests


def _grid_image(image: np.ndarray) -> np.ndarray:
    """The frame on the grid (every GRID-th pixel), uint8 (h, w, 3)."""
    return image[::GRID, ::GRID]


def _grey(grid: np.ndarray) -> np.ndarray:
    """Grey levels on the grid, 3x3 box-blurred (sensor and coding noise out of the motion test)."""
    g = grid.astype(np.float32) @ np.full(3, 1.0 / 3.0, np.float32)
    p = np.pad(g, 1, mode="edge")
    rows = p[:-2] + p[1:-1] + p[2:]
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) * np.float32(1.0 / 9.0)


def _histogram(grid: np.ndarray) -> np.ndarray:
    """The colour histogram on every other grid pixel: 4 levels per channel, 64 bins, summing to 1."""
    q = grid[::2, ::2] >> 6
    bins = (q[..., 0].astype(np.intp) << 4) | (q[..., 1].astype(np.intp) << 2) | q[..., 2]
    h = np.bincount(bins.ravel(), minlength=64).astype(np.float64)
    return h / max(1.0, h.sum())


def _dilate(m: np.ndarray, cross: bool = False) -> np.ndarray:
    """3x3 maximum (`cross`: over the four neighbours)."""
    p = np.pad(m, 1, mode="edge")
    if cross:
        return np.maximum(np.maximum(np.maximum(p[:-2, 1:-1], p[2:, 1:-1]), np.maximum(p[1:-1, :-2], p[1:-1, 2:])), m)
    rows = np.maximum(np.maximum(p[:-2], p[1:-1]), p[2:])
    return np.maximum(np.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def _image_motion(grey: np.ndarray, previous: np.ndarray, threshold: float) -> np.ndarray:
    """Motion in [0, 1] on the grid, the larger of two tests, spread by one grid cell: the change
    (0 below `threshold` grey levels, 1 from twice that), and where the image has an edge or
    texture, the displacement the change implies (normal flow: change over gradient; 0 below a
    fifth of a grid cell, 1 from two fifths), which sees a slow pan that changes little. When most
    textured cells moved, the camera did: the whole frame counts as moved."""
    change = np.abs(grey - previous)
    p = np.pad((grey + previous) * np.float32(0.5), 1, mode="edge")
    gradient = np.abs(p[1:-1, 2:] - p[1:-1, :-2]) + np.abs(p[2:, 1:-1] - p[:-2, 1:-1])  # twice the slope
    flow = np.maximum(change - np.float32(threshold / 4), 0.0)
    flow /= np.maximum(gradient, np.float32(1.5 * threshold))  # grid cells x 2; flat: no test
    flow *= np.float32(2.0 / FLOW_CELLS)
    textured = gradient >= np.float32(1.5 * threshold)
    if np.count_nonzero(textured) and np.count_nonzero(flow[textured] >= 1.0) > CAMERA_MOVES * np.count_nonzero(
        textured
    ):
        return np.ones_like(change)  # the camera moves (pan, zoom, shake): every pixel moved
    change *= np.float32(1.0 / threshold)
    np.maximum(change, flow, out=change)
    change -= 1.0
    return np.clip(change, 0.0, 1.0, out=change)


def _full_size(grid: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """A grid map at the frame's size (each grid value over its GRID x GRID cell)."""
    return np.repeat(np.repeat(grid, GRID, axis=0), GRID, axis=1)[: size[0], : size[1]]


# ------------------------------------------------------------------------------ depth alignment


def _fit(x: np.ndarray, y: np.ndarray, noise_ratio: float) -> Tuple[float, float]:
    """Scale and shift of `s * x + b ~ y`, Huber-weighted (IRLS, three rounds). Deming regression:
    both sides are noisy, `y`'s noise variance `noise_ratio` times `x`'s once scaled (the filter's
    estimate is steadier than a frame), so the scale is not shrunk by the frame's noise as plain
    least squares would shrink it, a bias that would compound from frame to frame."""
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    w = np.ones_like(x64)
    s = b = float("nan")
    for _ in range(3):
        sw = w.sum()
        mx, my = (w * x64).sum() / sw, (w * y64).sum() / sw
        dx, dy = x64 - mx, y64 - my
        sxx, syy, sxy = (w * dx * dx).sum() / sw, (w * dy * dy).sum() / sw, (w * dx * dy).sum() / sw
        if not sxy > MIN_CORRELATION * np.sqrt(sxx * syy):  # the pixels do not match (moved, occluded)
            return float("nan"), float("nan")
        delta = noise_ratio * (sxy / sxx) ** 2  # y's noise over x's, with x in y's units (least-squares scale)
        a = syy - delta * sxx
        s = (a + np.sqrt(a * a + 4.0 * delta * sxy * sxy)) / (2.0 * sxy)
        b = my - s * mx
        r = np.abs(s * x64 + b - y64)
        scale = 1.4826 * float(np.median(r)) + 1e-300
        w = np.minimum(1.0, 1.345 * scale / np.maximum(r, 1e-300))
    return float(s), float(b)


def _sample(values: np.ndarray) -> np.ndarray:
    """At most about FIT_PIXELS of `values`, evenly spaced (robust statistics need no more)."""
    return values[:: max(1, values.shape[0] // FIT_PIXELS)]


def _match_spread(x: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
    """Scale and shift that give `x` the median and interquartile range of `y`."""
    xq, yq = np.percentile(x, [25, 50, 75]), np.percentile(y, [25, 50, 75])
    s = (yq[2] - yq[0]) / (xq[2] - xq[0]) if xq[2] > xq[0] and yq[2] > yq[0] else 1.0
    return float(s), float(yq[1] - s * xq[1])


# ------------------------------------------------------------------------------ the filter


class _Shot:
    """The running estimate of one shot: the maps, the gain per grid cell (the filter's variance
    in units of a frame's noise), the previous frame's grey grid and histogram, and per frame the
    depth units."""

    def __init__(self, frame: _Frame, opts: StabilizeOptions, grid: np.ndarray) -> None:
        self.opts, self.size, self.tasks = opts, frame.size, frame.tasks
        self.depth, self.normal, self.foreground = frame.depth, frame.normal, frame.foreground
        #: per grid cell, the last gain of depth and normals [0] and of the foreground [1]
        self.gain = np.ones((2,) + grid.shape[:2], np.float32)  # a new shot takes its first frame as it is
        weights = np.array([opts.frame_weight, opts.frame_weight * FOREGROUND_WEIGHT], np.float32)
        #: random-walk noise per frame over the frame's, of each gain (its settled value is the weight)
        self.q = None if opts.frame_weight >= 1.0 else (weights * weights / (1.0 - weights))[:, None, None]
        self.grey, self.histogram = _grey(grid), _histogram(grid)
        #: per frame, the scale and shift from the estimate's depth units to the frame's
        self.units: List[Tuple[float, float]] = [(1.0, 0.0)]
        self.output_units = (1.0, 0.0)  # online: the leaky average of `units`

    def is_cut(self, frame: _Frame, grid: np.ndarray) -> bool:
        if frame.size != self.size:
            return True
        return float(np.abs(_histogram(grid) - self.histogram).sum()) > self.opts.cut_threshold

    def update(
        self, frame: _Frame, grid: np.ndarray, output: bool = False
    ) -> Tuple[Tuple[Optional[np.ndarray], ...], np.ndarray, Optional[np.ndarray]]:
        """The estimate after `frame` (new arrays, never written again), the gain per grid cell, and
        with `output` the depth in the output's units (`output_units`)."""
        grey = _grey(grid)
        moving = _image_motion(grey, self.grey, self.opts.motion_threshold)
        self.grey, self.histogram = grey, _histogram(grid)
        s, b = self._align(frame, moving) if frame.depth is not None else (1.0, 0.0)
        self.units.append((1.0 / s, -b / s))
        self.output_units = _leaky(self.output_units, self.units[-1])
        gain = self._gain(frame, s, b, moving)
        k, k_foreground = _full_size(gain[0], self.size), _full_size(gain[1], self.size)
        h, w = self.size
        depth = None if frame.depth is None else np.empty((h, w), np.float32)
        normal = None if frame.normal is None else np.empty((h, w, 3), np.float32)
        foreground = None if frame.foreground is None else np.empty((h, w), np.float32)
        shown = np.empty((h, w), np.float32) if output and depth is not None else None
        for rows in row_bands(h, w):
            self._band(frame, rows, s, b, k[rows], k_foreground[rows], depth, normal, foreground)
            if shown is not None:
                np.multiply(depth[rows], np.float32(self.output_units[0]), out=shown[rows])  # type: ignore[index]
                shown[rows] += np.float32(self.output_units[1])
        self.depth, self.normal, self.foreground, self.gain = depth, normal, foreground, gain
        return (depth, normal, foreground), gain, shown

    def _gain(self, frame: _Frame, s: float, b: float, moving: np.ndarray) -> np.ndarray:
        """The filter's gain per grid cell: 1 where the image or a map moved (the map gates in units
        of the frame's robust noise on the still cells), else the Kalman gain of a random walk."""
        still = moving < 0.5
        if frame.foreground is not None:
            inside = still & (frame.foreground[::GRID, ::GRID] >= 0.5)
            if np.count_nonzero(inside) >= MIN_ALIGN_PIXELS:
                still = inside  # the noise of the person's maps, not of the background's
        if np.count_nonzero(still) < MIN_ALIGN_PIXELS:
            still = np.ones_like(still)
        moved = np.ones((2,) + moving.shape, np.float32)  # 1 + motion; the gates raise it, then 1 comes off
        moved[0] += _dilate(moving)  # depth and normals: a margin of one cell around what the image shows
        moved[1] += _dilate(moving, cross=True)  # the foreground: its edges are the image's: a thinner margin
        if frame.depth is not None:
            r = frame.depth[::GRID, ::GRID] * np.float32(s)
            r += np.float32(b)
            r -= self.depth[::GRID, ::GRID]  # type: ignore[index]
            np.abs(r, out=r)
            spread = float(np.ptp(self.depth[::GRID, ::GRID])) + 1e-12  # type: ignore[index]
            noise = max(1.4826 * float(np.median(_sample(r[still]))), 1e-4 * spread)
            r *= np.float32(1.0 / (self.opts.gate * noise))
            np.maximum(moved, r, out=moved)  # (both layers)
        if frame.normal is not None:
            d = frame.normal[::GRID, ::GRID] - self.normal[::GRID, ::GRID]  # type: ignore[index]
            e = (d * d) @ _ONE3  # squared chord, ~ squared angle
            noise = max(1.4826**2 * float(np.median(_sample(e[still]))), 1e-6)
            e *= np.float32(1.0 / (self.opts.gate**2 * noise))
            np.maximum(moved, e, out=moved)
        moved -= 1.0
        np.clip(moved, 0.0, 1.0, out=moved)
        if self.q is None:
            return np.ones_like(self.gain)
        k = self.gain + self.q
        k /= k + 1.0
        return np.maximum(k, moved, out=k)  # a cell that moved takes the frame as it is

    def _band(
        self,
        frame: _Frame,
        rows: slice,
        s: float,
        b: float,
        k: np.ndarray,
        k_foreground: np.ndarray,
        depth: Optional[np.ndarray],
        normal: Optional[np.ndarray],
        foreground: Optional[np.ndarray],
    ) -> None:
        """estimate + gain * (frame - estimate) on one band of rows; normals back to unit length."""
        if depth is not None:
            r = frame.depth[rows] * np.float32(s)  # type: ignore[index]
            r += np.float32(b)
            r -= self.depth[rows]  # type: ignore[index]
            r *= k
            np.add(self.depth[rows], r, out=depth[rows])  # type: ignore[index]
        if foreground is not None:
            r = frame.foreground[rows] - self.foreground[rows]  # type: ignore[index]
            r *= k_foreground
            np.add(self.foreground[rows], r, out=foreground[rows])  # type: ignore[index]
        if normal is not None:
            previous = self.normal[rows]  # type: ignore[index]
            n = frame.normal[rows] - previous  # type: ignore[index]
            n *= k[..., None]
            n += previous
            norm = np.sqrt((n * n) @ _ONE3)
            np.maximum(norm, np.float32(1e-12), out=norm)
            np.divide(n, norm[..., None], out=normal[rows])

    def _align(self, frame: _Frame, moving_grid: np.ndarray) -> Tuple[float, float]:
        """Scale and shift of this frame's depth onto the estimate (see the module docstring, 2)."""
        if not self.opts.align_depth:
            return 1.0, 0.0
        x, y = frame.depth[::GRID, ::GRID], self.depth[::GRID, ::GRID]  # type: ignore[index]
        if frame.foreground is not None:
            inside = (frame.foreground[::GRID, ::GRID] >= 0.5) & (self.foreground[::GRID, ::GRID] >= 0.5)  # type: ignore[index]
            still = inside & (moving_grid < 0.5)
            if np.count_nonzero(still) >= MIN_ALIGN_PIXELS:
                noise_ratio = float(self.gain[0][still].mean())  # the estimate's noise, in frames'
                s, b = _fit(_sample(x[still]), _sample(y[still]), noise_ratio)
                if self._plausible(s, b):
                    return s, b
            if np.count_nonzero(inside) >= MIN_ALIGN_PIXELS:  # moved: pixels no longer match, their spread does
                s, b = _match_spread(_sample(x[inside]), _sample(y[inside]))
                if self._plausible(s, b):
                    return s, b
        s, b = _match_spread(_sample(x.ravel()), _sample(y.ravel()))
        if self._plausible(s, b):
            return s, b
        last = self.units[-1]  # nothing fits: the previous frame's alignment
        return 1.0 / last[0], -last[1] / last[0]

    def _plausible(self, s: float, b: float) -> bool:
        """A scale that is positive and within MAX_SCALE_STEP of the previous frame's."""
        previous = 1.0 / self.units[-1][0]
        return bool(np.isfinite(b) and s > 0 and 1.0 / MAX_SCALE_STEP <= s / previous <= MAX_SCALE_STEP)


def _leaky(average: Tuple[float, float], units: Tuple[float, float]) -> Tuple[float, float]:
    """One step of the leaky average of depth units (scale geometric, shift arithmetic)."""
    w = UNITS_WEIGHT
    return (average[0] ** (1.0 - w) * units[0] ** w, (1.0 - w) * average[1] + w * units[1])


def _two_sided(units: List[Tuple[float, float]]) -> List[Tuple[float, float]]:
    """The leaky average run forwards, then backwards over that (zero lag): offline's units."""
    forward = [units[0]]
    for u in units[1:]:
        forward.append(_leaky(forward[-1], u))
    out = [forward[-1]]
    for u in reversed(forward[:-1]):
        out.append(_leaky(out[-1], u))
    return out[::-1]


def _in_units(maps: Tuple[Optional[np.ndarray], ...], units: Tuple[float, float]) -> Tuple[Optional[np.ndarray], ...]:
    """The estimate's maps with the depth in the given units (a new array)."""
    depth = maps[0]
    if depth is None:
        return maps
    out = depth * np.float32(units[0])
    out += np.float32(units[1])
    return (out,) + tuple(maps[1:])


def _names(tasks: Tuple[bool, bool, bool]) -> str:
    present = [name for name, has in zip(_MAPS, tasks) if has]
    return ", ".join(present) if present else "none"


class _Stream:
    """Frames in, estimates out: shots begun at cuts and size changes."""

    def __init__(self, opts: StabilizeOptions) -> None:
        self.opts = opts
        self.shot: Optional[_Shot] = None

    def push(
        self, frame: _Frame, output: bool = False
    ) -> Tuple[Tuple[Optional[np.ndarray], ...], np.ndarray, bool, Optional[np.ndarray]]:
        """(the estimate's maps, gain, whether this frame began a shot, with `output` the depth in
        the output's units)."""
        grid = _grid_image(frame.image)
        if self.shot is not None and frame.tasks != self.shot.tasks:
            raise InputError(
                f"stabilize: frame {frame.index} has maps {_names(frame.tasks)}, the frames before it "
                f"{_names(self.shot.tasks)}; every frame of a clip needs the same maps"
            )
        if self.shot is None or self.shot.is_cut(frame, grid):
            self.shot = _Shot(frame, self.opts, grid)
            return (frame.depth, frame.normal, frame.foreground), self.shot.gain, True, frame.depth
        maps, gain, shown = self.shot.update(frame, grid, output)
        return maps, gain, False, shown


def _online(pairs: Iterable[Tuple[Any, Any]], opts: StabilizeOptions) -> Iterator[Tuple[Any, Any]]:
    stream = _Stream(opts)
    for index, (tag, item) in enumerate(pairs):
        frame = _read(item, index)
        maps, _, _, shown = stream.push(frame, output=True)
        yield tag, _rebuild(item, (shown,) + maps[1:], frame.image)


# ------------------------------------------------------------------------------ offline


class _Spool:
    """Offline mode's temporary file: one record per frame (the estimate's maps, the gain, the
    image), rewritten in place by the backward pass: depth float32, normals int16, the foreground
    uint16, the gains uint8 per grid cell, the image uint8 (15 bytes per pixel)."""

    def __init__(self, folder: Optional[str], path: Optional[Path] = None) -> None:
        if path is None:
            fd, name = tempfile.mkstemp(prefix=".david-stabilize-", suffix=".spool", dir=folder)
            self.path, self._file = Path(name), os.fdopen(fd, "w+b")
        else:
            self.path, self._file = path, open(path, "w+b")
        self.offsets: List[int] = []
        self._buffers: Dict[Tuple[Tuple[int, ...], Any], np.ndarray] = {}

    @staticmethod
    def _layout(size: Tuple[int, int], tasks: Tuple[bool, bool, bool]) -> List[Tuple[str, Any, Tuple[int, ...]]]:
        h, w = size
        parts: List[Tuple[str, Any, Tuple[int, ...]]] = []
        if tasks[0]:
            parts.append(("depth", np.float32, (h, w)))
        if tasks[1]:
            parts.append(("normal", np.int16, (h, w, 3)))
        if tasks[2]:
            parts.append(("foreground", np.uint16, (h, w)))
        parts += [("gain", np.uint8, (2, -(-h // GRID), -(-w // GRID))), ("image", np.uint8, (h, w, 3))]
        return parts

    def put(self, maps: Tuple[Optional[np.ndarray], ...], gain: np.ndarray, image: np.ndarray) -> None:
        self._file.seek(0, os.SEEK_END)
        self.offsets.append(self._file.tell())
        self._write(maps, gain, image)

    def rewrite(self, index: int, maps: Tuple[Optional[np.ndarray], ...]) -> None:
        """Replace the maps of record `index` (same layout)."""
        self._file.seek(self.offsets[index])
        self._write(maps, None, None)

    def _write(
        self, maps: Tuple[Optional[np.ndarray], ...], gain: Optional[np.ndarray], image: Optional[np.ndarray]
    ) -> None:
        depth, normal, foreground = maps
        f = self._file
        if depth is not None:
            np.ascontiguousarray(depth, np.float32).tofile(f)
        if normal is not None:  # truncated: within 1 / 32767; one pass, no float temporary
            buffer = self._buffer(normal.shape, np.int16)
            np.multiply(normal, np.float32(32767.0), out=buffer, casting="unsafe")
            buffer.tofile(f)
        if foreground is not None:
            fg = np.clip(foreground, 0.0, 1.0)
            fg *= np.float32(65535.0)
            fg += np.float32(0.5)
            buffer = self._buffer(fg.shape, np.uint16)
            np.copyto(buffer, fg, casting="unsafe")
            buffer.tofile(f)
        if gain is not None:
            np.rint(gain * np.float32(255.0)).astype(np.uint8).tofile(f)
            image.tofile(f)  # type: ignore[union-attr]

    def get(
        self, index: int, size: Tuple[int, int], tasks: Tuple[bool, bool, bool], image: bool
    ) -> Tuple[Tuple[Optional[np.ndarray], ...], np.ndarray, Optional[np.ndarray]]:
        """(maps, gain, image or None) of record `index`."""
        self._file.seek(self.offsets[index])
        got: Dict[str, np.ndarray] = {}
        for name, dtype, shape in self._layout(size, tasks):
            if name == "image" and not image:
                break
            got[name] = np.fromfile(self._file, dtype, int(np.prod(shape))).reshape(shape)
        depth = normal = foreground = None
        if tasks[0]:
            depth = got["depth"]
        if tasks[1]:
            normal = np.multiply(got["normal"], np.float32(1.0 / 32767.0), dtype=np.float32)
        if tasks[2]:
            foreground = np.multiply(got["foreground"], np.float32(1.0 / 65535.0), dtype=np.float32)
        gain = got["gain"].astype(np.float32)
        gain *= np.float32(1.0 / 255.0)
        return (depth, normal, foreground), gain, got.get("image")

    def _buffer(self, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
        """A reusable array to convert into before writing."""
        key = (tuple(shape), np.dtype(dtype))
        if key not in self._buffers:
            self._buffers[key] = np.empty(shape, dtype)
        return self._buffers[key]

    def remove(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


@dataclasses.dataclass
class _ShotSpan:
    first: int
    size: Tuple[int, int]
    tasks: Tuple[bool, bool, bool]
    units: List[Tuple[float, float]]
    last: int = -1


def _smooth_back(
    later: Tuple[Optional[np.ndarray], ...],
    maps: Tuple[Optional[np.ndarray], ...],
    gain: np.ndarray,
    later_gain: np.ndarray,
) -> Tuple[Optional[np.ndarray], ...]:
    """One Rauch-Tung-Striebel step, in place on `maps`: `maps + c * (later - maps)`, c = k (1 - k') / k'
    (k: this frame's forward gain per grid cell, k': the next frame's; 0 where the next frame moved),
    band by band; normals back to unit length."""
    c_grid = gain * (1.0 - later_gain)
    c_grid /= np.maximum(later_gain, np.float32(1.0 / 255.0))
    size = next(m.shape[:2] for m in maps if m is not None)
    c, c_foreground = _full_size(c_grid[0], size), _full_size(c_grid[1], size)
    for rows in row_bands(*size):
        for index, (a, z) in enumerate(zip(maps, later)):
            if a is None:
                continue
            band = a[rows]
            d = z[rows] - band  # type: ignore[index]
            k = (c_foreground if index == 2 else c)[rows]
            d *= k[..., None] if d.ndim == 3 else k
            if index == 1:
                d += band
                np.divide(d, np.maximum(np.sqrt((d * d) @ _ONE3), np.float32(1e-12))[..., None], out=band)
            else:
                band += d
    return maps


def _offline(
    pairs: Iterable[Tuple[Any, Any]], opts: StabilizeOptions, path: Optional[Path]
) -> Iterator[Tuple[Any, Any]]:
    spool = _Spool(opts.spool_dir, path)
    try:
        stream = _Stream(opts)
        items: List[Tuple[Any, Any]] = []  # (tag, the input without its maps and image)
        shots: List[_ShotSpan] = []
        for index, (tag, item) in enumerate(pairs):
            frame = _read(item, index)
            maps, gain, began, _ = stream.push(frame)
            if began:
                shots.append(_ShotSpan(index, frame.size, frame.tasks, stream.shot.units))  # type: ignore[union-attr]
            spool.put(maps, gain, frame.image)
            items.append((tag, _light(item)))
        for shot, after in zip(shots, shots[1:] + [None]):
            shot.last = (after.first if after is not None else len(items)) - 1
            _backward(spool, shot)
        for shot in shots:
            for index, units in zip(range(shot.first, shot.last + 1), _two_sided(shot.units)):
                maps, _, image = spool.get(index, shot.size, shot.tasks, image=True)
                tag, item = items[index]
                items[index] = (None, None)
                yield tag, _rebuild(item, _in_units(maps, units), image)  # type: ignore[arg-type]
    finally:
        spool.remove()


def _light(item: Any) -> Any:
    """What offline mode keeps of an input until it yields it: no maps, no image."""
    if isinstance(item, Prediction):
        return Prediction(np.empty((0, 0, 3), np.uint8), depth_inverse=item.depth_inverse, regions=item.regions)
    return {k: v for k, v in item.items() if k not in _MAPS and k != "image"}


def _backward(spool: _Spool, shot: _ShotSpan) -> None:
    """The backward pass over one shot's records, in place."""
    later, later_gain, _ = spool.get(shot.last, shot.size, shot.tasks, image=False)
    for index in range(shot.last - 1, shot.first - 1, -1):
        maps, gain, _ = spool.get(index, shot.size, shot.tasks, image=False)
        later = _smooth_back(later, maps, gain, later_gain)
        later_gain = gain
        spool.rewrite(index, later)
