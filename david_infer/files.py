"""Single files written safely: atomic writes, no clobbering, names that stay in their folder, hashes.

Every file is written to a temporary name beside its final one (`make_temp_path`: hidden, in the
same folder, so the rename cannot cross file systems) and renamed into place, so a reader never
sees a half-written file and an interrupted write leaves nothing behind.

- `atomic_write(path, write)` / `atomic_write_bytes(path, data)`: replace `path` atomically (model
  manifests, engines, JSON records, benchmark results).
- `commit(path, write, overwrite)`: the same, but without `overwrite` an existing file is never
  replaced: the rename is done as a hard link, which fails when the name exists (even if another
  process created it a moment ago).
- `write_png` / `write_npy`: fill a file that is not yet in place (what `commit` and the output
  sets of `david_infer.outputs.sets` hand them).
- `sha256_file`: a file's SHA-256, read in chunks.
- `NoSpace`, `no_space_reason`: a write that failed for want of space (a full disk, a quota, a
  file size limit), told apart from other write errors.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np

from .errors import InputError


class OutputExists(InputError):
    """An output file exists and overwriting was not allowed."""


class NoSpace(InputError):
    """Writing in `folder` stopped for want of space (see `no_space_reason`); `written`: the bytes
    the interrupted write had put down by then (a lower bound of what it needed)."""

    def __init__(self, message: str, folder: Path, reason: str, written: int = 0) -> None:
        super().__init__(message)
        self.folder, self.reason, self.written = folder, reason, written


def no_space_reason(exc: OSError) -> Optional[str]:
    """Why `exc` means that no more bytes can be written (a full file system, a used-up quota, a
    file size limit: Python ignores SIGXFSZ, so that write fails with EFBIG); None when it means
    something else."""
    return {
        errno.ENOSPC: "no space is left on its file system",
        errno.EDQUOT: "the disk quota is used up",
        errno.EFBIG: "a file reached the file size limit (ulimit -f)",
    }.get(exc.errno)  # type: ignore[arg-type]


def sha256_file(path: Union[str, "os.PathLike[str]"], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask_mode(mode: int = 0o666) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def make_temp_path(final: Union[str, Path], suffix: str = ".tmp") -> Path:
    """An empty temporary file beside `final` with ordinary permissions, for an atomic rename."""
    final = Path(final)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=suffix)
    os.close(fd)
    os.chmod(tmp, _umask_mode())
    return Path(tmp)


def atomic_write(path: Union[str, Path], write: Callable[[Path], Any], suffix: str = ".tmp") -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it to `path` atomically.

    On any failure the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = make_temp_path(path, suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


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
            raise OutputExists(
                f"{path} already exists; pass --overwrite to replace it (or choose another output folder)"
            )


def commit(path: Union[str, Path], write: Callable[[Path], object], overwrite: bool = False) -> Path:
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
    caller renames it into place; see `commit` and `david_infer.outputs.sets`)."""
    from PIL import Image

    a = np.ascontiguousarray(array)
    if a.dtype == np.uint16 and a.ndim != 2:
        raise InputError(f"{path}: 16-bit PNGs must be single-channel, got shape {a.shape}")
    Image.fromarray(a).save(path, format="PNG")  # uint16 (H, W) -> mode I;16


def write_npy(path: Union[str, Path], array: np.ndarray) -> None:
    """Write an array as .npy (no pickles) to `path` (not atomic, like `write_png`)."""
    with open(path, "wb") as f:
        try:
            np.save(f, np.asarray(array), allow_pickle=False)
        except OSError as exc:
            if exc.errno is None:  # numpy's short write ("N requested and M written") drops the errno:
                os.write(f.fileno(), b"\0")  # one more byte raises it (ENOSPC, EFBIG, ...)
            raise
