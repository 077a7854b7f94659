"""Temporal stabilisation of a clip's maps (depth, normals, foreground), so they do not flicker:
per shot, on a grid of GRID x GRID pixel cells, the camera followed (david_infer.video.camera), each
frame's depth aligned, a per-pixel recursive filter where nothing moved; `online` causal, `offline`
a fixed-lag smoother. docs/video.md says each step, its constants and what it cannot fix.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import numbers
import os
from typing import Any, Callable, Deque, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np

from .._optional import require
from ..errors import InputError
from ..prediction import Prediction
from ..refine import match_spread
from ..tasks import TASKS
from .camera import STILL, Motion, Warp, estimate_motion, plan_warp

STABILIZE_MODES = ("online", "offline")
#: the motion test's, the gains' and the alignment's grid: cells of GRID x GRID pixels
GRID = 4
#: fewest grid pixels a least-squares depth alignment is solved on
MIN_ALIGN_PIXELS = 24
#: the foreground's settled weight of a new frame, as a share of the frame weight (its flicker is at
#: the edges, which move by a pixel or two from frame to frame; its accuracy gains from more frames)
FOREGROUND_WEIGHT = 0.3
#: the most a foreground update moves the estimate, times gain / (1 - gain) (a robust update)
MASK_STEP = 0.2
#: the change of the mask (0..1) at a cell's pixel from which the cell starts to count as moved
#: (fully at 1): above what an edge that moved by a pixel or two changes
MASK_FLIP = 0.75
#: the share of the textured grid cells that moved from which the whole frame counts as moved
#: (the camera's fit failed: a roll, a jolt, motion blur)
CAMERA_MOVES = 0.5
#: the variance (in a frame's noise) a zoom's nearest-pixel warp adds to the estimate's
ZOOM_NOISE = 0.2
#: the camera's displacement (pixels) anywhere in the frame below which it stood still
CAMERA_STILL = 0.25
#: the displacement (grid cells) from which the motion test marks a cell as moved (fully at twice it)
FLOW_CELLS = 0.2
#: the most grid pixels an alignment or a noise estimate reads
FIT_PIXELS = 8192
#: the least correlation of a frame's depth with the estimate's on the still pixels for a fit
MIN_CORRELATION = 0.5
#: the most a frame's depth scale may differ from the previous frame's (beyond: the next fallback)
MAX_SCALE_STEP = 2.0
#: the weight of a frame's own depth units in the output's (a leaky average: the estimate's units,
#: chained from frame to frame, may drift; the output's follow the frames' over about 1 / this)
UNITS_WEIGHT = 0.05
#: offline: a cell's gain from which it counts as moved (no later frame's estimate used for it)
MOVED_GAIN = 0.5
#: offline: how far (frames) the centre of the estimate a frame takes may lie after that frame
LEAD = 1.0
_MAPS = ("depth", "normal", "foreground")
_Look = Tuple[np.ndarray, np.ndarray]  # what the tests read of a frame: its grid cells' grey, its colours


class Maps(NamedTuple):
    """A frame's, the estimate's or their grid samples' maps; None where the clip has no such map."""

    depth: Optional[np.ndarray]
    normal: Optional[np.ndarray]
    foreground: Optional[np.ndarray]

    def each(self, make: Callable[[np.ndarray], np.ndarray]) -> "Maps":
        return Maps(*(None if m is None else make(m) for m in self))


