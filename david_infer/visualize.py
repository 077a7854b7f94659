"""Pictures of DAViD's outputs, in numpy + Pillow (no matplotlib).

- `colorize_depth`: relative depth through a perceptual colour map (viridis by default: its
  lightness rises monotonically, so nearer-is-brighter reads correctly in grey and for colour-blind
  viewers; turbo is offered too), normalised over the person when a mask is given, background flat.
- `normals_to_rgb`: (n + 1) / 2 * 255 with x -> red, y -> green, z -> blue, in the package's camera
  frame (x right, y up, z toward the camera; see `david_infer.apps`).
- `overlay_mask`: the soft mask tinted over the photo.
- `panel`: a labelled side-by-side picture of whatever a prediction holds, at most
  `MAX_PANEL_SIDE` (2048) pixels on its longer side: bigger images are box-averaged down before
  anything is drawn, so a 100-megapixel photo costs a panel of a few megapixels, not gigabytes.

Colour maps are 256-entry tables computed from published polynomial fits: viridis (Matt Zucker's
degree-6 fit of matplotlib's viridis, CC0) and turbo (Google's degree-5 fit by Anton Mikhailov and
Ruofei Du, Apache-2.0).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ._arrays import BAND_PIXELS, as_alpha, as_image, as_map, as_normals, blend, fill_by_rows
from .errors import InputError

# Polynomial coefficients, lowest power first; rows are powers, columns R, G, B (values in [0, 1]).
_VIRIDIS = (
    (0.2777273272234177, 0.005407344544966578, 0.3340998053353061),
    (0.1050930431085774, 1.404613529898575, 1.384590162594685),
    (-0.3308618287255563, 0.214847559468213, 0.09509516302823659),
    (-4.634230498983486, -5.799100973351585, -19.33244095627987),
    (6.228269936347081, 14.17993336680509, 56.69055260068105),
    (4.776384997670288, -13.74514537774601, -65.35303263337234),
    (-5.435455855934631, 4.645852612178535, 26.3124352495832),
)
_TURBO = (
    (0.13572138, 0.09140261, 0.10667330),
    (4.61539260, 2.19418839, 12.64194608),
    (-42.66032258, 4.84296658, -60.58204836),
    (132.13108234, -14.18503333, 110.36276771),
    (-152.94239396, 4.27729857, -89.90310912),
    (59.28637943, 2.82956604, 27.34824973),
)
_COEFFS = {"viridis": _VIRIDIS, "turbo": _TURBO}
COLORMAPS: Tuple[str, ...] = tuple(_COEFFS)
BACKGROUND = (0, 0, 0)
#: the longest side of a `panel` (label strip included); None passed as max_side = no cap
MAX_PANEL_SIDE = 2048
MASK_COLOR = (0, 220, 90)


@lru_cache(maxsize=None)
def colormap(name: str = "viridis") -> np.ndarray:
    """The (256, 3) uint8 look-up table of colour map `name` (viridis or turbo)."""
    if name not in _COEFFS:
        raise InputError(f"unknown colour map {name!r}; choose from {', '.join(COLORMAPS)}")
    t = np.linspace(0.0, 1.0, 256)[:, None]
    rgb = np.zeros((256, 3))
    for coeff in reversed(_COEFFS[name]):  # Horner's scheme
        rgb = rgb * t + np.asarray(coeff)
    lut = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def apply_colormap(values: np.ndarray, name: str = "viridis") -> np.ndarray:
    """Map values in [0, 1] (clipped; NaN -> 0) to (..., 3) uint8 RGB."""
    idx = np.rint(np.clip(np.nan_to_num(np.asarray(values, np.float32)), 0.0, 1.0) * 255.0).astype(np.intp)
    return colormap(name)[idx]


def colorize_depth(
    depth: np.ndarray,
    mask: Optional[np.ndarray] = None,
    cmap: str = "viridis",
    background: Sequence[int] = BACKGROUND,
    inverse: bool = False,
    mask_threshold: float = 0.5,
) -> np.ndarray:
    """Relative depth as (H, W, 3) uint8 RGB: nearer is brighter (the top of the colour map).

    Depth is min-max normalised over the pixels that count: finite, and with a `mask` (soft
    foreground, float in [0, 1] or uint8) those >= `mask_threshold`, so the person spans the
    whole map. Outside the mask the picture fades to `background` with the soft mask; non-finite
    depth is `background`. `inverse=True` for inverse depth (larger = nearer).
    """
    d = as_map(depth, "depth")
    alpha = as_alpha(mask, d.shape, "mask")
    finite = np.isfinite(d)
    counted = finite & (alpha >= mask_threshold) if alpha is not None else finite
    if not counted.any():
        counted = finite
    t = np.zeros(d.shape, np.float32)
    if counted.any():
        lo, hi = float(d[counted].min()), float(d[counted].max())
        span = hi - lo if hi > lo else 1.0
        t = (d - lo) / span if inverse else (hi - d) / span
    rgb = apply_colormap(t, cmap).astype(np.float32)
    weight = finite.astype(np.float32) * (alpha if alpha is not None else 1.0)
    return blend(rgb, background, weight)


def normals_to_rgb(
    normal: np.ndarray, mask: Optional[np.ndarray] = None, background: Sequence[int] = BACKGROUND
) -> np.ndarray:
    """Normals as (H, W, 3) uint8: (n + 1) / 2 * 255 per component (x -> R, y -> G, z -> B).

    Components are clipped to [-1, 1], not renormalised. With a `mask` the picture fades to
    `background` outside it.
    """
    normals = as_normals(normal)
    alpha = as_alpha(mask, normals.shape[:2], "mask")

    def band(rows: slice) -> np.ndarray:  # band by band: no full-size float temporaries
        rgb = (np.clip(np.nan_to_num(normals[rows]), -1.0, 1.0) + 1.0) * np.float32(0.5 * 255.0)
        return np.rint(rgb).astype(np.uint8) if alpha is None else blend(rgb, background, alpha[rows])

    return fill_by_rows(np.empty(normals.shape, np.uint8), band)


def overlay_mask(
    image: np.ndarray, mask: np.ndarray, color: Sequence[int] = MASK_COLOR, alpha: float = 0.5
) -> np.ndarray:
    """The image with `color` laid over it with opacity `alpha * mask` per pixel; (H, W, 3) uint8."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    img = as_image(image)
    m = as_alpha(mask, img.shape[:2], "mask")
    tint = np.broadcast_to(np.asarray(color, np.float32), img.shape)
    return blend(tint, img, alpha * m)


