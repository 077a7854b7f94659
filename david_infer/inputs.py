"""Whatever image a caller has (a path, file bytes, a PIL image, a numpy array) -> one validated form,
`Decoded`, without copying 8-bit data; refusals are InputErrors naming the input (docs/runtime.md,
docs/reliability.md: sizes checked from the header before decoding, float ranges, dtypes)."""

from __future__ import annotations

import io
import os
import stat
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

CHANNEL_ORDERS = ("rgb", "bgr")
#: Default largest image accepted (width x height), see the module docstring.
MAX_IMAGE_PIXELS = 100_000_000
_EXIF_ORIENTATION = 0x0112
_FLOAT_TOLERANCE = 1e-3  # float inputs a hair outside [0, 1] (rounding) are clipped, not refused
_GRAY_MODES = ("1", "L", "LA", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass
class Decoded:
    """One input image, validated: `array` (H, W) gray or (H, W, 3) in channel order `order`, uint8 or
    float32 in [0, 1], or `pil`, an "RGB" or "L" image of the same pixels (no copy made)."""

    name: str
    array: Optional[np.ndarray] = None
    pil: Optional[Image.Image] = None
    order: str = "rgb"
    _display: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def size(self) -> tuple:
        """(height, width)."""
        if self.pil is not None:
            return (self.pil.height, self.pil.width)
        return tuple(self.numpy().shape[:2])

    def numpy(self) -> np.ndarray:
        """The pixels as an array, (H, W) or (H, W, 3) in `order`; uint8 or float32. A PIL image is
        let go once its pixels are an array (a 12-megapixel photo is not held twice)."""
        if self.array is None:
            self.array = np.array(self.pil)  # writable: `display` hands it out as it is
            self.pil = None
        return self.array

    def display(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB for visualisation, writable (a view of an 8-bit RGB input array)."""
        if self._display is None:
            a = self.numpy()  # from a PIL image: its one writable copy
            if a.dtype != np.uint8:
                a = (a * 255.0 + 0.5).astype(np.uint8)
            if a.ndim == 2:
                a = np.repeat(a[..., None], 3, axis=2)
            elif self.order == "bgr":
                a = a[..., ::-1]
            if not a.flags.writeable:  # a read-only input array: callers draw on this one
                a = a.copy()
            self._display = a
        return self._display


def check_channel_order(channel_order: str) -> str:
    """Validate a channel_order argument; returns it lower-cased."""
    order = str(channel_order).lower()
    if order not in CHANNEL_ORDERS:
        raise InputError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    return order


def _check_pixels(width: int, height: int, max_pixels: Optional[int], name: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(
            f"{name}: image is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,} (max_image_pixels); refused before decoding. Shrink the image or raise "
            f"max_image_pixels if it is trusted"
        )


def decode(
    image: Any, channel_order: str = "rgb", name: Optional[str] = None, max_pixels: Optional[int] = MAX_IMAGE_PIXELS
) -> Decoded:
    """`image` validated as a `Decoded`, else InputError naming it; more than `max_pixels` (None: no
    limit) is refused, for files from the header before decoding."""
    if isinstance(image, (str, os.PathLike)):
        if not os.fspath(image):  # Path("") is the current folder
            raise InputError(f"{name or 'image'}: the file path is empty; expected an image file's path")
        return _from_pil(_open_file(Path(image), max_pixels), name or str(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        label = name or "image bytes"
        if not len(image):
            raise InputError(f"{label} is empty (0 bytes); expected an image file (JPEG, PNG, TIFF, ...)")
        return _from_pil(_open_image(io.BytesIO(image), label, max_pixels), label)
    if isinstance(image, Image.Image):
        _check_pixels(image.width, image.height, max_pixels, name or "PIL image")
        return _from_pil(_apply_exif(image, name or "PIL image"), name or "PIL image")
    if isinstance(image, np.ndarray):
        image = image.view(np.ndarray)  # a subclass (np.matrix) indexes otherwise
        if image.ndim >= 2:
            _check_pixels(image.shape[1], image.shape[0], max_pixels, name or "numpy array")
        return _from_array(image, check_channel_order(channel_order), name or "numpy array")
    raise InputError(
        f"{name or 'image'}: expected a file path, image file bytes, a PIL.Image.Image or a numpy array, "
        f"got {type(image).__module__}.{type(image).__qualname__}"
    )


def _open_file(path: Path, max_pixels: Optional[int] = MAX_IMAGE_PIXELS) -> Image.Image:
    try:  # stat, not exists(): a name too long or unreadable folder must say so, not raise OSError
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError, ValueError):
        raise InputError(f"image file not found: {path}") from None
    except OSError as exc:
        raise InputError(f"{_short(path)}: cannot read the image file ({exc.strerror or exc})") from None
    if path.is_dir():
        raise InputError(f"{path} is a directory; expected an image file (JPEG, PNG, TIFF, ...)")
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
        raise InputError(f"{path} is not a regular file (a pipe, device or socket); expected an image file")
    if st.st_size == 0:
        raise InputError(f"{path} is empty (0 bytes); expected an image file (JPEG, PNG, TIFF, ...)")
    return _open_image(path, str(path), max_pixels)


_WARNING_FILTERS = threading.Lock()


def _open_quietly(source: Any) -> Image.Image:
    """Image.open without Pillow's DecompressionBombWarning (above ~89 MP): our own limit governs. The
    lock keeps our threads from interleaving their changes to the warning filters."""
    with _WARNING_FILTERS, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(source)


def _open_image(source: Any, name: str, max_pixels: Optional[int]) -> Image.Image:
    """Decode an image file (a path or a binary file object) after checking its header's size."""
    try:
        with _open_quietly(source) as opened:  # closes the file; the loaded pixels stay usable
            _check_pixels(opened.width, opened.height, max_pixels, name)  # header only so far
            opened.load()
            img = opened
    except InputError:  # ours (over the limit); InputError is a ValueError, so not caught below
        raise
    except PermissionError as exc:
        raise InputError(f"{name}: cannot read the image file ({exc.strerror or exc})") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image format Pillow can read (expected JPEG, PNG, TIFF, ...)") from None
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"{name}: image too large to decode safely: {exc} (Pillow's PIL.Image.MAX_IMAGE_PIXELS guard; "
            f"max_image_pixels is {max_pixels if max_pixels is None else format(max_pixels, ',')})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"{name}: corrupt or truncated image ({exc})") from None
    return _apply_exif(img, name)


def _short(path: Path, limit: int = 200) -> str:
    text = str(path)
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 2 :]} ({len(text)} characters)"


