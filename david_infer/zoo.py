"""The released DAViD models (github.com/microsoft/DAViD, MIT licence): names, the cache folder and a
resumable, size-checked, locked download (docs/runtime.md#released-models-the-zoo).
Own downloader: pooch 1.9.0 restarts a cut transfer (a 3 MB file cut at 2 MB: it asked 3 MB, `fetch` 1 MB)."""

from __future__ import annotations

import contextlib
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from http.client import HTTPException
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from . import __version__
from .errors import ModelError
from .files import read_json_object, sha256_file, write_json
from .outputs.lock import OwnerLock
from .progress import BYTES, Progress

BASE_URL = "https://facesyntheticspubwedata.z6.web.core.windows.net/iccv-2025/models/"
ENV_HOME = "DAVID_INFER_HOME"
ENV_BASE_URL = "DAVID_INFER_BASE_URL"
DEFAULT_HOME = "~/.cache/david-infer"
SIZE_TOLERANCE = 0.01  # relative; the card sizes are rounded MB
DEFAULT_TIMEOUT = 60.0  # seconds without any byte arriving (connect or read)
CHUNK = 1 << 20


@dataclass(frozen=True)
class ZooModel:
    """One released model file."""

    name: str  # the short name users type: depth-base, multitask-large, ...
    filename: str  # the released file's name
    variant: str  # base | large
    task: str  # depth | normal | foreground | multitask
    card_mb: float  # ONNX size on the model card, MB (rounded)

    def url(self, base_url: Optional[str] = None) -> str:
        """Download URL (under `base_url`, default `$DAVID_INFER_BASE_URL` or Microsoft's)."""
        base = base_url if base_url is not None else get_base_url()
        return base.rstrip("/") + "/" + self.filename

    def card_sizes(self) -> Tuple[int, int]:
        """The card's size in bytes under both readings of "MB" (10**6 and 2**20)."""
        return int(round(self.card_mb * 1e6)), int(round(self.card_mb * (1 << 20)))


_FILE_TASK = {"depth": "depth", "normal": "normal", "foreground": "foreground-segmentation"}
_CARD_MB = {"base": 428.42, "large": 1314.13}

MODELS: Dict[str, ZooModel] = {
    f"{task}-{variant}": ZooModel(
        f"{task}-{variant}", f"{_FILE_TASK[task]}-model-vit{variant[0]}16_384.onnx", variant, task, _CARD_MB[variant]
    )
    for task in ("depth", "normal", "foreground")
    for variant in ("base", "large")
}
MODELS["multitask-large"] = ZooModel(
    "multitask-large", "multi-task-model-vitl16_384.onnx", "large", "multitask", 1316.66
)


def list_models() -> List[str]:
    """Names of the released models, e.g. `depth-base`, `multitask-large`."""
    return list(MODELS)


def get_model(name: str) -> ZooModel:
    """The registry entry for `name`; ModelError listing the known names otherwise."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ModelError(f"unknown model {name!r}; the released models are: {', '.join(MODELS)}") from None


def resolve_model(model: Union[str, "os.PathLike[str]"], download: bool = True) -> Path:
    """A model argument -> a path: an existing file or folder as it is, else a released model's
    name (its cached file, downloaded first when missing and `download`); ModelError otherwise."""
    if os.path.exists(model):
        return Path(model)
    if isinstance(model, str) and model in MODELS:
        return model_path(model, download=download)
    raise ModelError(
        f"model {str(model)!r} is neither an existing file or folder nor a released model name ({', '.join(MODELS)})"
    )


def get_base_url() -> str:
    return os.environ.get(ENV_BASE_URL) or BASE_URL


def home() -> Path:
    """The david-infer cache folder: `$DAVID_INFER_HOME`, default `~/.cache/david-infer`."""
    return Path(os.environ.get(ENV_HOME) or DEFAULT_HOME).expanduser()


def models_dir() -> Path:
    """Where downloaded models live: `home()/models`."""
    return home() / "models"


def cached_path(name: str) -> Path:
    """Where model `name` is (or would be) in the cache; nothing is checked or downloaded."""
    return models_dir() / get_model(name).filename


def part_path(dest: Path) -> Path:
    """The in-progress download beside `dest` (`FILE.part`), kept between runs to resume."""
    return dest.with_name(dest.name + ".part")


def download_record_path(dest: Path) -> Path:
    """The download record beside `dest`: size and SHA-256 measured after the download."""
    return dest.with_name(dest.name + ".download.json")


def model_path(name: str, download: bool = True, verify: bool = False, progress: bool = True) -> Path:
    """Path of the cached model file `name`, downloading it first when missing and `download`. Its
    size is checked against its download record (SHA-256 too when `verify`); a file put there by
    hand must have the model card's size, and its SHA-256 is then recorded."""
    model = get_model(name)
    dest = cached_path(name)
    if dest.is_file():
        check_cached(model, dest, verify=verify)
        return dest
    if not download:
        raise ModelError(
            f"model {name!r} is not in the cache: {dest} does not exist. Run `david-infer download "
            f"{name}`, or download {model.url()} yourself and save it as {dest}"
        )
    return _download(name, progress=progress)


