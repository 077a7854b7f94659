"""Pictures of DAViD's outputs in numpy + Pillow (docs/applications.md): depth through a perceptual
colour map (matplotlib's exact viridis and turbo tables in `_colormaps`, no matplotlib), normals as
RGB, the mask tinted over the photo, and `panel`, a labelled side-by-side picture of a prediction."""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ._arrays import (
    BAND_PIXELS,
    as_alpha,
    as_image,
    as_map,
    as_normals,
    blend,
    fill_by_rows,
    mask_is_empty,
    warn_if_empty,
)
from ._colormaps import TABLES
from .errors import InputError
from .tasks import TASK_ORDER, TASKS

COLORMAPS: Tuple[str, ...] = tuple(TABLES)
BACKGROUND = (0, 0, 0)
#: the longest side of a `panel` (label strip included); None passed as max_side = no cap
MAX_PANEL_SIDE = 2048
MASK_COLOR = (0, 220, 90)
#: how bright the foreground tile draws what the mask leaves out
DIMMED = 0.3
#: the tiles of a picture of a prediction, in order: the image, then each map the model predicts
TILES = ("image",) + TASK_ORDER
#: the outline of a refined region's crop, by its status (david_infer.prediction.Region)
REGION_COLORS = {"refined": (255, 214, 0), "fallback": (255, 64, 32), "skipped": (170, 170, 170)}


@lru_cache(maxsize=None)
def colormap(name: str = "viridis") -> np.ndarray:
    """The (256, 3) uint8 look-up table of colour map `name` (viridis or turbo)."""
    if name not in TABLES:
        raise InputError(f"unknown colour map {name!r}; choose from {', '.join(COLORMAPS)}")
    # frombuffer over bytes is read-only, so the cached table cannot be changed by a caller
    return np.frombuffer(bytes.fromhex(TABLES[name]), np.uint8).reshape(256, 3)


def apply_colormap(values: np.ndarray, name: str = "viridis") -> np.ndarray:
    """Map values in [0, 1] (clipped; NaN -> 0) to (..., 3) uint8 RGB."""
    t = np.nan_to_num(np.asarray(values, np.float32))  # a copy: the steps below work in place
    np.clip(t, 0.0, 1.0, out=t)
    t *= np.float32(255.0)
    return colormap(name)[np.rint(t, out=t).astype(np.uint8)]


def colorize_depth(
    depth: np.ndarray,
    mask: Optional[np.ndarray] = None,
    cmap: str = "viridis",
    background: Sequence[int] = BACKGROUND,
    inverse: bool = False,
    mask_threshold: float = 0.5,
    span: Optional[Tuple[float, float]] = None,
) -> np.ndarray:
    """Relative depth as (H, W, 3) uint8 RGB, nearer brighter (`inverse`: larger = nearer), min-max
    normalised over the finite pixels (with a soft `mask`, those >= `mask_threshold`, so the person
    spans the map) or within `span` = (lo, hi) (clipped). Outside the mask the picture fades to
    `background`; non-finite depth is `background`."""
    d = as_map(depth, "depth")
    alpha = as_alpha(mask, d.shape, "mask")
    finite = np.isfinite(d)
    if span is None:
        counted = finite & (alpha >= mask_threshold) if alpha is not None else finite
        if not counted.any():
            counted = finite
        found = bool(counted.any())
        lo, hi = (float(d[counted].min()), float(d[counted].max())) if found else (0.0, 0.0)
    else:
        (lo, hi), found = (float(span[0]), float(span[1])), True
    width = hi - lo if hi > lo else 1.0
    opaque = alpha is None and bool(finite.all())  # nothing fades to the background: no blending

    def band(rows: slice) -> np.ndarray:  # band by band: no full-size float temporaries
        t: np.ndarray
        if not found:
            t = np.zeros(d[rows].shape, np.float32)
        else:
            t = (d[rows] - lo) / width if inverse else (hi - d[rows]) / width
        rgb = apply_colormap(t, cmap)
        if opaque:
            return rgb
        weight = finite[rows].astype(np.float32) * (alpha[rows] if alpha is not None else 1.0)
        return blend(rgb, background, weight)

    return fill_by_rows(np.empty(d.shape + (3,), np.uint8), band)


def normals_to_rgb(
    normal: np.ndarray, mask: Optional[np.ndarray] = None, background: Sequence[int] = BACKGROUND
) -> np.ndarray:
    """Normals as (H, W, 3) uint8: (n + 1) / 2 * 255 per component (x -> R, y -> G, z -> B), clipped
    to [-1, 1], not renormalised; with a `mask`, fading to `background` outside it."""
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
    tint = np.asarray(color, np.float32)
    return fill_by_rows(np.empty(img.shape, np.uint8), lambda rows: blend(tint, img[rows], alpha * m[rows]))