def _apply_exif(img: Image.Image, name: str) -> Image.Image:
    """Rotate/flip as the EXIF orientation tag says (no copy when there is nothing to do)."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block must not make a readable image unusable
        return img
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        try:
            return ImageOps.exif_transpose(img)
        except Exception as exc:
            raise InputError(f"{name}: cannot apply its EXIF orientation ({exc})") from None
    return img


def _from_pil(img: Image.Image, name: str) -> Decoded:
    if img.width == 0 or img.height == 0:
        raise InputError(f"{name}: image has zero size ({img.width}x{img.height})")
    mode = img.mode
    if mode in ("RGB", "L"):
        return Decoded(name, pil=img)
    if mode in _SIXTEEN_BIT_MODES:
        a = np.asarray(img)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise InputError(f"{name}: {mode} image values must lie in 0..65535, got {lo}..{hi}")
        return Decoded(name, array=(a.astype(np.float32) / np.float32(65535.0)))
    if mode == "F":
        return Decoded(name, array=_check_float(np.asarray(img, dtype=np.float32), name))
    try:
        return Decoded(name, pil=img.convert("L" if mode in _GRAY_MODES else "RGB"))
    except Exception as exc:
        raise InputError(f"{name}: cannot convert PIL mode {mode!r} to RGB ({exc})") from None


def _from_array(a: np.ndarray, order: str, name: str) -> Decoded:
    shape = a.shape
    if a.ndim == 3 and shape[2] == 1:
        a = a[..., 0]
    elif a.ndim == 3 and shape[2] == 4:
        a = a[..., :3]  # alpha ignored
    elif a.ndim == 3 and shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4):
        raise InputError(
            f"{name}: shape {shape} looks channels-first; expected (H, W), (H, W, 1), (H, W, 3) or "
            f"(H, W, 4): use array.transpose(1, 2, 0)"
        )
    elif not (a.ndim == 2 or (a.ndim == 3 and shape[2] == 3)):
        raise InputError(f"{name}: expected shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{name}: image has zero size (shape {shape})")
    if a.dtype.byteorder not in ("=", "|") and not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))  # big-endian data (FITS, network order): same values
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        a = a.astype(np.float32) / np.float32(65535.0)
    elif a.dtype in (np.float16, np.float32, np.float64):
        # checked before the cast: a float64 beyond float32's range must not become "infinite"
        a = _check_float(a, name).astype(np.float32, copy=False)
    else:
        raise InputError(
            f"{name}: unsupported dtype {a.dtype}; expected uint8, uint16, or float16/32/64 in [0, 1] "
            f"(for example array.astype(np.uint8))"
        )
    return Decoded(name, array=a, order=order if a.ndim == 3 else "rgb")


def _check_float(a: np.ndarray, name: str) -> np.ndarray:
    """Refuse non-finite or out-of-range float pixels; clip rounding noise."""
    if not np.isfinite(a).all():
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        raise InputError(f"{name}: {bad} of {a.size} values are NaN or infinite; expected finite floats in [0, 1]")
    lo, hi = float(a.min()), float(a.max())
    if lo < -_FLOAT_TOLERANCE or hi > 1.0 + _FLOAT_TOLERANCE:
        hint = " (divide 0..255 data by 255)" if hi <= 255.0 + _FLOAT_TOLERANCE and lo >= 0 else ""
        raise InputError(f"{name}: float values must lie in [0, 1], got {lo:g}..{hi:g}{hint}")
    if lo < 0.0 or hi > 1.0:
        a = np.clip(a, 0.0, 1.0)
    return a
