"""The paper's three uses of DAViD's outputs (supplementary B.5) in numpy + Pillow: relighting,
background replacement and cut-outs, a 2.5D point cloud as binary PLY (docs/applications.md). One
camera frame for the package: x right, y up, z toward the camera. A mask that keeps no pixel is
applied as it is, with an EmptyMaskWarning saying what the output then is."""

from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple, Union

import numpy as np

from ._arrays import (
    EMPTY_MASK_LEVEL,
    as_alpha,
    as_image,
    as_map,
    as_normals,
    blend,
    fill_by_rows,
    mask_peak,
    row_bands,
    to_uint8,
    unit_vectors,
    warn_if_empty,
)
from .errors import EmptyMaskWarning, InputError
from .files import atomic_write

if TYPE_CHECKING:
    import PIL.Image

Background = Union[str, Sequence[float], np.ndarray, "PIL.Image.Image"]
#: what the point cloud's EmptyMaskWarning says when a lower mask threshold would keep pixels
LOWER_THRESHOLD_KEEPS = "a mask threshold at or below it keeps pixels"


def light_direction(light_dir: Sequence[float]) -> np.ndarray:
    """`light_dir` as a unit 3-vector (float64); InputError unless it is finite and non-zero."""
    light = np.asarray(light_dir, dtype=np.float64).reshape(-1)
    if light.shape != (3,) or not np.all(np.isfinite(light)) or not np.any(light):
        raise InputError(
            f"light_dir must be a finite, non-zero 3-vector (x right, y up, z toward the camera), got {light_dir!r}"
        )
    light = light / np.abs(light).max()  # first: the norm of (1e200, ...) overflows, of (1e-200, ...) underflows
    return light / np.linalg.norm(light)


def check_blur_radius(blur_radius: float) -> None:
    """InputError unless `blur_radius` is a finite number >= 0 (Pillow fails on nan and inf)."""
    if not (math.isfinite(blur_radius) and blur_radius >= 0):
        raise InputError(f"blur radius must be a finite number >= 0 (pixels), got {blur_radius!r}")


def check_cloud_options(fov_deg: float, depth_range: Tuple[float, float], mask_threshold: float) -> None:
    """InputError unless 0 < fov_deg < 180, 0 < near <= far (finite) and 0 <= mask_threshold <= 1."""
    near, far = (float(v) for v in depth_range)
    if not (0.0 < near <= far and math.isfinite(far)):
        raise InputError(f"depth_range must be (near, far) with 0 < near <= far, got {depth_range!r}")
    if not 0.0 < fov_deg < 180.0:
        raise InputError(f"fov_deg must be in (0, 180), got {fov_deg}")
    if not 0.0 <= mask_threshold <= 1.0:  # also refuses nan: the mask's values are in [0, 1]
        raise InputError(f"mask_threshold must be in [0, 1], got {mask_threshold}")


def shading(normal: np.ndarray, light_dir: Sequence[float], ambient: float = 0.2) -> np.ndarray:
    """Lambertian shading (H, W) float32: `ambient + (1 - ambient) * max(0, n . l)`, `normal`
    renormalised per pixel (zero vectors: ambient only), `light_dir` (toward the light, camera
    frame) normalised."""
    if not 0.0 <= ambient <= 1.0:
        raise InputError(f"ambient must be in [0, 1], got {ambient}")
    light = light_direction(light_dir)
    n = unit_vectors(np.nan_to_num(as_normals(normal)))
    lx, ly, lz = light.astype(np.float32)
    # n . l as elementwise products, not a BLAS product, whose rounding varies with its threads
    cos = np.maximum(0.0, n[..., 0] * lx + n[..., 1] * ly + n[..., 2] * lz)
    return (ambient + (1.0 - ambient) * cos).astype(np.float32)


def relight(
    image: np.ndarray,
    normal: np.ndarray,
    light_dir: Sequence[float],
    ambient: float = 0.2,
    foreground: Optional[np.ndarray] = None,
) -> np.ndarray:
    """The image re-lit from `light_dir`, (H, W, 3) uint8: each pixel times its Lambertian `shading`;
    with a `foreground` mask only the person (the background blended back by the soft mask)."""
    img = as_image(image)
    shade = shading(as_normals(normal, img.shape[:2]), light_dir, ambient)
    lit = img.astype(np.float32) * shade[..., None]
    alpha = as_alpha(foreground, img.shape[:2])
    if alpha is not None:
        warn_if_empty(alpha, "the re-lit photo is the photo unchanged")
    return to_uint8(lit) if alpha is None else blend(lit, img, alpha)


