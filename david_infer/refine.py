"""People at any size (`refine="people"`): a second, zoomed pass per person found in pass 1's
foreground mask (or the caller's `boxes=`), checked against pass 1 and pasted back at full
resolution with a feathered seam, its depth aligned to pass 1; `RegionTracker` steadies a clip's
regions. docs/refine.md says each step, its defaults and what it costs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ._optional import require
from .errors import InputError, positive_int
from .inputs import Decoded, decode
from .prediction import Box, Prediction, Region
from .stages import PostOptions, open_options
from .tasks import TASKS
from .visualize import box_reduce

#: `refine=` and --refine: "none", or "people" (the regions found in pass 1's mask)
REFINE_MODES = ("none", "people")
#: fewest cells of pass 1's grid a depth fit is made on (else pixels of the whole box), and the
#: most it uses (evenly spaced: a robust fit needs no more)
MIN_FIT_CELLS = 16
MAX_FIT_CELLS = 20_000
#: Huber's constant (95% efficiency on Gaussian noise) and the reweighting rounds of the fit
HUBER_K = 1.345
FIT_ROUNDS = 20
#: video: the overlap that makes a region the same person as the previous frame's, the share of a
#: shrink taken per frame, the frames a region not found is held
MATCH_IOU = 0.2
SHRINK = 0.2
HOLD_FRAMES = 3


class _AsOpened:
    def __repr__(self) -> str:
        return "AS_OPENED"


#: the per-call default of `refine=`: as the runtime was opened
AS_OPENED: Any = _AsOpened()


@dataclass(frozen=True)
class RefineOptions:
    """How the second pass finds, runs and pastes its regions (docs/refine.md, "What it does")."""

    threshold: float = 0.5  # the mask level that counts as a person
    min_model_pixels: int = 64  # the fewest of pass 1's model pixels a part of the mask covers to be a region
    margin: float = 0.1  # each box is padded by this share of its longer side on every side
    max_regions: int = 8  # the most regions refined per photo, the largest first
    feather: float = 0.08  # the seam's width, as a share of the crop's side (inside the margin)
    min_gain: float = 1.25  # pass 2 runs where it gives a crop this many times pass 1's model pixels across
    min_agreement: float = 0.3  # the least IoU of pass 2's mask with pass 1's in the box (0: keep every pass 2)

    def __post_init__(self) -> None:
        positive_int("min_model_pixels", self.min_model_pixels, owner="refine: ")
        positive_int("max_regions", self.max_regions, owner="refine: ")
        for name, low, high in (
            ("threshold", 0.0, 1.0),
            ("margin", 0.0, 1.0),
            ("feather", 0.0, 0.5),
            ("min_gain", 1.0, 100.0),
            ("min_agreement", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise InputError(f"refine: {name} must be a number in [{low:g}, {high:g}], got {value!r}")

    def as_record(self) -> dict:
        """The options as JSON values."""
        return dataclasses.asdict(self)


def as_refine_options(value: Any) -> Optional[RefineOptions]:
    """`refine=` as options: None or "none" -> None (no second pass), "people" -> the defaults, a
    RefineOptions as given, a mapping of its fields; InputError otherwise."""
    if value is None or value == "none":
        return None
    if value == "people":
        return RefineOptions()
    if isinstance(value, RefineOptions):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in dataclasses.fields(RefineOptions)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise InputError(f"refine: unknown option(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
        return RefineOptions(**value)
    raise InputError(
        f"refine must be one of {', '.join(repr(m) for m in REFINE_MODES)}, None, a david_infer.RefineOptions "
        f"or a mapping of its fields, got {value!r}"
    )


def check_refine(options: Optional[RefineOptions], tasks: Sequence[str], model: Any) -> Optional[RefineOptions]:
    """`options`, when the model has the foreground mask the people are found in and SciPy (which
    splits it into parts) is installed; InputError or BackendUnavailable (with the install hint)
    otherwise."""
    if options is None:
        return None
    if not any(TASKS[task].picture == "matte" for task in tasks):  # the mask people are found in
        raise InputError(
            f"{model}: refine='people' finds people in the model's foreground mask, and this model predicts "
            f"{', '.join(tasks)} only; use a multi-task or foreground model, or pass your own boxes= to predict"
        )
    require("scipy.ndimage", "finding people in the mask (refine)")
    return options


# ------------------------------------------------------------------------------------- regions


@dataclass
class Planned:
    """A region before pass 2: the person's box (parts merged: their union) and its padded box."""

    box: Box
    padded: Box