def panel(prediction: Any, labels: bool = True, cmap: str = "viridis",
          inverse_depth: Optional[bool] = None, max_side: Optional[int] = MAX_PANEL_SIDE) -> np.ndarray:
    """A side-by-side (h [+ label strip], n * w, 3) uint8 picture of a prediction.

    `prediction` is any object with the attributes `image` ((H, W, 3) uint8 RGB) and `depth`,
    `normal`, `foreground` (each None when the model has no such task), like
    `david_infer.Prediction`. Tiles, left to right: the image, then each task present (depth and
    normals masked by the foreground when it keeps any pixel (>= 0.5); the foreground as a tint
    over the image).
    With `labels`, a strip of `label_height(W)` pixels above the tiles names each one; no margins.

    Depth is drawn nearer-is-brighter. Which way the prediction's depth runs comes from
    `inverse_depth`, else from an optional attribute `prediction.depth_inverse`, else it is taken
    as inverse (larger = nearer), the runtime's default (`DavidRuntime(invert_depth=True)`).

    Tiles are the image's size (h, w = H, W) unless the panel would be longer than `max_side`
    pixels on a side (default MAX_PANEL_SIDE; None = no cap): then every map is box-averaged by the
    smallest integer factor that fits, before any drawing.
    """
    if max_side is not None:
        prediction = _fit_panel(prediction, max_side, labels)
    tiles = panel_tiles(prediction, cmap, inverse_depth)
    strip = np.concatenate([tile for _, tile in tiles], axis=1)
    if not labels:
        return strip
    return _add_labels(strip, [name for name, _ in tiles])


