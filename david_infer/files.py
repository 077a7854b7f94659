"""Single files written safely: atomically (a hidden temporary beside the target, then a rename),
without clobbering, and small JSON files read with a clear error. See docs/outputs.md."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np

from .errors import InputError, ModelError


class OutputExists(InputError):
    """An output file exists and overwriting was not allowed."""


class NoSpace(InputError):
    """Writing in `folder` stopped for want of space (see `no_space_reason`); `written`: the bytes
    the interrupted write had put down by then (a lower bound of what it needed)."""

    def __init__(self, message: str, folder: Path, reason: str, written: int = 0) -> None:
        super().__init__(message)
        self.folder, self.reason, self.written = folder, reason, written


def no_space_reason(exc: OSError) -> Optional[str]:
    """Why `exc` means that no more bytes can be written (a full disk, a quota, a file size limit:
    Python ignores SIGXFSZ, so that write fails with EFBIG); None when it means something else."""
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


def make_temp_path(final: Union[str, Path], suffix: str = ".tmp") -> Path:
    """An empty temporary file beside `final` with ordinary permissions, for an atomic rename."""
    final = Path(final)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def atomic_write(path: Union[str, Path], write: Callable[[Path], Any], suffix: str = ".tmp") -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it to `path` atomically; on
    any failure the temporary is removed and `path` left as it was."""
    path = Path(path)
    tmp = make_temp_path(path, suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: Union[str, Path], data: Mapping[str, Any], indent: int = 2) -> None:
    """Write `data` as JSON to `path` atomically."""
    atomic_write_bytes(path, (json.dumps(data, indent=indent) + "\n").encode())


def read_json_object(path: Union[str, Path], what: str = "JSON file", expect_object: bool = True) -> Any:
    """The JSON in `path` (an object unless not `expect_object`); ModelError naming `path` and `what`
    it should be when it is missing, unreadable or not that."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from None
    if expect_object and not isinstance(data, dict):
        raise ModelError(f"{path}: not a {what} (a JSON object was expected, found {type(data).__name__})")
    return data


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
    """`atomic_write`, but without `overwrite` OutputExists if `path` exists (checked atomically: the
    rename is a hard link, which fails when the name exists)."""
    path = Path(path)
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
            return path
        try:
            os.link(tmp, path)  # atomic, and fails if `path` exists
        except FileExistsError:
            raise OutputExists(f"{path} already exists; pass --overwrite to replace it") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
                raise
            check_free([path], False)  # a file system without hard links: check, then rename
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_png(path: Union[str, Path], array: np.ndarray) -> None:
    """Write an (H, W) uint8/uint16 or (H, W, 3|4) uint8 array as PNG to `path` (a temporary the
    caller renames into place)."""
    from PIL import Image

    a = np.ascontiguousarray(array)
    if a.dtype == np.uint16 and a.ndim != 2:
        raise InputError(f"{path}: 16-bit PNGs must be single-channel, got shape {a.shape}")
    Image.fromarray(a).save(path, format="PNG")  # uint16 (H, W) -> mode I;16


def write_npy(path: Union[str, Path], array: np.ndarray) -> None:
    """Write an array as .npy (no pickles) to `path` (a temporary, like `write_png`)."""
    with open(path, "wb") as f:
        try:
            np.save(f, np.asarray(array), allow_pickle=False)
        except OSError as exc:
            if exc.errno is None:  # numpy's short write ("N requested and M written") drops the errno:
                os.write(f.fileno(), b"\0")  # one more byte raises it (ENOSPC, EFBIG, ...)
            raise