def box_area(box: Box) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def _touch(a: Box, b: Box) -> bool:
    """Whether two boxes overlap or share an edge or corner."""
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _union(a: Box, b: Box) -> Box:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _clamped(box: Box, size: Tuple[int, int]) -> Box:
    """`box` cut to the image (h, w)."""
    return (max(0, box[0]), max(0, box[1]), min(size[1], box[2]), min(size[0], box[3]))


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 for boxes without area)."""
    inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = box_area(a) + box_area(b) - inter
    return inter / union if union else 0.0


def pad_box(box: Box, margin: float, size: Tuple[int, int]) -> Box:
    """`box` grown by `margin` of its longer side on every side, clamped to the image (h, w)."""
    m = int(round(margin * max(box[2] - box[0], box[3] - box[1])))
    return _clamped((box[0] - m, box[1] - m, box[2] + m, box[3] + m), size)


def square_crop(box: Box, size: Tuple[int, int]) -> Box:
    """The square around `box` (its longer side), centred on it and shifted inside the image (h, w);
    as wide (high) as the image where the image is narrower than the square. Contains `box`."""
    side = max(box[2] - box[0], box[3] - box[1])

    def span(low: int, high: int, limit: int) -> Tuple[int, int]:
        extent = min(side, limit)
        start = min(max((low + high - extent) // 2, 0), limit - extent)
        return start, start + extent

    x0, x1 = span(box[0], box[2], size[1])
    y0, y1 = span(box[1], box[3], size[0])
    return (x0, y0, x1, y1)


def merge_regions(regions: List[Planned]) -> List[Planned]:
    """Regions whose padded boxes overlap or touch merged into one, until none do; largest first."""
    merged = list(regions)
    while True:
        n = len(merged)
        pairs = ((i, j) for i in range(n) for j in range(i + 1, n) if _touch(merged[i].padded, merged[j].padded))
        pair = next(pairs, None)
        if pair is None:
            return sorted(merged, key=lambda r: (-box_area(r.box), r.box))
        a, b = merged[pair[0]], merged.pop(pair[1])
        merged[pair[0]] = Planned(_union(a.box, b.box), _union(a.padded, b.padded))


def plan_regions(boxes: Sequence[Box], size: Tuple[int, int], options: RefineOptions) -> List[Planned]:
    """Person boxes -> regions: each padded by the margin, overlapping or touching ones merged,
    largest first (all of them: the caller keeps `max_regions`)."""
    return merge_regions([Planned(b, pad_box(b, options.margin, size)) for b in boxes])


def grid_step(scale: float) -> int:
    """Image pixels per cell of pass 1's grid (about one model pixel), for pass 1's `scale`
    (model pixels per image pixel)."""
    return max(1, int(1.0 / scale))


def people_in_mask(mask: np.ndarray, scale: float, options: RefineOptions) -> List[Box]:
    """The boxes of the mask's 8-connected parts (at or above the threshold) that cover at least
    `min_model_pixels` of pass 1's model pixels; found on pass 1's grid (`grid_step`)."""
    ndimage = require("scipy.ndimage", "finding people in the mask (refine)")
    h, w = mask.shape[:2]
    step = grid_step(scale)
    grid = np.asarray(mask[step // 2 :: step, step // 2 :: step]) >= options.threshold
    labels, count = ndimage.label(grid, structure=np.ones((3, 3), bool))
    cells = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    boxes = []
    for index, found in enumerate(ndimage.find_objects(labels)):
        if found is None or cells[index] * (step * scale) ** 2 < options.min_model_pixels:
            continue
        rows, cols = found
        boxes.append((cols.start * step, rows.start * step, min(w, cols.stop * step), min(h, rows.stop * step)))
    return boxes


def check_boxes(boxes: Any, size: Tuple[int, int], name: str) -> List[Box]:
    """Caller's boxes as whole pixels inside the image (h, w): (x0, y0, x1, y1) with x0 < x1 and
    y0 < y1, fractions widened to whole pixels, parts outside the image cut off; InputError for
    anything else, naming the box."""
    if isinstance(boxes, np.ndarray):
        boxes = boxes.tolist()
    if isinstance(boxes, (str, bytes)) or not isinstance(boxes, Sequence):
        raise InputError(f"{name}: boxes must be a sequence of (x0, y0, x1, y1), got {type(boxes).__name__}")
    out: List[Box] = []
    for i, box in enumerate(boxes):
        values = list(box) if isinstance(box, (Sequence, np.ndarray)) and not isinstance(box, (str, bytes)) else []
        numbers = all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values)
        if len(values) != 4 or not numbers or not all(np.isfinite(float(v)) for v in values):
            raise InputError(f"{name}: boxes[{i}] must be four finite numbers (x0, y0, x1, y1), got {box!r}")
        x0, y0, x1, y1 = (float(v) for v in values)
        if not (x0 < x1 and y0 < y1):
            raise InputError(f"{name}: boxes[{i}] = {box!r} is empty; expected x0 < x1 and y0 < y1 (pixels)")
        clamped = _clamped((int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))), size)
        if clamped[0] >= clamped[2] or clamped[1] >= clamped[3]:
            raise InputError(f"{name}: boxes[{i}] = {box!r} lies outside the {size[1]}x{size[0]} image")
        out.append(clamped)
    return out


class RegionTracker:
    """The regions of a clip's frames, steadied over time (docs/refine.md, "Video"): `update` takes
    one frame's regions (from `plan_regions`) and returns the steadied ones. A frame of another
    size starts afresh."""

    def __init__(self) -> None:
        self._tracks: List[_Track] = []
        self._size: Optional[Tuple[int, int]] = None

    def update(self, found: Sequence[Planned], size: Tuple[int, int]) -> List[Planned]:
        if size != self._size:
            self._tracks, self._size = [], size
        pairs = sorted(
            ((iou(t.padded(), f.padded), ti, fi) for ti, t in enumerate(self._tracks) for fi, f in enumerate(found)),
            reverse=True,
        )
        for track in self._tracks:
            track.missed += 1  # back to 0 where it follows a region found: the tracks matched
        matched_found = set()
        for score, ti, fi in pairs:
            if score < MATCH_IOU:
                break
            if self._tracks[ti].missed and fi not in matched_found:
                self._tracks[ti].follow(found[fi])
                matched_found.add(fi)
        self._tracks = [t for t in self._tracks if t.missed <= HOLD_FRAMES]
        self._tracks += [_Track(f) for fi, f in enumerate(found) if fi not in matched_found]
        return merge_regions([Planned(t.box, _clamped(t.padded(), size)) for t in self._tracks])


class _Track:
    """One region followed over frames: its person box and its padded box (float, steadied)."""

    def __init__(self, region: Planned) -> None:
        self.box = region.box
        self.edges = np.array(region.padded, np.float64)
        self.missed = 0

    def follow(self, region: Planned) -> None:
        """Grow at once to `region`'s padded box, shrink towards it by SHRINK of the difference."""
        new = np.array(region.padded, np.float64)
        grow = np.concatenate([new[:2] < self.edges[:2], new[2:] > self.edges[2:]])
        self.edges = np.where(grow, new, self.edges + SHRINK * (new - self.edges))
        self.box, self.missed = region.box, 0

    def padded(self) -> Box:
        x0, y0, x1, y1 = self.edges
        return (int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1)))