@dataclasses.dataclass(frozen=True)
class StabilizeOptions:
    """How `stabilize` works (docs/video.md, "What is stabilised, and how")."""

    frame_weight: float = 0.2  # online: a new frame's settled weight where nothing moved (1: no smoothing)
    offline_weight: float = 0.1  # the same offline (its lookahead centres the estimate on each frame)
    lookahead: int = 8  # offline: the most frames after a frame whose estimate it may take (held in memory)
    motion_threshold: float = 4.0  # grey levels (0..255) of change in a flat patch that mark motion
    gate: float = 3.0  # a map change beyond this many robust noise units of the frame marks motion
    cut_threshold: float = 0.5  # colour-histogram distance (0..2) from the previous frame that starts a shot
    align_depth: bool = True  # map each frame's depth onto the estimate by scale and shift
    follow_camera: bool = True  # move the estimate with the camera's zoom and shift

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # "0.2" or "no" from a config file: refused, not misread
            value, flag = getattr(self, f.name), f.type == "bool"
            is_bool = isinstance(value, (bool, np.bool_))
            if not (is_bool if flag else isinstance(value, numbers.Real) and not is_bool):
                raise InputError(f"{f.name} must be {'True or False' if flag else 'a number'}, got {value!r}")
        for name in ("frame_weight", "offline_weight"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        for name in ("motion_threshold", "gate", "cut_threshold"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)}")
        if not isinstance(self.lookahead, numbers.Integral) or not 0 <= self.lookahead <= 100:  # bools refused above
            raise InputError(f"lookahead must be a whole number of frames in 0..100, got {self.lookahead!r}")

    @classmethod
    def from_keywords(cls, options: Mapping[str, Any]) -> "StabilizeOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"stabilize: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**options)


def stabilize(frames: Iterable[Any], mode: str = "online", **options: Any) -> Iterator[Any]:
    """A clip's predictions, stabilised over time: one output per input, in order, of the same kind
    (a `Prediction`, or a new dict with the maps replaced and its other entries kept).

    frames: `Prediction`s or mappings with `depth` (H, W), `normal` (H, W, 3), `foreground` (H, W)
        float32 and `image` (H, W, 3) uint8; a map that is None or absent is left out. Any iterator
        (a live source: online mode reads one frame at a time).
    mode: "online" (causal, no latency) or "offline" (each output up to `lookahead` frames later).
    options: fields of `StabilizeOptions`. Bad input: InputError naming the frame (docs/video.md).
    """
    opts = StabilizeOptions.from_keywords(options)
    for _, out in stabilize_pairs(((None, frame) for frame in frames), mode, opts):
        yield out


def stabilize_pairs(
    pairs: Iterable[Tuple[Any, Any]], mode: str, options: Optional[StabilizeOptions] = None
) -> Iterator[Tuple[Any, Any]]:
    """`stabilize` on (tag, prediction) pairs; each tag comes back with its frame (offline mode
    holds lookahead + 1 of them)."""
    if mode not in STABILIZE_MODES:
        raise InputError(f"stabilize: mode must be one of {', '.join(STABILIZE_MODES)}, got {mode!r}")
    return _stabilized(pairs, mode, options or StabilizeOptions())


# ------------------------------------------------------------------------------------ frames


@dataclasses.dataclass
class _Frame:
    """One input's maps, checked for shape (float32, one size; finiteness where they are read)."""

    index: int
    maps: Maps
    image: np.ndarray

    @property
    def size(self) -> Tuple[int, int]:
        return (int(self.image.shape[0]), int(self.image.shape[1]))

    @property
    def tasks(self) -> Tuple[bool, ...]:
        return tuple(m is not None for m in self.maps)

    def check_finite(self, names: Iterable[str] = _MAPS) -> None:
        """InputError for the first of the maps `names` that holds NaN or infinity."""
        for name, a in zip(_MAPS, self.maps):
            if name in names and a is not None and not np.isfinite(a.sum()) and not np.isfinite(a).all():
                raise InputError(  # NaN, inf: so is the sum
                    f"stabilize: frame {self.index}: {name} holds NaN or infinity; a broken model output cannot "
                    f"be stabilised"
                )