def panel_tiles(prediction: Any, cmap: str = "viridis",
                inverse_depth: Optional[bool] = None) -> List[Tuple[str, np.ndarray]]:
    """The (label, (H, W, 3) uint8 tile) pairs that `panel` lays side by side."""
    if getattr(prediction, "image", None) is None:
        raise InputError("panel: the prediction has no `image` (an (H, W, 3) uint8 RGB array)")
    image = as_image(prediction.image, "prediction.image")
    shape = image.shape[:2]
    fg = getattr(prediction, "foreground", None)
    alpha = as_alpha(fg, shape, "prediction.foreground")
    tiles = [("image", image)]
    # A mask that keeps no pixel (e.g. a random-weight model) would black out depth and normals:
    # draw them unmasked then, so the panel still shows what the model predicted.
    shade = alpha if alpha is not None and float(alpha.max()) >= 0.5 else None
    depth = getattr(prediction, "depth", None)
    if depth is not None:
        if inverse_depth is None:
            inverse_depth = bool(getattr(prediction, "depth_inverse", True))
        depth = as_map(depth, "prediction.depth", shape)
        tiles.append(("depth", colorize_depth(depth, shade, cmap, inverse=inverse_depth)))
    normal = getattr(prediction, "normal", None)
    if normal is not None:
        tiles.append(("normal", normals_to_rgb(as_normals(normal, shape, "prediction.normal"), shade)))
    if alpha is not None:
        tiles.append(("foreground", overlay_mask(image, alpha)))
    return tiles


class _Reduced:
    """A prediction's maps box-averaged by an integer factor (what `panel` draws when capped)."""

    def __init__(self, prediction: Any, factor: int) -> None:
        self.image = box_reduce(as_image(prediction.image, "prediction.image"), factor)
        for name in ("depth", "normal", "foreground"):
            value = getattr(prediction, name, None)
            setattr(self, name, None if value is None else box_reduce(np.asarray(value), factor))
        self.depth_inverse = getattr(prediction, "depth_inverse", True)


def _fit_panel(prediction: Any, max_side: int, labels: bool) -> Any:
    """`prediction`, or its maps reduced so that the panel's longer side is at most `max_side`."""
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 64:
        raise InputError(f"max_side must be None or an integer >= 64, got {max_side!r}")
    image = getattr(prediction, "image", None)
    if image is None:
        return prediction  # panel_tiles says what is missing
    h, w = np.shape(image)[:2]
    count = 1 + sum(getattr(prediction, n, None) is not None for n in ("depth", "normal"))
    count += getattr(prediction, "foreground", None) is not None
    factor = 1
    while True:
        th, tw = -(-h // factor), -(-w // factor)
        if max(count * tw, th + (label_height(tw) if labels else 0)) <= max_side:
            break
        factor += 1
    return prediction if factor == 1 else _Reduced(prediction, factor)


def box_reduce(array: np.ndarray, factor: int) -> np.ndarray:
    """(H, W[, C]) -> (ceil(H / f), ceil(W / f)[, C]): the mean of each f x f block (edge blocks
    smaller), band by band in float32; uint8 stays uint8 (rounded). NaN in a block gives NaN."""
    a = np.asarray(array)
    if factor == 1:
        return a
    h, w = a.shape[:2]
    cols = np.arange(0, w, factor)
    col_counts = np.diff(np.append(cols, w)).astype(np.float32)
    out = np.empty((-(-h // factor), len(cols)) + a.shape[2:], np.float32)
    step = factor * max(1, BAND_PIXELS // (factor * max(1, w)))  # input rows per band
    for top in range(0, h, step):
        band = a[top:top + step].astype(np.float32)
        rows = np.arange(0, band.shape[0], factor)
        sums = np.add.reduceat(np.add.reduceat(band, rows, axis=0), cols, axis=1)
        counts = np.outer(np.diff(np.append(rows, band.shape[0])), col_counts)
        out[top // factor: top // factor + len(rows)] = sums / counts.reshape(counts.shape + (1,) * (a.ndim - 2))
    if a.dtype == np.uint8:
        return np.rint(out).astype(np.uint8)
    return out


def label_height(width: int) -> int:
    """Height in pixels of the label strip `panel` adds above tiles `width` pixels wide."""
    return _font_size(width) + 8


def _font_size(width: int) -> int:
    return int(np.clip(width // 16, 10, 32))


def _add_labels(strip: np.ndarray, names: List[str]) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    tile_w = strip.shape[1] // len(names)
    size = _font_size(tile_w)
    try:
        font = ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, AttributeError):
        font = ImageFont.load_default()
    header = Image.new("RGB", (strip.shape[1], label_height(tile_w)), (24, 24, 24))
    draw = ImageDraw.Draw(header)
    for i, name in enumerate(names):
        draw.text((i * tile_w + 4, 4), name, fill=(235, 235, 235), font=font)
    return np.concatenate([np.asarray(header), strip], axis=0)
