"""People at any size: a second, zoomed pass per person, pasted back at full resolution.

DAViD sees a photo at one square resolution (512 for the released files): a person who fills a
portrait gets 512 model pixels across, the same person in a 4K street scene or a group photo a few
dozen, and the maps at the photo's size are upsampled blur. `refine` (`DavidRuntime(refine="people")`,
per call, `--refine people`) adds a second pass, finding people with the model's own mask:

1. Regions. Pass 1 runs the photo as always. Its foreground mask (at or above `threshold`), on pass
   1's own grid (about one cell per model pixel), is split into 8-connected parts
   (scipy.ndimage); a part that covers fewer than `min_model_pixels` of pass 1's model pixels is
   dropped (too small for pass 1 to have seen a person in it). Each part's box is padded by
   `margin` of its longer side; padded boxes that overlap or touch are merged (until none do); the
   `max_regions` largest are kept and the others recorded as skipped. Callers may pass their own
   boxes instead (`boxes=[(x0, y0, x1, y1), ...]` from any detector): padded and merged alike.
2. Crops. A region's crop is the square around its padded box, shifted inside the photo (where the
   photo is narrower than the square, the crop is as wide as the photo and the stages pad it as
   they pad a whole photo). A crop is just an image: preprocessed, run (`batch_size` crops per
   model call) and postprocessed like any photo, so its maps are what the model gives on that crop.
   A crop that pass 1 already saw at more than 1 / `min_gain` of the model pixels pass 2 would give
   it is not run again (skipped, recorded).
3. Checks. A region whose pass 2 looks worse falls back to pass 1 (recorded): an output that is not
   finite, or a mask that agrees with pass 1's inside the box on less than `min_agreement`
   (intersection over union of the pixels at or above `threshold`).
4. Paste. Each region's depth is aligned to pass 1 inside its box by one scale and shift: least
   squares, Huber-weighted (robust), the alignment DAViD's authors evaluate with, fitted on pass
   1's grid (pass 2's depth box-averaged to it, so that pass 1's blur does not shrink the scale) on
   the person's cells (pass 1's mask) where there are MIN_FIT_CELLS of them, else on the whole box;
   where least squares gives no positive scale (so people keep their depth order), the median and
   interquartile range are matched instead. Depth, normals and mask are pasted with one feather:
   weight 1 inside the crop, falling smoothly (smoothstep) to 0 over `feather` of the crop's side
   at each crop edge that lies inside the photo (none at the photo's borders); normals are
   renormalised, a thresholded mask is thresholded again (> 0.5), a normalised depth normalised
   again where the pasted depth leaves [0, 1]. Outside every crop pass 1 stands. Overlapping crops
   are pasted largest first, so a smaller person's crop lies on top.

Cost: one model run per refined region (batched) besides pass 1, plus the crops' pre/post; a photo
without people costs the mask's labelling (milliseconds). The prediction's `regions` record every
region: its box and crop, the model pixels its box got in each pass, what became of it and why.

Video (`predict_video(refine=...)`): a `RegionTracker` steadies the regions over frames so that
crops do not jitter: each frame's regions are matched to the previous frame's (intersection over
union at least MATCH_IOU); a matched box grows at once (the person must stay inside) and shrinks by
SHRINK of the difference per frame; a region not found is held for HOLD_FRAMES frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
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
    """How the second pass finds, runs and pastes its regions (see the module docstring).

    threshold: the mask level that counts as a person (default 0.5).
    min_model_pixels: the fewest of pass 1's model pixels a part of the mask must cover to be a
        region (default 64, e.g. 8 x 8).
    margin: each box is padded by this share of its longer side on every side (default 0.1).
    max_regions: the most regions refined per photo, the largest first (default 8).
    feather: the seam's width, as a share of the crop's side (default 0.08; inside the margin).
    min_gain: a crop is run again only where pass 2 gives it at least this many times the model
        pixels across that pass 1 gave it (default 1.25).
    min_agreement: the least intersection over union of pass 2's mask with pass 1's inside the box;
        a region below it keeps pass 1 (default 0.3; 0 keeps every pass 2).
    """

    threshold: float = 0.5
    min_model_pixels: int = 64
    margin: float = 0.1
    max_regions: int = 8
    feather: float = 0.08
    min_gain: float = 1.25
    min_agreement: float = 0.3

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


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 for boxes without area)."""
    inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = box_area(a) + box_area(b) - inter
    return inter / union if union else 0.0