# ------------------------------------------------------------------------------- depth alignment


def fit_scale_shift(x: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
    """Scale and shift of `s * x + b ~ y`: least squares, Huber-weighted (iteratively reweighted, the
    residuals' scale their median absolute deviation) against wrong pixels; NaN where `x` has no spread."""
    x64, y64 = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    weights = np.ones_like(x64)
    s = b = float("nan")
    for _ in range(FIT_ROUNDS):
        root = np.sqrt(weights)
        solution, _, rank, _ = np.linalg.lstsq(np.stack([x64 * root, root], axis=1), y64 * root, rcond=None)
        if rank < 2:
            return float("nan"), float("nan")
        previous, (s, b) = (s, b), (float(solution[0]), float(solution[1]))
        residual = np.abs(s * x64 + b - y64)
        spread = 1.4826 * float(np.median(residual))
        if spread <= 1e-12 * (1.0 + float(np.abs(y64).max())) or np.allclose(previous, (s, b), rtol=1e-9, atol=0):
            break
        weights = np.minimum(1.0, HUBER_K * spread / np.maximum(residual, 1e-300))
    return s, b


def match_spread(x: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
    """Scale and shift that give `x` the median and interquartile range of `y` (scale 1 where
    either has no spread)."""
    xq, yq = np.percentile(x, [25, 50, 75]), np.percentile(y, [25, 50, 75])
    s = float((yq[2] - yq[0]) / (xq[2] - xq[0])) if xq[2] > xq[0] and yq[2] > yq[0] else 1.0
    return s, float(yq[1] - s * xq[1])


def align_depth(
    pass2: np.ndarray, pass1: np.ndarray, person: Optional[np.ndarray], step: int
) -> Tuple[float, float, str]:
    """(scale, shift, how) mapping pass 2's depth onto pass 1's inside a box (both the box's pixels;
    `person`: pass 1's mask there, at or above the threshold, or None), on pass 1's grid of `step`
    pixels per cell (pixels where that leaves too few cells)."""
    if -(-pass1.shape[0] // step) * -(-pass1.shape[1] // step) < MIN_FIT_CELLS:
        step = 1
    x, y = box_reduce(pass2, step).ravel(), box_reduce(pass1, step).ravel()
    if person is not None:
        cells = box_reduce(person.astype(np.float32), step).ravel() >= 0.5
        if cells.sum() >= MIN_FIT_CELLS:
            x, y = x[cells], y[cells]
    stride = max(1, x.size // MAX_FIT_CELLS)
    x, y = x[::stride], y[::stride]
    s, b = fit_scale_shift(x, y)
    if np.isfinite(s) and np.isfinite(b) and s > 0:
        return s, b, "least-squares"
    s, b = match_spread(x, y)
    return s, b, "spread"


# ------------------------------------------------------------------------------------- pasting


def feather_weights(crop: Box, size: Tuple[int, int], feather: float) -> np.ndarray:
    """(crop height, crop width) float32 weights of a pasted crop (docs/refine.md, "Paste"), continuous
    across the crop's edges inside the image (h, w): its outermost pixels there near 0."""
    x0, y0, x1, y1 = crop
    width = max(1.0, round(feather * max(x1 - x0, y1 - y0)))

    def ramp(n: int, lead: bool, trail: bool) -> np.ndarray:
        d = np.arange(n, dtype=np.float64)
        r = np.minimum((d + 0.5) / width if lead else np.ones(n), (n - d - 0.5) / width if trail else np.ones(n))
        r = np.clip(r, 0.0, 1.0)
        return r * r * (3.0 - 2.0 * r)

    return np.outer(ramp(y1 - y0, y0 > 0, y1 < size[0]), ramp(x1 - x0, x0 > 0, x1 < size[1])).astype(np.float32)


def _blend(target: np.ndarray, patch: np.ndarray, weights: np.ndarray, crop: Box) -> np.ndarray:
    """`target`'s crop becomes weights * patch + (1 - weights) * itself, in place (exactly `patch`
    where the weight is 1); returns the crop's view."""
    x0, y0, x1, y1 = crop
    view = target[y0:y1, x0:x1]
    w = weights if patch.ndim == 2 else weights[..., None]
    view[...] = patch * w + view * (1.0 - w)
    return view


@dataclass
class _Pass2:
    """One region's record so far and, once pass 2 ran, its maps."""

    region: Region
    maps: Optional[Prediction] = None


def refine_prediction(
    runtime: Any,
    image: Any,
    prediction: Prediction,
    options: RefineOptions,
    boxes: Any = None,
    tracker: Optional[RegionTracker] = None,
) -> Prediction:
    """`prediction` (pass 1 of `image` by `runtime`, a DavidRuntime) with every region's pass 2
    pasted in (in place) and `regions` set; see the module docstring. `boxes`: the caller's person
    boxes instead of the mask's; `tracker`: steadies the regions of a clip's frames."""
    maps = (prediction.depth, prediction.normal, prediction.foreground)
    if any(m is not None and not isinstance(m, np.ndarray) for m in maps):
        raise InputError(
            "refine pastes numpy maps; this runtime returns device tensors (the torch backend's "
            "output='torch'): open it with output='numpy' to refine"
        )
    decoded = (
        image if isinstance(image, Decoded) else decode(image, runtime.channel_order, None, runtime.max_image_pixels)
    )
    size = prediction.size
    scale1 = runtime.model_resolution(*size) / max(size)
    if boxes is not None:
        source, people = "boxes", check_boxes(boxes, size, decoded.name)
    else:
        check_refine(options, runtime.tasks, runtime.path)
        if prediction.foreground is None:
            raise InputError(f"{decoded.name}: refine finds people in the foreground mask; this prediction has none")
        source, people = "mask", people_in_mask(prediction.foreground, scale1, options)
    planned = plan_regions(people, size, options)
    if tracker is not None:
        planned = tracker.update(planned, size)
    entries = []
    for rank, region in enumerate(planned):
        crop = square_crop(region.padded, size)
        crop_side = max(crop[2] - crop[0], crop[3] - crop[1])
        resolution2 = runtime.model_resolution(crop[3] - crop[1], crop[2] - crop[0])
        scale2 = resolution2 / crop_side
        skip = ""
        if rank >= options.max_regions:
            skip = f"more than max_regions ({options.max_regions}) regions: the largest are refined"
        elif scale2 < options.min_gain * scale1:
            skip = (
                f"pass 1 gave its crop {crop_side * scale1:.0f} model pixels across, pass 2 would give "
                f"{resolution2}: less than min_gain ({options.min_gain:g}) times as many"
            )
        pixels = (box_area(region.box) * scale1 * scale1, None if skip else box_area(region.box) * scale2 * scale2)
        entries.append(_Pass2(Region(region.box, crop, source, "skipped" if skip else "refined", skip, pixels)))
    to_run = [entry for entry in entries if entry.region.status == "refined"]
    _run_pass2(runtime, decoded, to_run)
    for entry in to_run:
        if entry.region.status == "refined":
            _check_and_align(entry, prediction, scale1, options)
    for entry in sorted(to_run, key=lambda e: -box_area(e.region.crop)):  # the smaller crop lies on top
        if entry.region.status == "refined":
            _paste(entry, prediction, size, options, runtime.post_options)
    if prediction.depth is not None and runtime.post_options.normalize_depth and to_run:
        depth = prediction.depth
        if float(depth.min()) < 0.0 or float(depth.max()) > 1.0:
            open_options({"depth": depth}, PostOptions(normalize_depth=True))
    prediction.regions = [entry.region for entry in entries]
    return prediction


def _run_pass2(runtime: Any, decoded: Decoded, entries: Sequence[_Pass2]) -> None:
    """Every entry's crop (the same pixels, no resampling) through the model, `runtime.batch_size`
    crops per call; an entry whose run failed falls back."""
    staged = []
    for entry in entries:
        x0, y0, x1, y1 = crop = entry.region.crop
        name = f"{decoded.name} region {crop}"
        if decoded.pil is not None:
            staged.append(runtime.preprocess(Decoded(name, pil=decoded.pil.crop(crop))))
        else:
            staged.append(runtime.preprocess(Decoded(name, array=decoded.numpy()[y0:y1, x0:x1], order=decoded.order)))
    size = max(1, runtime.batch_size)
    for start in range(0, len(staged), size):
        chunk = staged[start : start + size]
        outcomes = runtime._infer_outcomes([s for _, s in chunk])
        for entry, (crop, prepared), outcome in zip(entries[start : start + size], chunk, outcomes):
            if isinstance(outcome, Exception):
                entry.region = replace(entry.region, status="fallback", reason=f"pass 2 failed: {outcome}")
            else:
                entry.maps = runtime.postprocess(crop, prepared, outcome)


def _check_and_align(entry: _Pass2, prediction: Prediction, scale1: float, options: RefineOptions) -> None:
    """The mask check (fallback below min_agreement) and the depth alignment, against pass 1."""
    maps = entry.maps
    assert maps is not None
    bx0, by0, bx1, by1 = entry.region.box
    cx0, cy0 = entry.region.crop[:2]
    inside = (slice(by0, by1), slice(bx0, bx1))
    inside_crop = (slice(by0 - cy0, by1 - cy0), slice(bx0 - cx0, bx1 - cx0))
    person = None
    if prediction.foreground is not None and maps.foreground is not None:
        person = prediction.foreground[inside] >= options.threshold
        theirs = maps.foreground[inside_crop] >= options.threshold
        union = int(np.count_nonzero(person | theirs))
        agreement = None if union == 0 else int(np.count_nonzero(person & theirs)) / union
        entry.region = replace(entry.region, agreement=agreement)
        if agreement is not None and agreement < options.min_agreement:
            entry.region = replace(
                entry.region,
                status="fallback",
                reason=f"pass 2's mask agrees with pass 1's on {agreement:.0%} of the box (intersection over "
                f"union), less than min_agreement ({options.min_agreement:g})",
            )
            return
    if prediction.depth is not None and maps.depth is not None:
        s, b, how = align_depth(maps.depth[inside_crop], prediction.depth[inside], person, grid_step(scale1))
        entry.region = replace(entry.region, depth_scale=s, depth_shift=b, alignment=how)


def _paste(
    entry: _Pass2, prediction: Prediction, size: Tuple[int, int], options: RefineOptions, post: PostOptions
) -> None:
    maps, crop = entry.maps, entry.region.crop
    assert maps is not None
    weights = feather_weights(crop, size, options.feather)
    if prediction.depth is not None and maps.depth is not None:
        aligned = maps.depth * np.float32(entry.region.depth_scale) + np.float32(entry.region.depth_shift)
        _blend(prediction.depth, aligned, weights, crop)
    if prediction.normal is not None and maps.normal is not None:
        view = _blend(prediction.normal, maps.normal, weights, crop)
        seam = weights < 1.0
        if seam.any():  # a blend of unit vectors is shorter than one
            vectors = view[seam]
            TASKS["normal"].finish(vectors, sign=1)
            view[seam] = vectors
    if prediction.foreground is not None and maps.foreground is not None:
        view = _blend(prediction.foreground, maps.foreground, weights, crop)
        if post.foreground_threshold is not None:
            view[...] = view > 0.5