def download(
    name: str, force: bool = False, progress: bool = True, timeout: float = DEFAULT_TIMEOUT, retries: int = 2
) -> Path:
    """Download model `name` into the cache (resuming a partial download) and return its path; a
    cached file is size-checked and returned unless `force`, which discards it and any partial
    download first. A second process downloading the same model waits, then finds the file."""
    model = get_model(name)
    dest = cached_path(name)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"cannot create the model cache folder {dest.parent}: {exc}; set {ENV_HOME} to a writable folder"
        ) from None
    with OwnerLock(dest.with_name(dest.name + ".lock"), f"the download of {dest.name}", wait=True):
        if force:
            for stale in (dest, download_record_path(dest), part_path(dest), _part_meta_path(dest)):
                stale.unlink(missing_ok=True)
        elif dest.is_file():
            check_cached(model, dest, verify=False)
            return dest
        url = model.url()
        try:
            fetch(url, dest, expected_sizes=model.card_sizes(), progress=progress, timeout=timeout, retries=retries)
        except ModelError as exc:
            raise ModelError(f"{exc}. {offline_hint(model.task)}") from None
        _write_download_record(dest, name=name, url=url)
    return dest


_download = download  # what model_path calls: its `download` argument hides the function


def offline_hint(task: str) -> str:
    """What to do without the released file: the one offline path (README.md, docs/install.md), a
    Base model of `task` with random weights (Base, whatever was asked: Large's export peaks at
    13.6 GB and writes 1.3 GB)."""
    from ._optional import EXPORT_INSTALL, TORCH_ELSEWHERE

    name = "mt-base.onnx" if task == "multitask" else f"{task}-base.onnx"
    return (
        f"To try the tools without the released file meanwhile, export a Base model of the same task with "
        f"random weights (its maps mean nothing): {EXPORT_INSTALL} && david-infer export --variant base "
        f"--task {task} -o {name}, then pass -m {name} ({TORCH_ELSEWHERE})"
    )


def check_cached(model: ZooModel, path: Path, verify: bool = False) -> Dict[str, Any]:
    """ModelError if the cached `path` is truncated or (with `verify`) changed since download."""
    size = path.stat().st_size
    record = read_download_record(path)
    redo = f"delete it and run `david-infer download {model.name} --force`"
    if record is None:  # put there by hand (the offline route): size check, then remember it
        if not _size_plausible(size, model.card_sizes()):
            raise ModelError(
                f"{path}: {size} bytes, but the model card of {model.name} says about {model.card_mb} MB; "
                f"the file is truncated or not {model.filename}: {redo}"
            )
        with contextlib.suppress(OSError):  # a read-only cache still loads
            return _write_download_record(path, name=model.name, url="(placed by hand)")
        return {"size": size}
    if size != record.get("size"):
        raise ModelError(
            f"{path}: {size} bytes, but {record.get('size')} were downloaded "
            f"({download_record_path(path).name}); the file is damaged: {redo}"
        )
    if verify and sha256_file(path) != record.get("sha256"):
        raise ModelError(
            f"{path}: SHA-256 differs from the one recorded after download "
            f"({download_record_path(path).name}); the file is damaged: {redo}"
        )
    return record


def read_download_record(path: Path) -> Optional[Dict[str, Any]]:
    """The download record of `path`, or None if there is none (or it is unreadable: the file is
    then checked like one placed by hand, and the record written anew)."""
    try:
        data = read_json_object(download_record_path(path), "download record")
    except ModelError:
        return None
    return data if "size" in data and "sha256" in data else None


def _write_download_record(path: Path, name: str, url: str) -> Dict[str, Any]:
    record = {
        "name": name,
        "file": path.name,
        "url": url,
        "size": path.stat().st_size,
        "sha256": sha256_file(path),
        "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": "SHA-256 measured by david-infer after download; Microsoft publishes no checksums",
    }
    write_json(download_record_path(path), record)
    return record


class _Retryable(Exception):
    """A failure worth another attempt (network error, cut transfer, server error)."""