def _read(item: Any, index: int) -> _Frame:
    if not isinstance(item, (Prediction, Mapping)):
        raise InputError(
            f"stabilize: frame {index} is a {type(item).__name__}; expected a Prediction or a mapping with "
            f"depth, normal, foreground and image"
        )
    field = item.get if isinstance(item, Mapping) else lambda name: getattr(item, name)
    image = field("image")
    if image is None:
        raise InputError(f"stabilize: frame {index} has no image; the motion test needs the frame (H, W, 3) uint8")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise InputError(
            f"stabilize: frame {index}: image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}"
        )
    maps: List[Optional[np.ndarray]] = []
    for name, channels in zip(_MAPS, ((), (3,), ())):
        a = field(name)
        if a is not None:
            a, want = np.asarray(a), image.shape[:2] + channels
            if a.shape != want or not np.issubdtype(a.dtype, np.number):
                raise InputError(
                    f"stabilize: frame {index}: {name} must be {'x'.join(map(str, want))} numbers like its image, "
                    f"got {a.shape} {a.dtype}"
                )
            a = np.ascontiguousarray(a, np.float32)
        maps.append(a)
    return _Frame(index, Maps(*maps), image)


def _rebuild(item: Any, maps: Maps, image: np.ndarray) -> Any:
    if isinstance(item, Prediction):
        return Prediction(image, *maps, item.depth_inverse, item.regions)
    out = dict(item, image=image)
    out.update((name, value) for name, value in zip(_MAPS, maps) if value is not None)
    return out


# ------------------------------------------------------------------------------ the grid