def mask_tile(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The foreground tile: `overlay_mask` where the soft mask keeps the person, the photo dimmed to
    DIMMED elsewhere (blended by the mask); (H, W, 3) uint8."""
    img = as_image(image)
    m = as_alpha(mask, img.shape[:2], "mask")
    tint = np.asarray(MASK_COLOR, np.float32)

    def band(rows: slice) -> np.ndarray:
        kept = blend(tint, img[rows], 0.5 * m[rows])
        return blend(kept, img[rows].astype(np.float32) * DIMMED, m[rows])

    return fill_by_rows(np.empty(img.shape, np.uint8), band)


def panel(
    prediction: Any,
    labels: bool = True,
    cmap: str = "viridis",
    inverse_depth: Optional[bool] = None,
    max_side: Optional[int] = MAX_PANEL_SIDE,
) -> np.ndarray:
    """A side-by-side (h [+ label strip], n * w, 3) uint8 picture of a prediction (any object with
    `image` and `depth`, `normal`, `foreground`, None where absent, like `david_infer.Prediction`):
    the image (a refined prediction's `regions` outlined), then each map (depth and normals masked
    by the foreground unless it keeps no pixel, which warns). With `labels`, a strip of
    `label_height(W)` pixels names the tiles. Depth is nearer-brighter: `inverse_depth`, else
    `prediction.depth_inverse`, else inverse (the runtime's default). Tiles are the image's size
    unless the panel would exceed `max_side` (None: no cap): then every map is first box-averaged by
    the smallest integer factor that fits."""
    foreground = getattr(prediction, "foreground", None)
    if foreground is not None:  # on the full-size mask: box-averaging could hide the last kept pixel
        warn_if_empty(
            foreground, "the picture's foreground tile is a dark photo and its depth and normals are unmasked"
        )
    regions = getattr(prediction, "regions", None)
    image = getattr(prediction, "image", None)
    full_width = np.shape(image)[1] if regions and image is not None else 0
    if max_side is not None:
        prediction = _fit_panel(prediction, max_side, labels)
    tiles = panel_tiles(prediction, cmap, inverse_depth)
    if regions and full_width:
        tile = tiles[0][1]
        tiles[0] = ("image", draw_regions(tile, regions, tile.shape[1] / full_width))
    strip = np.concatenate([tile for _, tile in tiles], axis=1)
    if not labels:
        return strip
    return _add_labels(strip, [name for name, _ in tiles])


def panel_tiles(
    prediction: Any, cmap: str = "viridis", inverse_depth: Optional[bool] = None
) -> List[Tuple[str, np.ndarray]]:
    """The (label, (H, W, 3) uint8 tile) pairs that `panel` lays side by side."""
    if getattr(prediction, "image", None) is None:
        raise InputError("panel: the prediction has no `image` (an (H, W, 3) uint8 RGB array)")
    image = as_image(prediction.image, "prediction.image")
    shape = image.shape[:2]
    alpha = as_alpha(getattr(prediction, "foreground", None), shape, "prediction.foreground")
    maps = {"image": image}
    if alpha is not None:
        maps["foreground"] = alpha
    depth = getattr(prediction, "depth", None)
    if depth is not None:
        if inverse_depth is None:
            inverse_depth = bool(getattr(prediction, "depth_inverse", True))
        maps["depth"] = as_map(depth, "prediction.depth", shape)
    normal = getattr(prediction, "normal", None)
    if normal is not None:
        maps["normal"] = as_normals(normal, shape, "prediction.normal")
    shade = tile_shade(alpha)
    return [(name, draw_tile(name, maps[name], image, shade, cmap, bool(inverse_depth))) for name in tile_names(maps)]


def tile_names(tasks: Iterable[str]) -> List[str]:
    """The tiles of a picture of a model's outputs: the image, then each of `tasks` in TILES order."""
    present = set(tasks)
    return ["image"] + [name for name in TILES[1:] if name in present]


def tile_shade(alpha: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The mask the depth and normal tiles fade outside: the soft foreground, or None when it keeps no
    pixel (a random-weight model's would black them out)."""
    return alpha if alpha is not None and not mask_is_empty(alpha) else None


def draw_tile(
    name: str,
    data: np.ndarray,
    image: Optional[np.ndarray] = None,
    shade: Optional[np.ndarray] = None,
    cmap: str = "viridis",
    inverse: bool = True,
    depth_span: Optional[Tuple[float, float]] = None,
) -> np.ndarray:
    """One (H, W, 3) uint8 tile of a picture of a prediction (the image panel and the vis video) for
    the map `data`, drawn as its task's `picture` says: relative `colorize_depth` (normalised over
    `shade`, the mask of `tile_shade`, or within `depth_span`), vectors `normals_to_rgb`, matte
    `mask_tile` over `image`; the image tile is `data` itself."""
    if name == "image":
        return data
    if name not in TASKS:
        raise InputError(f"unknown tile {name!r}; choose from {', '.join(TILES)}")
    picture = TASKS[name].picture
    if picture == "relative":
        return colorize_depth(data, shade, cmap, inverse=inverse, span=depth_span)
    if picture == "vectors":
        return normals_to_rgb(data, shade)
    if image is None:
        raise InputError(f"draw_tile: the {name} tile is drawn over the image; pass `image`")
    return mask_tile(image, data)


def draw_regions(tile: np.ndarray, regions: Sequence[Any], scale: float = 1.0) -> np.ndarray:
    """A copy of the (h, w, 3) uint8 `tile` with each region's crop (`prediction.Region`, image pixels;
    `scale`: tile pixels per image pixel) outlined in its status colour (REGION_COLORS) and its
    person box in a thinner line."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(np.ascontiguousarray(tile))
    draw = ImageDraw.Draw(picture)
    width = max(2, round(max(tile.shape[:2]) / 300))
    for region in regions:
        color = REGION_COLORS.get(region.status, REGION_COLORS["skipped"])
        for box, line in ((region.crop, width), (region.box, max(1, width // 2))):
            x0, y0, x1, y1 = (v * scale for v in box)
            draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=color, width=line)
    return np.asarray(picture)


def _fit_panel(prediction: Any, max_side: int, labels: bool) -> Any:
    """`prediction`, or its maps box-averaged by the smallest integer factor that makes the panel's
    longer side at most `max_side`."""
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 64:
        raise InputError(f"max_side must be None or an integer >= 64, got {max_side!r}")
    image = getattr(prediction, "image", None)
    if image is None:
        return prediction  # panel_tiles says what is missing
    h, w = np.shape(image)[:2]
    count = 1 + sum(getattr(prediction, n, None) is not None for n in ("depth", "normal", "foreground"))
    factor = 1
    while max(count * -(-w // factor), -(-h // factor) + (label_height(-(-w // factor)) if labels else 0)) > max_side:
        factor += 1
    if factor == 1:
        return prediction
    maps = {n: getattr(prediction, n, None) for n in ("depth", "normal", "foreground")}
    reduced = {n: None if v is None else box_reduce(np.asarray(v), factor) for n, v in maps.items()}
    image = box_reduce(as_image(image, "prediction.image"), factor)
    return SimpleNamespace(image=image, depth_inverse=getattr(prediction, "depth_inverse", True), **reduced)


def box_reduce(array: np.ndarray, factor: int) -> np.ndarray:
    """(H, W[, C]) -> (ceil(H / f), ceil(W / f)[, C]): the mean of each f x f block (edge blocks
    smaller; NaN in a block gives NaN), band by band in float32; uint8 stays uint8 (rounded)."""
    a = np.asarray(array)
    if factor == 1:
        return a
    h, w = a.shape[:2]
    cols = np.arange(0, w, factor)
    col_counts = np.diff(np.append(cols, w)).astype(np.float32)
    out = np.empty((-(-h // factor), len(cols)) + a.shape[2:], np.float32)
    step = factor * max(1, BAND_PIXELS // (factor * max(1, w)))  # input rows per band
    for top in range(0, h, step):
        band = a[top : top + step].astype(np.float32)
        rows = np.arange(0, band.shape[0], factor)
        sums = np.add.reduceat(np.add.reduceat(band, rows, axis=0), cols, axis=1)
        counts = np.outer(np.diff(np.append(rows, band.shape[0])), col_counts)
        out[top // factor : top // factor + len(rows)] = sums / counts.reshape(counts.shape + (1,) * (a.ndim - 2))
    if a.dtype == np.uint8:
        return np.rint(out).astype(np.uint8)
    return out


def label_height(width: int) -> int:
    """Height in pixels of the label strip `panel` adds above tiles `width` pixels wide."""
    return int(np.clip(width // 16, 10, 32)) + 8  # the font size + 8


def _add_labels(strip: np.ndarray, names: List[str]) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    tile_w = strip.shape[1] // len(names)
    try:
        font = ImageFont.load_default(size=label_height(tile_w) - 8)  # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, AttributeError):
        font = ImageFont.load_default()
    header = Image.new("RGB", (strip.shape[1], label_height(tile_w)), (24, 24, 24))
    draw = ImageDraw.Draw(header)
    for i, name in enumerate(names):
        draw.text((i * tile_w + 4, 4), name, fill=(235, 235, 235), font=font)
    return np.concatenate([np.asarray(header), strip], axis=0)