def fetch(
    url: str,
    dest: Union[str, Path],
    expected_sizes: Sequence[int] = (),
    tolerance: float = SIZE_TOLERANCE,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = 0,
) -> int:
    """Download `url` to `dest` through `dest.part` (kept when cut, resumed with an HTTP Range request
    by the next call); returns the size. The announced size must be within `tolerance` of one of
    `expected_sizes` (when given), the bytes received exactly that: only then does `dest` appear."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    last: Optional[_Retryable] = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
        try:
            return _fetch_once(url, dest, expected_sizes, tolerance, progress, timeout)
        except _Retryable as exc:
            last = exc
    part = part_path(dest)
    kept = (
        f" The {part.stat().st_size} bytes received are kept in {part}; run the same command again to resume."
        if part.is_file() and part.stat().st_size
        else ""
    )
    raise ModelError(
        f"download failed: {url}: {last}.{kept} Offline? Download that URL on another machine and save it as {dest}"
    )


def _fetch_once(url: str, dest: Path, expected: Sequence[int], tolerance: float, progress: bool, timeout: float) -> int:
    part, meta_path = part_path(dest), _part_meta_path(dest)
    have = part.stat().st_size if part.is_file() else 0
    try:  # what the partial download belongs to; unknown: it starts over
        meta = read_json_object(meta_path, "partial-download record") if have else {}
    except ModelError:
        meta = {}
    if have and have == meta.get("total") and meta.get("url") == url:  # finished, but not renamed
        os.replace(part, dest)
        meta_path.unlink(missing_ok=True)
        return have
    headers = {"User-Agent": f"david-infer/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if meta.get("validator"):  # the server sends the whole file if it changed since
            headers["If-Range"] = meta["validator"]
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:  # our partial file is not a prefix of theirs: start over
            _discard_part(dest)
            return _fetch_once(url, dest, expected, tolerance, progress, timeout)
        if exc.code >= 500 or exc.code == 429:
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
        raise ModelError(
            f"download failed: {url}: HTTP {exc.code} {exc.reason}. Check the URL "
            f"(${ENV_BASE_URL}={get_base_url()!r}), or save the file by hand as {dest}"
        ) from None
    except (urllib.error.URLError, OSError, HTTPException) as exc:
        raise _Retryable(f"cannot connect ({getattr(exc, 'reason', exc)})") from None
    with resp:
        resumed = have > 0 and resp.status == 206
        start, total = _announced_range(resp)
        if resumed and (total is None or start != have or meta.get("total") not in (None, total)):
            resp.close()  # a resume we cannot trust (moved offset, changed file): start over
            _discard_part(dest)
            return _fetch_once(url, dest, expected, tolerance, progress, timeout)
        if total is None:
            raise ModelError(
                f"download failed: {url}: the server sent no usable Content-Length / "
                f"Content-Range, so the download cannot be checked"
            )
        if expected and not _size_plausible(total, expected, tolerance):
            _discard_part(dest)
            raise ModelError(
                f"download refused: {url} is {total} bytes, but the model card says about "
                f"{expected[0] / 1e6:.2f} MB (±{tolerance:.0%}); the URL serves another file "
                f"(an error page, a proxy's login page?). Nothing was written to {dest}"
            )
        if not resumed:  # fresh, or the server ignored Range and sends everything (200)
            have = 0
            etag = resp.headers.get("ETag")  # If-Range needs a strong validator
            validator = etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified")
            write_json(meta_path, {"url": url, "total": total, "validator": validator})
        _copy_body(resp, part, "ab" if resumed else "wb", have, total, dest.name, progress)
    size = part.stat().st_size
    if size != total:
        raise _Retryable(f"the connection ended after {size} of {total} bytes")
    os.replace(part, dest)
    meta_path.unlink(missing_ok=True)
    return size


def _copy_body(resp: Any, part: Path, mode: str, have: int, total: int, label: str, progress: bool) -> None:
    try:
        f = open(part, mode)
    except OSError as exc:
        raise ModelError(f"cannot write {part}: {exc}") from None
    try:
        with f, Progress(total, progress, desc=label, unit=BYTES, initial=have) as bar:
            while True:
                try:  # read1: whatever has arrived, so a stall loses no received bytes
                    block = resp.read1(CHUNK)
                except (OSError, HTTPException) as exc:  # timeout or reset mid-body: keep what came
                    raise _Retryable(f"transfer interrupted ({exc or type(exc).__name__})") from None
                if not block:
                    break
                f.write(block)
                bar.advance(len(block))
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:  # disk full, permissions: not worth a retry
        raise ModelError(f"cannot write {part}: {exc}; free some space or set ${ENV_HOME} elsewhere") from None


_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+)\s*")


def _announced_range(resp: Any) -> Tuple[Optional[int], Optional[int]]:
    """(first byte, total file size) the server announces: Content-Range (206) or Content-Length (200)."""
    if resp.status == 206:
        m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
        return (int(m.group(1)), int(m.group(3))) if m else (None, None)
    length = resp.headers.get("Content-Length")
    return None, int(length) if length and length.isdigit() else None


def _size_plausible(size: int, expected: Sequence[int], tolerance: float = SIZE_TOLERANCE) -> bool:
    return any(abs(size - e) <= tolerance * e for e in expected)


def _part_meta_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part.json")


def _discard_part(dest: Path) -> None:
    part_path(dest).unlink(missing_ok=True)
    _part_meta_path(dest).unlink(missing_ok=True)