def _grid_shape(size: Tuple[int, int]) -> Tuple[int, int]:
    return (-(-size[0] // GRID), -(-size[1] // GRID))


def _look(image: np.ndarray) -> _Look:
    """What the tests read of a frame's image: each grid cell's grey mean (float32, 0..255), and the
    colour histogram of sampled pixels (4 levels per channel, 64 bins summing to 1)."""
    q = image[:: 2 * GRID, :: 2 * GRID] >> 6
    bins = (q[..., 0].astype(np.intp) << 4) | (q[..., 1].astype(np.intp) << 2) | q[..., 2]
    h = np.bincount(bins.ravel(), minlength=64).astype(np.float64)
    return _cell_grey(image), h / max(1.0, h.sum())


def _cell_grey(image: np.ndarray) -> np.ndarray:
    """Each grid cell's grey mean over every other row of it (a box filter, so the camera's fit
    sees no aliasing; half the rows halve the cost), float32; the cells of a partial last row or
    column repeat their neighbours'."""
    h, w = image.shape[0] // GRID * GRID, image.shape[1] // GRID * GRID
    if not h or not w:
        grey = image[::GRID, ::GRID].mean(axis=2, dtype=np.float32)
    else:
        grey = np.empty((h // GRID, w // GRID), np.float32)
        _kernels().cell_grey(image, GRID, grey)
    gh, gw = _grid_shape(image.shape[:2])
    if grey.shape != (gh, gw):
        grey = np.pad(grey, ((0, gh - grey.shape[0]), (0, gw - grey.shape[1])), mode="edge")
    return grey


def _dilate(m: np.ndarray, cross: bool = False) -> np.ndarray:
    """3x3 maximum (`cross`: over the four neighbours)."""
    p = np.pad(m, 1, mode="edge")
    if cross:
        return np.maximum(np.maximum(np.maximum(p[:-2, 1:-1], p[2:, 1:-1]), np.maximum(p[1:-1, :-2], p[1:-1, 2:])), m)
    rows = np.maximum(np.maximum(p[:-2], p[1:-1]), p[2:])
    return np.maximum(np.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def _image_motion(
    grey: np.ndarray, previous: np.ndarray, seen: Optional[np.ndarray], threshold: float
) -> Tuple[np.ndarray, bool]:
    """(motion in [0, 1] per cell, whether the whole frame moved): a cell's grey change against
    `previous` (moved by the camera; outside `seen`: moved) over what noise and a displacement of
    FLOW_CELLS would change, 0 up to that, 1 from twice it (docs/video.md, "Motion in the scene")."""
    change = np.abs(grey - previous)
    p = np.pad((grey + previous) * np.float32(0.5), 1, mode="edge")
    slope = np.abs(p[1:-1, 2:] - p[1:-1, :-2])  # twice the L1 slope per cell
    slope += np.abs(p[2:, 1:-1] - p[:-2, 1:-1])
    allow = slope * np.float32(FLOW_CELLS / 2)
    allow += np.float32(threshold / 2)
    change /= allow
    change -= 1.0
    np.clip(change, 0.0, 1.0, out=change)
    textured = slope >= np.float32(2 * threshold)
    if seen is not None:
        change[~seen] = 1.0
        textured &= seen
    count = np.count_nonzero(textured)
    if count and np.count_nonzero(change[textured] >= 0.5) > CAMERA_MOVES * count:
        return np.ones_like(change), True
    return change, False


def _squared_norms(n: np.ndarray) -> np.ndarray:
    """x^2 + y^2 + z^2 of rows of xyz (rows, 3 w): (rows, w). (No matrix product: numpy's BLAS
    may start threads for one, which spin on the second core after it.)"""
    q = n * n
    out = q[:, 0::3] + q[:, 1::3]
    out += q[:, 2::3]
    return out


# ------------------------------------------------------------------------------ depth alignment


def _fit(x: np.ndarray, y: np.ndarray, noise_ratio: float) -> Tuple[float, float]:
    """Scale and shift of `s * x + b ~ y`, Huber-weighted (IRLS, three rounds), by Deming regression
    (`y`'s noise `noise_ratio` times `x`'s): plain least squares would shrink the scale every frame."""
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


# ------------------------------------------------------------------------------ the filter


def _at_grid(maps: Maps) -> Maps:
    """The maps at the grid's pixels (every GRID-th row and column)."""
    return maps.each(lambda m: np.ascontiguousarray(m[::GRID, ::GRID]))


@dataclasses.dataclass
class _Step:
    """The filter after one frame."""

    maps: Maps  # the estimate (new arrays, never written again)
    gain: np.ndarray  # (2, gh, gw): the gain of depth and normals [0] and of the foreground [1]
    age: np.ndarray  # (2, gh, gw): the mean age (frames) of what the estimate holds, per cell
    began: bool  # the frame began a shot (taken as it is)
    camera_moved: bool  # the estimate was moved with the camera (or replaced: everything moved)
    units: Tuple[float, float]  # the estimate's depth to the output's: scale, shift
    shown: Optional[np.ndarray] = None  # with `shown`: the depth in the output's units


class _Shot:
    """The running estimate of one shot: the maps, per grid cell the gain (the filter's variance
    in units of a frame's noise) and the mean age, the previous frame's look, the depth units."""

    def __init__(self, frame: _Frame, opts: StabilizeOptions, look: _Look, weight: float) -> None:
        self.opts, self.size, self.tasks = opts, frame.size, frame.tasks
        self.maps = frame.maps
        self.spare: List[Maps] = []  # offline: the estimates of frames already out (this shot's)
        self.samples = _at_grid(frame.maps)  # the estimate's maps at the grid's pixels
        gh, gw = _grid_shape(frame.size)
        self.gain = np.ones((2, gh, gw), np.float32)  # a new shot takes its first frame as it is
        self.age = np.zeros((2, gh, gw), np.float32)
        weights = np.array([weight, weight * FOREGROUND_WEIGHT], np.float32)
        #: random-walk noise per frame over the frame's, of each gain (its settled value is the weight)
        self.q = None if weight >= 1.0 else (weights * weights / (1.0 - weights))[:, None, None]
        self.grey, self.histogram = look  # the previous frame's
        self.grid_centre = ((gh - 1) / 2.0, (gw - 1) / 2.0)
        self.centre = ((GRID * gh - 1) / 2.0, (GRID * gw - 1) / 2.0)  # the grid's centre in pixels
        self.carried = (0.0, 0.0)  # the estimate's rounding from its whole-pixel shifts
        self.motion = STILL  # the camera's last motion, in cells
        self.alignment = (1.0, 0.0)  # the last frame's depth scale and shift onto the estimate
        self.output_units = (1.0, 0.0)  # the leaky average of the frames' units

    def update(self, frame: _Frame, look: _Look, shown: bool) -> _Step:
        """The estimate after `frame` (with `shown`, also its depth in the output's units)."""
        previous, seen, motion = self.grey, None, STILL
        if self.opts.follow_camera:
            motion, previous, seen = estimate_motion(self.grey, look[0], CAMERA_STILL / GRID, self.motion)
            self.motion = motion
        moving, everything = _image_motion(look[0], previous, seen, self.opts.motion_threshold)
        self.grey, self.histogram = look
        warp, prior, age, theirs = None, self.gain, self.age, self.samples
        if everything:
            self.carried = (0.0, 0.0)
        elif motion is not STILL:
            warp, prior, age = self._follow(motion)
            pairs = zip(self.maps, frame.maps)
            moved = (None if m is None else warp.samples(m, f, GRID) for m, f in pairs)  # type: ignore[arg-type]
            theirs = Maps(*moved).each(np.ascontiguousarray)  # the estimate at the grid's pixels, moved
        mine = _at_grid(frame.maps)
        if not all(m is None or np.isfinite(m.sum()) for m in mine):
            frame.check_finite()
        person = None  # inside the foreground in both
        if mine.foreground is not None and theirs.foreground is not None:
            person = (mine.foreground >= 0.5) & (theirs.foreground >= 0.5)
        s, b = self._align(mine, theirs, moving, prior, person) if frame.maps.depth is not None else (1.0, 0.0)
        self.alignment, w = (s, b), UNITS_WEIGHT  # the output's units: a leaky average, scale geometric
        scale, shift = self.output_units
        self.output_units = (scale ** (1.0 - w) * (1.0 / s) ** w, (1.0 - w) * shift + w * (-b / s))
        gain = self._gain(mine, theirs, moving, prior, person)
        depth_shown = np.empty(self.size, np.float32) if shown and frame.maps.depth is not None else None
        self.samples = mine.each(np.empty_like)
        out = self._blend(frame, warp, gain, depth_shown)
        self.maps, self.gain = out, gain
        self.age = (1.0 - gain) * (age + 1.0)
        followed = motion is not STILL or everything
        return _Step(out, gain, self.age, False, followed, self.output_units, depth_shown)

    def _follow(self, motion: Motion) -> Tuple[Warp, np.ndarray, np.ndarray]:
        """The warp that moves the estimate with the camera, and its gains and ages moved (new to the
        frame: gain 1, age 0)."""
        warp, self.carried = plan_warp(motion.scaled(GRID), self.size, self.centre, self.carried)
        cells, _ = plan_warp(motion, self.gain.shape[1:], self.grid_centre)
        ones = np.ones(self.gain.shape[1:], np.float32)
        prior = np.stack([cells.apply(g, ones) for g in self.gain])
        if warp.shift is None:  # a zoom's rounding is not carried: the estimate is that much less sure
            prior += np.float32(ZOOM_NOISE)
        age = np.stack([cells.apply(a, ones * 0) for a in self.age])
        return warp, prior, age

    def _gain(
        self, mine: Maps, theirs: Maps, moving: np.ndarray, prior: np.ndarray, person: Optional[np.ndarray]
    ) -> np.ndarray:
        """The filter's gain per grid cell: 1 where the image, the mask or (inside the person) a map
        moved; elsewhere the Kalman gain of a random walk."""
        (s, b), still = self.alignment, moving < 0.5
        if person is not None:
            flip = np.abs(mine.foreground - theirs.foreground)  # type: ignore[operator]
            flip -= np.float32(MASK_FLIP)
            flip *= np.float32(1.0 / (1.0 - MASK_FLIP))
            moving = np.maximum(moving, flip)
        quiet = still if person is None else still & person
        if np.count_nonzero(quiet) < MIN_ALIGN_PIXELS:
            quiet = still if np.count_nonzero(still) >= MIN_ALIGN_PIXELS else np.ones_like(still)
        moved = np.ones((2,) + moving.shape, np.float32)  # 1 + motion; the gates raise it, then 1 comes off
        moved[0] += _dilate(moving)  # depth and normals: a margin of one cell around what moved
        moved[1] += _dilate(moving, cross=True)  # the foreground: its edges are the image's: a thinner margin

        def gate(change: np.ndarray, robust: float, floor: float, power: int) -> None:
            """Depth and normals move where `change` passes `gate` (to `power`) of its robust noise."""
            noise = max(robust * float(np.median(_sample(change[quiet]))), floor)
            change *= np.float32(1.0 / (self.opts.gate**power * noise))
            if person is not None:
                change *= person  # the background's maps are the model's guess: no test
            np.maximum(moved[0], change, out=moved[0])

        if mine.depth is not None and theirs.depth is not None:
            r = mine.depth * np.float32(s)
            r += np.float32(b)
            r -= theirs.depth
            gate(np.abs(r, out=r), 1.4826, 1e-4 * (float(np.ptp(theirs.depth)) + 1e-12), 1)
        if mine.normal is not None and theirs.normal is not None:
            d = mine.normal - theirs.normal
            gate(_squared_norms(d.reshape(d.shape[0], -1)), 1.4826**2, 1e-6, 2)  # squared chord, ~ squared angle
        moved -= 1.0
        np.clip(moved, 0.0, 1.0, out=moved)
        if self.q is None:
            return np.ones_like(moved)
        k = prior + self.q
        k /= k + 1.0
        return np.maximum(k, moved, out=k)  # a cell that moved takes the frame as it is

    def _align(
        self, mine: Maps, theirs: Maps, moving: np.ndarray, prior: np.ndarray, person: Optional[np.ndarray]
    ) -> Tuple[float, float]:
        """Scale and shift of this frame's depth onto the estimate: the first fit docs/video.md lists
        whose scale is positive and within MAX_SCALE_STEP of the previous frame's."""
        if not self.opts.align_depth:
            return 1.0, 0.0
        x, y = mine.depth, theirs.depth
        assert x is not None and y is not None
        fits: List[Callable[[], Tuple[float, float]]] = []
        if person is not None:
            still = person & (moving < 0.5)
            if np.count_nonzero(still) >= MIN_ALIGN_PIXELS:  # noise ratio: the estimate's noise, in frames'
                fits.append(lambda: _fit(_sample(x[still]), _sample(y[still]), float(prior[0][still].mean())))
            if np.count_nonzero(person) >= MIN_ALIGN_PIXELS:  # moved: pixels no longer match, their spread does
                fits.append(lambda: match_spread(_sample(x[person]), _sample(y[person])))
        fits.append(lambda: match_spread(_sample(x.ravel()), _sample(y.ravel())))
        for fit in fits:
            s, b = fit()
            if np.isfinite(b) and s > 0 and 1.0 / MAX_SCALE_STEP <= s / self.alignment[0] <= MAX_SCALE_STEP:
                return s, b
        return self.alignment  # nothing fits: the previous frame's alignment

    def _blend(self, frame: _Frame, warp: Optional[Warp], gain: np.ndarray, shown: Optional[np.ndarray]) -> Maps:
        """estimate + gain * (frame - estimate) (new arrays), the estimate moved by `warp`; also `shown`
        (the depth in the output's units) and `samples` (it at the grid's pixels). InputError for a
        map not finite."""
        kernels, (h, w), f32 = _kernels(), frame.size, np.float32
        identity = warp is None
        if warp is None:  # the kernels' types: the warp's arrays, unread
            warp = Warp(np.zeros(h, np.intp), np.zeros(w, np.intp), np.ones(h, bool), np.ones(w, bool), (0, 0))
        moved = (warp.rows, warp.cols, warp.rows_inside, warp.cols_inside, identity)
        out = self.spare.pop() if self.spare else self.maps.each(np.empty_like)
        (depth, normal, foreground), estimate = frame.maps, self.maps
        calls: List[Tuple[str, Callable[..., bool], Tuple[Any, ...]]] = []
        if depth is not None:
            units = tuple(map(f32, self.alignment)) + (out.depth, self.samples.depth)
            show = (np.empty((0, 0), f32) if shown is None else shown,) + tuple(map(f32, self.output_units))
            calls.append(("depth", kernels.blend_depth, (estimate.depth, depth, *moved, gain[0], GRID) + units + show))
        if foreground is not None:
            limit = MASK_STEP * gain[1] / np.maximum(1.0 - gain[1], 1e-6)
            mask = (gain[1], limit, GRID, out.foreground, self.samples.foreground)
            calls.append(("foreground", kernels.blend_foreground, (estimate.foreground, foreground, *moved) + mask))
        if normal is not None:
            unit = (gain[0], GRID, f32(TASKS["normal"].unit_eps or 0.0), out.normal, self.samples.normal)
            calls.append(("normal", kernels.blend_normal, (estimate.normal, normal, *moved) + unit))
        # the lower rows on a second core (the kernels release the GIL): with the model on a GPU the
        # CPU's cores are the stabiliser's (online, 1280x720: about 20 ms a frame on one core, 15 on two)
        finite = _halves([(kernel, args) for _, kernel, args in calls], h)
        broken = [name for (name, _, _), ok in zip(calls, finite) if not ok]
        if broken:
            frame.check_finite(broken)
        return out


def _kernels() -> Any:
    require("numba", "stabilize")  # the install hint, before the kernels' import needs it
    from . import kernels

    return kernels


def _halves(calls: List[Tuple[Callable[..., bool], Tuple[Any, ...]]], height: int) -> List[bool]:
    """Each kernel run on rows (top, bottom, *args): the upper half here, the lower on the helper
    thread (the kernels release the GIL); whether each found its map finite."""
    middle = min(height, (height // 2 + GRID - 1) // GRID * GRID)  # whole grid rows: the samples' rows apart
    lower = _helper(os.getpid()).submit(lambda: [kernel(middle, height, *args) for kernel, args in calls])
    upper = [kernel(0, middle, *args) for kernel, args in calls]
    return [a and b for a, b in zip(upper, lower.result())]


@functools.lru_cache(maxsize=None)
def _helper(process: int) -> concurrent.futures.ThreadPoolExecutor:
    """The thread that runs the lower halves, one per process (a forked child has its own)."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="david-infer-stabilize")


def _stabilized(pairs: Iterable[Tuple[Any, Any]], mode: str, opts: StabilizeOptions) -> Iterator[Tuple[Any, Any]]:
    """Frames in, outputs out: shots begun at cuts and size changes; online each output as its frame
    comes, offline each held until its lookahead is in."""
    online = mode == "online"
    shot: Optional[_Shot] = None
    held: Deque[_Held] = collections.deque()
    for index, (tag, item) in enumerate(pairs):
        frame = _read(item, index)
        look = _look(frame.image)
        if shot is not None and frame.tasks != shot.tasks:
            have, had = (", ".join(n for n, on in zip(_MAPS, t) if on) or "none" for t in (frame.tasks, shot.tasks))
            raise InputError(
                f"stabilize: frame {frame.index} has maps {have}, the frames before it {had}; every frame of a "
                f"clip needs the same maps"
            )
        if (  # a cut: the first frame, another size, or the colours jump
            shot is None
            or frame.size != shot.size
            or float(np.abs(look[1] - shot.histogram).sum()) > opts.cut_threshold
        ):
            frame.check_finite()  # taken as it is
            shot = _Shot(frame, opts, look, opts.frame_weight if online else opts.offline_weight)
            step = _Step(shot.maps, shot.gain, shot.age, True, False, shot.output_units, shot.maps.depth)
        else:
            step = shot.update(frame, look, shown=online)
        if online:
            yield tag, _rebuild(item, step.maps._replace(depth=step.shown), frame.image)
            continue
        held.append(_Held(tag, _light(item), frame.image, step, shot))
        if len(held) > opts.lookahead:
            yield _smoothed(held, opts.lookahead)
            done = held.popleft()
            if done.shot is shot and not done.step.began and done.step.maps is not shot.maps:
                shot.spare.append(done.step.maps)  # its arrays for a later estimate: no new pages per frame
    while held:
        yield _smoothed(held, opts.lookahead)
        held.popleft()


# ------------------------------------------------------------------------------ offline


@dataclasses.dataclass
class _Held:
    """A frame the offline smoother holds until its lookahead is in."""

    tag: Any
    item: Any  # the input without its maps and image
    image: np.ndarray
    step: _Step
    shot: _Shot


def _light(item: Any) -> Any:
    """What offline mode keeps of an input until it yields it: no maps, no image."""
    if isinstance(item, Prediction):
        return Prediction(np.empty((0, 0, 3), np.uint8), depth_inverse=item.depth_inverse, regions=item.regions)
    return {k: v for k, v in item.items() if k not in _MAPS and k != "image"}


def _smoothed(held: Deque[_Held], lookahead: int) -> Tuple[Any, Any]:
    """The first held frame's output: per cell, the estimate of a held frame (`_choices`), the depth
    in the output's units."""
    ahead = min(lookahead, len(held) - 1)  # last: the latest frame in the shot with the camera still since the first
    last = next((j - 1 for j in range(1, ahead + 1) if held[j].step.began or held[j].step.camera_moved), ahead)
    gh, gw = held[0].step.gain.shape[1:]
    choices = [_choices(held, last, layer) if last else np.full((gh, gw), last, np.uint8) for layer in (0, 1)]
    units = tuple(np.float32(v) for v in held[last].step.units)
    out: List[Optional[np.ndarray]] = []
    calls: List[Tuple[Callable[..., bool], Tuple[Any, ...]]] = []
    copy_runs = _kernels().copy_runs
    for index, channels in enumerate((1, 3, 1)):
        sources = [held[j].step.maps[index] for j in range(last + 1)]
        target = None if sources[0] is None else np.empty_like(sources[0])
        out.append(target)
        if target is None:
            continue
        h = target.shape[0]
        rows, starts, ends, picks = _runs(choices[index // 2], GRID * channels, target.size // h)
        scale = units if index == 0 else (np.float32(1.0), np.float32(0.0))
        for j in np.unique(picks).tolist():
            mine = picks == j
            flat = (target.reshape(h, -1), sources[j].reshape(h, -1))
            calls.append((copy_runs, flat + (rows[mine], starts[mine], ends[mine], GRID) + scale))
    _halves(calls, held[0].image.shape[0])
    first = held[0]
    return first.tag, _rebuild(first.item, Maps(*out), first.image)


def _runs(choice: np.ndarray, run: int, width: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The runs of cells along each grid row that take one source: (grid row, first value, end value,
    source), values of a row of `width` with `run` per cell."""
    starts = np.ones(choice.shape, bool)
    starts[:, 1:] = choice[:, 1:] != choice[:, :-1]
    rows, cells = np.nonzero(starts)
    ends = np.append(cells[1:], choice.shape[1])
    ends[np.append(rows[1:] != rows[:-1], True)] = choice.shape[1]  # a row's last run ends with it
    return rows, cells * run, np.minimum(ends * run, width), choice[rows, cells]


def _choices(held: Deque[_Held], last: int, layer: int) -> np.ndarray:
    """Per grid cell, which held frame j (0..last) gives the first one its estimate: the latest whose
    mean age reaches back to within LEAD frames after the first, never one after the cell moved."""
    choice = np.zeros(held[0].step.gain.shape[1:], np.uint8)
    for j in range(1, last + 1):
        np.copyto(choice, j, where=held[j].step.age[layer] >= j - LEAD)
    for j in range(1, last + 1):
        np.copyto(choice, j - 1, where=(held[j].step.gain[layer] >= MOVED_GAIN) & (choice >= j))
    return choice