def replace_background(
    image: np.ndarray,
    foreground: np.ndarray,
    background: Background,
    blur_radius: float = 15.0,
) -> np.ndarray:
    """The person over a new background, (H, W, 3) uint8: `alpha * image + (1 - alpha) * background`,
    alpha the soft mask `foreground`. `background`: an (r, g, b) colour in 0..255, an image (scaled
    to cover the frame, centre-cropped) or "blur" (the photo through a Gaussian of `blur_radius`)."""
    img = as_image(image)
    alpha = as_alpha(foreground, img.shape[:2])
    bg = _background(background, img, blur_radius)
    warn_if_empty(alpha, "the result is the new background alone")
    return blend(img, bg, alpha)


def cutout(image: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 RGBA: the image with the soft mask as its alpha channel (fully transparent,
    with an EmptyMaskWarning, when the mask keeps no pixel)."""
    img = as_image(image)
    h, w = img.shape[:2]
    mask = np.asarray(foreground)
    as_map(mask, "foreground", (h, w))  # checks the shape before any work
    warn_if_empty(mask, "the cut-out is fully transparent")

    def band(rows: slice) -> np.ndarray:  # band by band: only the RGBA result is image-sized
        alpha = as_alpha(mask[rows], (rows.stop - rows.start, w))
        return np.dstack([img[rows], to_uint8(alpha * 255.0)])

    return fill_by_rows(np.empty((h, w, 4), np.uint8), band)


def _background(background: Background, img: np.ndarray, blur_radius: float) -> np.ndarray:
    from PIL import Image, ImageFilter

    h, w = img.shape[:2]
    if isinstance(background, str):
        if background != "blur":
            raise InputError(f"background: expected an (r, g, b) colour, an image or 'blur', got {background!r}")
        check_blur_radius(blur_radius)
        return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(blur_radius)), dtype=np.float32)
    if isinstance(background, Image.Image):
        background = np.asarray(background.convert("RGB"))
    bg = np.asarray(background)
    if bg.ndim == 1:
        if bg.shape != (3,) or not np.all((bg >= 0) & (bg <= 255)):
            raise InputError(f"background colour: expected (r, g, b) in 0..255, got {background!r}")
        return np.broadcast_to(bg.astype(np.float32), (h, w, 3))
    return _cover(as_image(bg, "background"), w, h).astype(np.float32)


def _cover(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """`img` scaled (bicubic) to cover w x h with its aspect ratio kept, then centre-cropped."""
    from PIL import Image

    ih, iw = img.shape[:2]
    scale = max(w / iw, h / ih)
    sw, sh = max(w, round(iw * scale)), max(h, round(ih * scale))
    left, top = (sw - w) // 2, (sh - h) // 2
    resized = Image.fromarray(img).resize((sw, sh), Image.Resampling.BICUBIC)
    return np.asarray(resized.crop((left, top, left + w, top + h)))


def point_cloud(
    image: np.ndarray,
    depth: np.ndarray,
    foreground: Optional[np.ndarray] = None,
    fov_deg: float = 60.0,
    depth_range: Tuple[float, float] = (1.0, 2.0),
    mask_threshold: float = 0.5,
    invert: bool = False,
) -> Tuple[np.ndarray, np.ndarray]:
    """A coloured 2.5D point cloud from relative depth: (points (N, 3) float32, colors (N, 3) uint8).

    The kept pixels (finite depth; with a `foreground` mask, mask >= `mask_threshold`) have their
    depth (smaller = nearer; `invert=True` for larger = nearer) min-max normalised into
    `depth_range` = (near, far) and are back-projected through a pinhole camera of horizontal field
    of view `fov_deg` (docs/applications.md gives the formulas).
    """
    cloud = _Cloud(image, depth, foreground, fov_deg, depth_range, mask_threshold, invert)
    bands = list(cloud.bands()) or [(np.empty((0, 3), np.float32), np.empty((0, 3), np.uint8))]
    return (np.concatenate([p for p, _ in bands]), np.concatenate([c for _, c in bands]))


def stream_point_cloud(path: Union[str, Path], *args: Any, **kwargs: Any) -> int:
    """Write `point_cloud(*args, **kwargs)` as binary PLY to `path` (a temporary the caller renames)
    band by band, so memory stays a few megabytes above the inputs at any image size; returns the count."""
    bound = inspect.signature(point_cloud).bind(*args, **kwargs)
    bound.apply_defaults()
    cloud = _Cloud(*bound.args)
    try:
        f = open(path, "wb")
    except OSError as exc:  # a missing or read-only folder, as write_ply says it (a full disk: the caller's)
        raise InputError(f"cannot write {path}: {exc}") from None
    with f:
        f.write(_ply_header(cloud.count, colors=True))
        for points, colors in cloud.bands():
            f.write(_vertices(points, colors).tobytes())
    return cloud.count


_CLOUD_BAND = 1 << 16


class _Cloud:
    """The checked inputs of `point_cloud`, the kept pixels' count and depth range (one pass band
    by band), and the points band by band."""

    def __init__(
        self,
        image: np.ndarray,
        depth: np.ndarray,
        foreground: Optional[np.ndarray],
        fov_deg: float,
        depth_range: Tuple[float, float],
        mask_threshold: float,
        invert: bool,
    ) -> None:
        self.img = as_image(image)
        self.h, self.w = self.img.shape[:2]
        self.depth = as_map(depth, "depth", (self.h, self.w))
        check_cloud_options(fov_deg, depth_range, mask_threshold)
        near, far = (float(v) for v in depth_range)
        self.near, self.far, self.invert, self.threshold = near, far, invert, mask_threshold
        self.mask = None if foreground is None else np.asarray(foreground)
        if self.mask is not None:
            as_map(self.mask, "foreground", (self.h, self.w))  # checks the shape before any work
        self.focal = (self.w / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
        self.count, lo, hi = 0, np.inf, -np.inf
        for rows in row_bands(self.h, self.w):
            values = self.depth[rows][self._keep(rows)]
            if values.size:
                self.count += values.size
                lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
        if self.count == 0 and self.mask is None:
            raise InputError("point_cloud: no pixel has finite depth; nothing to project")
        if self.count == 0 and self.mask is not None:
            peak = mask_peak(self.mask)
            outcome = "the point cloud has no points"
            if EMPTY_MASK_LEVEL <= peak < mask_threshold:  # pixels a lower threshold would keep
                outcome += f" (the mask's highest value is {peak:.2f}: {LOWER_THRESHOLD_KEEPS})"
            message = (
                f"the foreground mask keeps no pixel with finite depth at mask >= {mask_threshold} (no person "
                f"found), so {outcome}"
            )
            warnings.warn(EmptyMaskWarning(message, outcome), stacklevel=3)
        self.lo, self.hi = lo, hi

    def _keep(self, rows: slice) -> np.ndarray:
        keep = np.isfinite(self.depth[rows])
        if self.mask is not None:
            keep &= as_alpha(self.mask[rows], keep.shape) >= self.threshold
        return keep

    def bands(self):  # -> Iterator[Tuple[np.ndarray, np.ndarray]]
        """(points (n, 3) float32, colors (n, 3) uint8) per band of rows, in row-major order."""
        lo, hi, w, h = self.lo, self.hi, self.w, self.h
        for rows in row_bands(h, w, _CLOUD_BAND):  # about 100 bytes of temporaries per pixel of a band
            r, cols = np.nonzero(self._keep(rows))
            rel = self.depth[rows][r, cols].astype(np.float64)
            r = r + rows.start
            t = (rel - lo) / (hi - lo) if hi > lo else np.zeros_like(rel)
            if self.invert:
                t = 1.0 - t
            dist = self.near + t * (self.far - self.near)
            x = (cols + 0.5 - w / 2.0) * dist / self.focal
            y = -(r + 0.5 - h / 2.0) * dist / self.focal
            yield np.stack([x, y, -dist], axis=1).astype(np.float32), self.img[r, cols]


def write_ply(path: Union[str, Path], points: np.ndarray, colors: Optional[np.ndarray] = None) -> Path:
    """Write a binary little-endian PLY (float x, y, z; uchar red, green, blue), atomically."""
    path = Path(path)
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3 or not np.issubdtype(pts.dtype, np.number):
        raise InputError(f"{path}: points must be an (N, 3) array, got shape {pts.shape}")
    if colors is not None and np.shape(colors) != pts.shape:
        raise InputError(f"{path}: colors must be (N, 3) like the points {pts.shape}, got {np.shape(colors)}")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(_ply_header(len(pts), colors is not None))
            f.write(_vertices(pts, colors).tobytes())

    try:
        return atomic_write(path, write)
    except OSError as exc:  # a missing or read-only folder, a full disk
        raise InputError(f"cannot write {path}: {exc}") from None


_XYZ = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
_RGB = [("red", "u1"), ("green", "u1"), ("blue", "u1")]


def _ply_header(count: int, colors: bool) -> bytes:
    fields = _XYZ + (_RGB if colors else [])
    props = "".join(f"property {'float' if t == '<f4' else 'uchar'} {n}\n" for n, t in fields)
    return (
        f"ply\nformat binary_little_endian 1.0\ncomment david-infer point cloud (x right, y up, z toward "
        f"the camera)\nelement vertex {count}\n{props}end_header\n"
    ).encode("ascii")


def _vertices(points: np.ndarray, colors: Optional[np.ndarray]) -> np.ndarray:
    """The PLY vertex records of `points` (N, 3) and `colors` (N, 3) or None."""
    vertex = np.empty(len(points), dtype=_XYZ + (_RGB if colors is not None else []))
    for i, axis in enumerate("xyz"):
        vertex[axis] = points[:, i]
    if colors is not None:
        cols = np.asarray(colors)
        for i, channel in enumerate(("red", "green", "blue")):
            vertex[channel] = np.clip(cols[:, i], 0, 255)
    return vertex