def pad_box(box: Box, margin: float, size: Tuple[int, int]) -> Box:
    """`box` grown by `margin` of its longer side on every side, clamped to the image (h, w)."""
    m = int(round(margin * max(box[2] - box[0], box[3] - box[1])))
    return (max(0, box[0] - m), max(0, box[1] - m), min(size[1], box[2] + m), min(size[0], box[3] + m))


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
    changed = True
    while changed:
        changed = False
        for i in range(len(merged)):
            for j in range(i + 1, len(merged)):
                if _touch(merged[i].padded, merged[j].padded):
                    a, b = merged[i], merged.pop(j)
                    merged[i] = Planned(_union(a.box, b.box), _union(a.padded, b.padded))
                    changed = True
                    break
            if changed:
                break
    return sorted(merged, key=lambda r: (-box_area(r.box), r.box))


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
    if not count:
        return []
    cells = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    cell_model_pixels = (step * scale) ** 2
    boxes = []
    for index, found in enumerate(ndimage.find_objects(labels)):
        if found is None or cells[index] * cell_model_pixels < options.min_model_pixels:
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
    h, w = size
    out: List[Box] = []
    for i, box in enumerate(boxes):
        values = list(box) if isinstance(box, (Sequence, np.ndarray)) and not isinstance(box, (str, bytes)) else None
        if (
            values is None
            or len(values) != 4
            or not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values)
            or not all(np.isfinite(float(v)) for v in values)
        ):
            raise InputError(f"{name}: boxes[{i}] must be four finite numbers (x0, y0, x1, y1), got {box!r}")
        x0, y0, x1, y1 = (float(v) for v in values)
        if not (x0 < x1 and y0 < y1):
            raise InputError(f"{name}: boxes[{i}] = {box!r} is empty; expected x0 < x1 and y0 < y1 (pixels)")
        clamped = (
            max(0, int(np.floor(x0))),
            max(0, int(np.floor(y0))),
            min(w, int(np.ceil(x1))),
            min(h, int(np.ceil(y1))),
        )
        if clamped[0] >= clamped[2] or clamped[1] >= clamped[3]:
            raise InputError(f"{name}: boxes[{i}] = {box!r} lies outside the {w}x{h} image")
        out.append(clamped)
    return out


class RegionTracker:
    """The regions of a clip's frames, steadied over time (see the module docstring): `update`
    takes one frame's regions (from `plan_regions`) and returns the steadied ones. A frame of
    another size starts afresh."""

    def __init__(self, shrink: float = SHRINK, hold: int = HOLD_FRAMES) -> None:
        self.shrink, self.hold = shrink, hold
        self._tracks: List[_Track] = []
        self._size: Optional[Tuple[int, int]] = None

    def update(self, found: Sequence[Planned], size: Tuple[int, int]) -> List[Planned]:
        if size != self._size:
            self._tracks, self._size = [], size
        pairs = sorted(
            ((iou(t.padded(), f.padded), ti, fi) for ti, t in enumerate(self._tracks) for fi, f in enumerate(found)),
            reverse=True,
        )
        matched_tracks, matched_found = set(), set()
        for score, ti, fi in pairs:
            if score < MATCH_IOU:
                break
            if ti in matched_tracks or fi in matched_found:
                continue
            self._tracks[ti].follow(found[fi], self.shrink)
            matched_tracks.add(ti)
            matched_found.add(fi)
        for ti, track in enumerate(self._tracks):
            if ti not in matched_tracks:
                track.missed += 1
        self._tracks = [t for t in self._tracks if t.missed <= self.hold]
        self._tracks += [_Track(f) for fi, f in enumerate(found) if fi not in matched_found]
        steadied = [Planned(t.box, _clamped(t.padded(), size)) for t in self._tracks]
        return merge_regions(steadied)


class _Track:
    """One region followed over frames: its person box and its padded box (float, steadied)."""

    def __init__(self, region: Planned) -> None:
        self.box = region.box
        self.edges = np.array(region.padded, np.float64)
        self.missed = 0

    def follow(self, region: Planned, shrink: float) -> None:
        new = np.array(region.padded, np.float64)
        grow = np.array(
            [new[0] < self.edges[0], new[1] < self.edges[1], new[2] > self.edges[2], new[3] > self.edges[3]]
        )
        self.edges = np.where(grow, new, self.edges + shrink * (new - self.edges))
        self.box, self.missed = region.box, 0

    def padded(self) -> Box:
        x0, y0, x1, y1 = self.edges
        return (int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1)))


def _clamped(box: Box, size: Tuple[int, int]) -> Box:
    return (max(0, box[0]), max(0, box[1]), min(size[1], box[2]), min(size[0], box[3]))


