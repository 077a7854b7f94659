"""The arrays users pass to apps and visualize, checked into one layout (else InputError), and the
band-by-band helpers that keep per-pixel work on big images free of full-size temporaries."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterator, Optional, Tuple, overload

import numpy as np

from .errors import EmptyMaskWarning, InputError

#: The one rule for "no person found" (apps, files, pictures, the page's web/src/maps.js): every value of
#: the soft mask below half a grey level, so applying it changes no pixel of an 8-bit picture.
EMPTY_MASK_LEVEL = 0.5 / 255.0


#: a fully opaque mask pixel's value per integer type (other types: 1)
OPAQUE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
#: the values a soft mask may hold (beyond [0, 1]: a resampled mask's overshoot, clipped)
ALPHA_RANGE = (-0.5, 1.5)


def as_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 RGB. Float input is taken as [0, 1] and scaled; RGBA drops alpha."""
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{name}: expected an (H, W, 3) RGB array, got shape {a.shape}")
    a = a[..., :3]
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a)
        low, high = float(a.min()), float(a.max())
        if not ALPHA_RANGE[0] <= low <= high <= ALPHA_RANGE[1]:  # 0..255 floats: clipped to white otherwise
            raise InputError(
                f"{name}: float pixels must be in [0, 1], got {low:g}..{high:g}; divide 0..255 values by 255"
            )
        return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    raise InputError(f"{name}: expected uint8 (or float in [0, 1]) pixels, got {a.dtype}")


def as_map(x: np.ndarray, name: str, shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """(H, W) float32 from (H, W), (H, W, 1) or (1, H, W); checks the size against `shape`."""
    a = np.asarray(x)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    elif a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise InputError(f"{name}: expected an (H, W) numeric map, got shape {np.shape(x)} {a.dtype}")
    _check_size(a.shape, shape, name)
    return a.astype(np.float32, copy=False)


def as_normals(normal: np.ndarray, shape: Optional[Tuple[int, int]] = None, name: str = "normal") -> np.ndarray:
    """(H, W, 3) float32 from (H, W, 3) or (3, H, W)."""
    a = np.asarray(normal)
    if a.ndim == 3 and a.shape[-1] != 3 and a.shape[0] == 3:
        a = np.moveaxis(a, 0, -1)
    if a.ndim != 3 or a.shape[-1] != 3 or not np.issubdtype(a.dtype, np.number):
        raise InputError(f"{name}: expected (H, W, 3) xyz normals, got shape {np.shape(normal)}")
    _check_size(a.shape[:2], shape, name)
    return a.astype(np.float32, copy=False)


@overload
def as_alpha(mask: np.ndarray, shape: Tuple[int, int], name: str = ...) -> np.ndarray: ...
@overload
def as_alpha(mask: None, shape: Tuple[int, int], name: str = ...) -> None: ...
@overload
def as_alpha(mask: Optional[np.ndarray], shape: Tuple[int, int], name: str = ...) -> Optional[np.ndarray]: ...
def as_alpha(mask: Optional[np.ndarray], shape: Tuple[int, int], name: str = "foreground") -> Optional[np.ndarray]:
    """A soft mask as (H, W) float32 in [0, 1] (uint8 masks are divided by 255, uint16 by 65535; NaN
    is 0), or None. InputError for values outside ALPHA_RANGE: a mask in other units (0..255 as
    float) would otherwise be clipped to a full foreground."""
    if mask is None:
        return None
    raw = np.asarray(mask)
    a = np.nan_to_num(as_map(raw, name, shape) / OPAQUE.get(raw.dtype, 1.0))
    low, high = float(a.min()), float(a.max())
    if not ALPHA_RANGE[0] <= low <= high <= ALPHA_RANGE[1]:
        raise InputError(
            f"{name}: values {low:g}..{high:g} ({raw.dtype}) are not a soft mask in [0, 1]; pass floats in [0, 1] "
            f"(divide 0..255 values by 255), uint8 (0..255) or uint16 (0..65535)"
        )
    return np.clip(a, 0.0, 1.0).astype(np.float32)


def _check_size(got: Tuple[int, ...], want: Optional[Tuple[int, int]], name: str) -> None:
    if want is not None and tuple(got[:2]) != tuple(want[:2]):
        raise InputError(f"{name}: size {got[0]}x{got[1]} (HxW) differs from the image's {want[0]}x{want[1]}")


def mask_peak(mask: np.ndarray) -> float:
    """The largest value of a soft mask (float in [0, 1], uint8 / 255, uint16 / 65535; NaN counts as 0), by bands."""
    raw = np.asarray(mask)
    flat = raw.reshape(-1, raw.shape[-1]) if raw.ndim > 1 else raw.reshape(1, -1)
    peak = max(float(np.nanmax(flat[rows], initial=0.0)) for rows in row_bands(flat.shape[0], flat.shape[1]))
    return peak / OPAQUE.get(raw.dtype, 1.0)


def mask_is_empty(mask: np.ndarray) -> bool:
    """True when the soft mask keeps no pixel: every value is below EMPTY_MASK_LEVEL."""
    return mask_peak(mask) < EMPTY_MASK_LEVEL


def warn_if_empty(mask: np.ndarray, outcome: str, stacklevel: int = 3) -> bool:
    """EmptyMaskWarning (and True) when `mask` keeps no pixel; `outcome` says what the output is then."""
    if not mask_is_empty(mask):
        return False
    message = f"the foreground mask keeps no pixel (no person found), so {outcome}"
    warnings.warn(EmptyMaskWarning(message, outcome), stacklevel=stacklevel)
    return True


def unit_vectors(v: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """`v` scaled to unit length along the last axis; zero vectors stay zero."""
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.where(norm > eps, v / np.maximum(norm, eps), 0.0).astype(np.float32)


#: pixels per band of `row_bands`: bounds the temporaries of per-pixel work on big images
BAND_PIXELS = 1 << 16


def row_bands(height: int, width: int, band_pixels: int = BAND_PIXELS) -> Iterator[slice]:
    """Slices of rows covering `height`, about `band_pixels` pixels each."""
    step = max(1, band_pixels // max(1, width))
    for top in range(0, height, step):
        yield slice(top, min(height, top + step))


def fill_by_rows(out: np.ndarray, make: Callable[[slice], np.ndarray]) -> np.ndarray:
    """`out[rows] = make(rows)` band by band (only `out` is image-sized)."""
    for rows in row_bands(out.shape[0], out.shape[1]):
        out[rows] = make(rows)
    return out


def finite_range(values: np.ndarray) -> Optional[Tuple[float, float]]:
    """(min, max) of the finite values, band by band; None when there is none."""
    lo, hi = np.inf, -np.inf
    for rows in row_bands(values.shape[0], int(np.prod(values.shape[1:]))):
        band = values[rows]
        finite = band[np.isfinite(band)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    return (lo, hi) if lo <= hi else None


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Round and clip to uint8."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def blend(front: Any, back: Any, alpha: np.ndarray) -> np.ndarray:
    """`alpha * front + (1 - alpha) * back` as uint8; `front`/`back` images or RGB colours, alpha (H, W)."""
    a = np.asarray(alpha, np.float32)[..., None]
    return to_uint8(a * np.asarray(front, np.float32) + (1.0 - a) * np.asarray(back, np.float32))
