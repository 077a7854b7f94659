"""Writing result files safely: names that stay inside the output folder, atomic writes, no clobbering.

`safe_base` makes one part of an output name file-name safe: every character other than letters,
digits, `-`, `_` and `.` replaced by `_`, leading dots and spaces dropped (so no hidden files and
never `.` or `..`), cut to 100 characters, `image` when nothing is left. How `david-infer predict`
names and writes each input's set of files is `david_infer.writer`.

Every file is written to a temporary name in OUTDIR and renamed into place, so a reader never sees
a half-written file and an interrupted run leaves no partial output. Without `overwrite` an
existing file is never replaced: the rename is done as a hard link, which fails when the name
exists (even if another process created it a moment ago).
"""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Union

import numpy as np

from .errors import InputError
from .manifest import make_temp_path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_BASE = 100


class OutputExists(InputError):
    """An output file exists and overwriting was not allowed."""


def safe_base(name: str) -> str:
    """The file-name-safe base for an input's stem (see the module docstring)."""
    base = _UNSAFE.sub("_", name).lstrip(". ")[:MAX_BASE].rstrip(". ")
    return base or "image"


def inside(folder: Path, name: str) -> Path:
    """`folder / name`, refusing any name that would leave `folder` (defence in depth)."""
    target = folder / name
    if os.path.dirname(name) or name in ("", ".", "..") or target.resolve().parent != folder.resolve():
        raise InputError(f"output name {name!r} would leave the output folder {folder}")
    return target


def check_free(paths: Iterable[Path], overwrite: bool) -> None:
    """OutputExists naming the first path that exists, unless `overwrite`."""
    if overwrite:
        return
    for path in paths:
        if os.path.lexists(path):
            raise OutputExists(f"{path} already exists; pass --overwrite to replace it "
                               f"(or choose another output folder)")


def commit(path: Union[str, Path], write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Write a file atomically: `write(tmp)` fills a temporary file beside `path`, which is then
    renamed to `path`. Without `overwrite`, OutputExists if `path` exists (checked atomically)."""
    path = Path(path)
    if not overwrite:
        check_free([path], overwrite)
    try:
        tmp = make_temp_path(path)
    except OSError as exc:  # strerror alone: the exception names the temporary file, not `path`
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        try:
            write(tmp)
        except OSError as exc:  # a full disk, a quota, an encoder refusing the data
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_no_clobber(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _link_no_clobber(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)  # atomic, and fails if `path` exists
    except FileExistsError:
        raise OutputExists(f"{path} already exists; pass --overwrite to replace it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        check_free([path], False)  # a file system without hard links: check, then rename
        os.replace(tmp, path)


def write_png(path: Union[str, Path], array: np.ndarray) -> None:
    """Write an (H, W) uint8/uint16 or (H, W, 3|4) uint8 array as PNG to `path` (not atomic: the
    caller renames it into place; see `commit` and `david_infer.writer`)."""
    from PIL import Image

    a = np.ascontiguousarray(array)
    if a.dtype == np.uint16 and a.ndim != 2:
        raise InputError(f"{path}: 16-bit PNGs must be single-channel, got shape {a.shape}")
    Image.fromarray(a).save(path, format="PNG")  # uint16 (H, W) -> mode I;16


def write_npy(path: Union[str, Path], array: np.ndarray) -> None:
    """Write an array as .npy (no pickles) to `path` (not atomic, like `write_png`)."""
    with open(path, "wb") as f:
        np.save(f, np.asarray(array), allow_pickle=False)


def save_png(path: Union[str, Path], array: np.ndarray, overwrite: bool = False) -> Path:
    """Save an (H, W) uint8/uint16 or (H, W, 3|4) uint8 array as PNG, atomically."""
    return commit(path, lambda tmp: write_png(tmp, array), overwrite)


def save_npy(path: Union[str, Path], array: np.ndarray, overwrite: bool = False) -> Path:
    """Save an array as .npy (no pickles), atomically."""
    return commit(path, lambda tmp: write_npy(tmp, array), overwrite)


def depth_to_uint16(depth: np.ndarray) -> np.ndarray:
    """Depth min-max normalised over its finite pixels to 0..65535 (non-finite -> 0). Works band
    by band: the only image-sized array made is the result."""
    from ._arrays import fill_by_rows, finite_range

    d = np.asarray(depth)
    span = finite_range(d)
    if span is None or span[1] <= span[0]:
        return np.zeros(d.shape, np.uint16)
    lo, scale = span[0], 65535.0 / (span[1] - span[0])

    def band(rows: slice) -> np.ndarray:
        t = (d[rows].astype(np.float64) - lo) * scale  # float64 per band: exact at 16 bits
        return np.rint(np.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)).astype(np.uint16)

    return fill_by_rows(np.empty(d.shape, np.uint16), band)