# ------------------------------------------------------------------------------- depth alignment


def fit_scale_shift(x: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
    """Scale and shift of `s * x + b ~ y`: least squares, Huber-weighted (iteratively reweighted,
    the residuals' scale from their median absolute deviation), so that a few wrong pixels (an
    occluder, a mask edge) do not pull the fit. NaN where `x` has no spread."""
    x64, y64 = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    weights = np.ones_like(x64)
    s = b = float("nan")
    for _ in range(FIT_ROUNDS):
        root = np.sqrt(weights)
        design = np.stack([x64 * root, root], axis=1)
        solution, _, rank, _ = np.linalg.lstsq(design, y64 * root, rcond=None)
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
    """(crop height, crop width) float32 weights of a pasted crop: 1 inside, falling to 0 by
    smoothstep over `feather` of the crop's longer side at each edge inside the image (h, w); none
    at the image's borders. Continuous across the crop's edge (its outermost pixels near 0)."""
    x0, y0, x1, y1 = crop
    width = max(1.0, round(feather * max(x1 - x0, y1 - y0)))

    def ramp(n: int, lead: bool, trail: bool) -> np.ndarray:
        d = np.arange(n, dtype=np.float64)
        r = np.ones(n)
        if lead:
            r = np.minimum(r, (d + 0.5) / width)
        if trail:
            r = np.minimum(r, (n - d - 0.5) / width)
        r = np.clip(r, 0.0, 1.0)
        return r * r * (3.0 - 2.0 * r)

    rows = ramp(y1 - y0, y0 > 0, y1 < size[0])
    cols = ramp(x1 - x0, x0 > 0, x1 < size[1])
    return np.outer(rows, cols).astype(np.float32)


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
    """One region's pass 2, between the checks and the paste."""

    planned: Planned
    crop: Box
    model_pixels: Tuple[float, Optional[float]]
    maps: Optional[Prediction] = None
    status: str = "refined"
    reason: str = ""
    agreement: Optional[float] = None
    depth: Tuple[Optional[float], Optional[float], str] = (None, None, "")

    def record(self, source: str) -> Region:
        s, b, how = self.depth if self.status == "refined" else (None, None, "")
        return Region(
            self.planned.box, self.crop, source, self.status, self.reason, self.model_pixels, self.agreement, s, b, how
        )


def _mask_agreement(pass1: np.ndarray, pass2: np.ndarray, threshold: float) -> Optional[float]:
    a, b = pass1 >= threshold, pass2 >= threshold
    union = int(np.count_nonzero(a | b))
    return None if union == 0 else int(np.count_nonzero(a & b)) / union


def _crop_image(decoded: Decoded, crop: Box, name: str) -> Decoded:
    """The crop of a decoded image, holding the same pixels (no resampling)."""
    x0, y0, x1, y1 = crop
    if decoded.pil is not None:
        return Decoded(name, pil=decoded.pil.crop(crop))
    return Decoded(name, array=decoded.numpy()[y0:y1, x0:x1], order=decoded.order)


def _check_maps(prediction: Prediction) -> None:
    for value in (prediction.depth, prediction.normal, prediction.foreground):
        if value is not None and not isinstance(value, np.ndarray):
            raise InputError(
                "refine pastes numpy maps; this runtime returns device tensors (the torch backend's "
                "output='torch'): open it with output='numpy' to refine"
            )


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
    _check_maps(prediction)
    decoded = (
        image if isinstance(image, Decoded) else decode(image, runtime.channel_order, None, runtime.max_image_pixels)
    )
    size = prediction.size
    scale1 = runtime.model_resolution(*size) / max(size)
    if boxes is not None:
        source, people = "boxes", check_boxes(boxes, size, decoded.name)
    else:
        check_refine(options, runtime.tasks, runtime.path)
        mask = prediction.foreground
        if mask is None:
            raise InputError(f"{decoded.name}: refine finds people in the foreground mask; this prediction has none")
        source, people = "mask", people_in_mask(mask, scale1, options)
    planned = plan_regions(people, size, options)
    if tracker is not None:
        planned = tracker.update(planned, size)
    regions, to_run = [], []
    for rank, region in enumerate(planned):
        crop = square_crop(region.padded, size)
        crop_side = max(crop[2] - crop[0], crop[3] - crop[1])
        resolution2 = runtime.model_resolution(crop[3] - crop[1], crop[2] - crop[0])
        scale2 = resolution2 / crop_side
        pass1_pixels = box_area(region.box) * scale1 * scale1
        entry = _Pass2(region, crop, (pass1_pixels, box_area(region.box) * scale2 * scale2))
        if rank >= options.max_regions:
            entry.status, entry.model_pixels = "skipped", (pass1_pixels, None)
            entry.reason = f"more than max_regions ({options.max_regions}) regions: the largest are refined"
        elif scale2 < options.min_gain * scale1:
            entry.status, entry.model_pixels = "skipped", (pass1_pixels, None)
            entry.reason = (
                f"pass 1 gave its crop {crop_side * scale1:.0f} model pixels across, pass 2 would give "
                f"{resolution2}: less than min_gain ({options.min_gain:g}) times as many"
            )
        else:
            to_run.append(entry)
        regions.append(entry)
    _run_pass2(runtime, decoded, to_run)
    for entry in to_run:
        if entry.status == "refined":
            _check_and_align(entry, prediction, scale1, options)
    for entry in sorted(to_run, key=lambda e: -box_area(e.crop)):  # the smaller crop lies on top
        if entry.status == "refined":
            _paste(entry, prediction, size, options, runtime.post_options)
    if prediction.depth is not None and runtime.post_options.normalize_depth and to_run:
        depth = prediction.depth
        if float(depth.min()) < 0.0 or float(depth.max()) > 1.0:
            open_options({"depth": depth}, PostOptions(normalize_depth=True))
    prediction.regions = [entry.record(source) for entry in regions]
    return prediction


def _run_pass2(runtime: Any, decoded: Decoded, entries: Sequence[_Pass2]) -> None:
    """Every entry's crop through the model, `runtime.batch_size` crops per call; an entry whose
    outputs are not finite falls back."""
    staged = [runtime.preprocess(_crop_image(decoded, e.crop, f"{decoded.name} region {e.crop}")) for e in entries]
    size = max(1, runtime.batch_size)
    for start in range(0, len(staged), size):
        chunk = staged[start : start + size]
        outcomes = runtime._infer_outcomes([s for _, s in chunk])
        for entry, (crop, prepared), outcome in zip(entries[start : start + size], chunk, outcomes):
            if isinstance(outcome, Exception):
                entry.status, entry.reason = "fallback", f"pass 2 failed: {outcome}"
            else:
                entry.maps = runtime.postprocess(crop, prepared, outcome)


def _check_and_align(entry: _Pass2, prediction: Prediction, scale1: float, options: RefineOptions) -> None:
    """The mask check (fallback below min_agreement) and the depth alignment, against pass 1."""
    maps = entry.maps
    assert maps is not None
    bx0, by0, bx1, by1 = entry.planned.box
    cx0, cy0 = entry.crop[:2]
    inside = (slice(by0, by1), slice(bx0, bx1))
    inside_crop = (slice(by0 - cy0, by1 - cy0), slice(bx0 - cx0, bx1 - cx0))
    person = None
    if prediction.foreground is not None and maps.foreground is not None:
        entry.agreement = _mask_agreement(
            prediction.foreground[inside], maps.foreground[inside_crop], options.threshold
        )
        if entry.agreement is not None and entry.agreement < options.min_agreement:
            entry.status = "fallback"
            entry.reason = (
                f"pass 2's mask agrees with pass 1's on {entry.agreement:.0%} of the box (intersection over "
                f"union), less than min_agreement ({options.min_agreement:g})"
            )
            return
        person = prediction.foreground[inside] >= options.threshold
    if prediction.depth is not None and maps.depth is not None:
        entry.depth = align_depth(maps.depth[inside_crop], prediction.depth[inside], person, grid_step(scale1))


def _paste(
    entry: _Pass2, prediction: Prediction, size: Tuple[int, int], options: RefineOptions, post: PostOptions
) -> None:
    maps = entry.maps
    assert maps is not None
    weights = feather_weights(entry.crop, size, options.feather)
    if prediction.depth is not None and maps.depth is not None:
        s, b, _ = entry.depth
        aligned = maps.depth * np.float32(s) + np.float32(b)
        _blend(prediction.depth, aligned, weights, entry.crop)
    if prediction.normal is not None and maps.normal is not None:
        view = _blend(prediction.normal, maps.normal, weights, entry.crop)
        seam = weights < 1.0
        if seam.any():  # a blend of unit vectors is shorter than one
            vectors = view[seam]
            TASKS["normal"].finish(vectors, sign=1)
            view[seam] = vectors
    if prediction.foreground is not None and maps.foreground is not None:
        view = _blend(prediction.foreground, maps.foreground, weights, entry.crop)
        if post.foreground_threshold is not None:
            view[...] = view > 0.5
