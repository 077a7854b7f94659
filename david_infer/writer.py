"""Writing one input's result files as a set: all or none, resumable, named by the input alone.

Used by `david-infer predict`, and meant for any batch job (video frames, Ray, ...) that writes
prediction files into a folder and must survive being killed and rerun. Public API (stable):

- `output_name(path, root=None) -> str`: an input's *name*, a function of the input alone: its
  path relative to `root` (the folder, file or glob root given on the command line; default the
  file's own folder) without the file suffix, each part made file-name safe (`safe_base`).
  `shots/a/x.jpg` under root `shots` -> `a/x`; `x.jpg` alone -> `x`. The same file gets the same
  name whatever else is in the run, so a job split across machines or resumed with another input
  list writes each input under one name. Two inputs of one run with one name are the caller's to
  report (see `predict`); names are never renamed to dodge a clash.
- `SAVE_KINDS`, `SAVE_FILES` (kind -> file suffixes), `SAVE_NEEDS` (kind -> model task).
- `planned_files(outdir, name, kinds) -> [Path]`: the files of one input's set (record excluded).
- `record_path(outdir, name) -> Path`: `OUTDIR/NAME.done.json`, the completion record.
- `WriteOptions(fov, depth_range, depth_inverse, extra)`: what shapes the files; recorded.
- `write_outputs(pred, outdir, name, kinds, options, source=None) -> [Path]`: writes the set
  all-or-none (below); `source`, the input file, is recorded (its file name and size).
- `status(outdir, name, kinds, options=None, verify=False, source=None) -> SetStatus`: DONE,
  MISSING (nothing of the set exists), PARTIAL (files without a record: an interrupted write, to be
  redone) or CHANGED (a record whose files, options or source differ: modified after writing, or
  written for another input of the same name; not ours to replace without being told to).
  `is_complete(...)` is `status(...).state == DONE`.
- `remove_temporaries(outdir, name, kinds) -> [Path]`: deletes this set's stale temporaries.

How a set is written (`write_outputs`): every file goes to a temporary file beside its final name,
`.<final file name>.<random>.david-partial` (hidden; the only names this module ever deletes on
its own are those, for the set being written); then the old record is removed, each temporary is
renamed over its final name (replacing what was there), and the record is written last
(atomically). The record holds the format, the kinds, the options and each file's name, size and
SHA-256. So at any moment of a kill, either the record is present and describes the files beside
it, or it is absent and the set counts as unfinished. An exception or KeyboardInterrupt during
the write removes the temporaries and whatever of the new set was already renamed into place.

`status` checks the record's kinds, options and file sizes (cheap); `verify=True` also re-hashes
every file.
"""
from __future__ import annotations

import enum
import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputError
from .manifest import atomic_write, make_temp_path, sha256_file
from .outputs import safe_base

SAVE_KINDS = ("depth", "normal", "foreground", "vis", "ply")
#: kind -> the file suffixes it writes after the name
SAVE_FILES: Dict[str, Tuple[str, ...]] = {
    "depth": (".depth.png", ".depth.npy"),
    "normal": (".normal.png", ".normal.npy"),
    "foreground": (".foreground.png", ".cutout.png"),
    "vis": (".vis.png",),
    "ply": (".ply",),
}
#: kind -> the model task it needs
SAVE_NEEDS = {"depth": "depth", "normal": "normal", "foreground": "foreground", "ply": "depth"}
RECORD_SUFFIX = ".done.json"
TEMP_SUFFIX = ".david-partial"
RECORD_FORMAT = "david-infer-outputs"
RECORD_VERSION = 1


# ------------------------------------------------------------------------------------ names


def output_name(path: Union[str, "os.PathLike[str]"], root: Union[str, "os.PathLike[str]", None] = None) -> str:
    """The name of `path`'s output set: its path relative to `root` (default: its own folder),
    without the suffix, each part file-name safe, parts joined by '/'. See the module docstring."""
    absolute = Path(os.path.abspath(os.fspath(path)))
    base = Path(os.path.abspath(os.fspath(root))) if root is not None else absolute.parent
    try:
        parts = list(absolute.relative_to(base).parts) or [absolute.name]
    except ValueError:  # not under root: only the file's own name
        parts = [absolute.name]
    last = Path(parts[-1])
    parts[-1] = last.stem if last.suffix else last.name
    return "/".join(safe_base(part) for part in parts)


def _target(outdir: Path, name: str, suffix: str) -> Path:
    """OUTDIR/NAME+suffix, refusing any name that would leave OUTDIR or be hidden."""
    parts = name.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") or "\\" in p for p in parts):
        raise InputError(f"output name {name!r} is not a plain relative name (parts may not be empty, "
                         f"hidden, '.' or '..')")
    target = Path(outdir, *parts[:-1], parts[-1] + suffix)
    root = os.path.realpath(outdir)
    if not os.path.realpath(target).startswith(root + os.sep):
        raise InputError(f"output name {name!r} would leave the output folder {outdir}")
    return target


def planned_files(outdir: Union[str, Path], name: str, kinds: Sequence[str],
                  files: Mapping[str, Tuple[str, ...]] = SAVE_FILES) -> List[Path]:
    """Every file `write_outputs` writes for `name` and `kinds` (the record not included).
    `files` maps kinds to suffixes: SAVE_FILES for images, another table for other sets (video)."""
    _check_kinds(kinds, files)
    return [_target(Path(outdir), name, suffix) for kind in kinds for suffix in files[kind]]


def record_path(outdir: Union[str, Path], name: str) -> Path:
    """The completion record of `name`'s set: OUTDIR/NAME.done.json."""
    return _target(Path(outdir), name, RECORD_SUFFIX)


def _check_kinds(kinds: Sequence[str], files: Mapping[str, Tuple[str, ...]] = SAVE_FILES) -> None:
    unknown = [k for k in kinds if k not in files]
    if unknown:
        raise InputError(f"unknown output kind(s) {', '.join(unknown)}; choose from {', '.join(files)}")


# ---------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class WriteOptions:
    """What shapes the files beyond the prediction; recorded, and compared by `status`.

    fov: horizontal field of view in degrees of the point cloud (ply).
    depth_range: (near, far) distances the point cloud's depth is mapped to.
    depth_inverse: the runtime's invert_depth (larger = nearer).
    extra: anything else the caller wants recorded and compared (JSON values: model, resolution).
    """

    fov: float = 60.0
    depth_range: Tuple[float, float] = (1.0, 2.0)
    depth_inverse: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_ply_options(self.fov, *self.depth_range)

    def as_record(self) -> Dict[str, Any]:
        """The options as JSON values (what the record stores)."""
        return json.loads(json.dumps({"fov": float(self.fov), "depth_range": [float(v) for v in self.depth_range],
                                      "depth_inverse": bool(self.depth_inverse), "extra": dict(self.extra)}))


def check_ply_options(fov: float, near: float, far: float) -> None:
    """InputError unless 0 < fov < 180 and 0 < near < far, all finite."""
    if not (np.isfinite(fov) and 0.0 < fov < 180.0):
        raise InputError(f"--fov must be between 0 and 180 degrees (exclusive), got {fov}")
    if not (np.isfinite(near) and np.isfinite(far) and 0.0 < near < far):
        raise InputError(f"--near and --far must be finite with 0 < near < far, got near={near}, far={far}")


# ---------------------------------------------------------------------------------- writing


def _steps(pred: Any, kinds: Sequence[str], opts: WriteOptions) -> List[Tuple[str, Callable[[Path], None]]]:
    """(suffix, write(tmp)) for each file of the set, in SAVE_FILES order."""
    from . import apps, visualize
    from .outputs import depth_to_uint16, write_npy, write_png

    steps: List[Tuple[str, Callable[[Path], None]]] = []
    if "depth" in kinds:
        steps += [(".depth.png", lambda t: write_png(t, depth_to_uint16(pred.depth))),
                  (".depth.npy", lambda t: write_npy(t, pred.depth.astype(np.float32, copy=False)))]
    if "normal" in kinds:
        steps += [(".normal.png", lambda t: write_png(t, visualize.normals_to_rgb(pred.normal))),
                  (".normal.npy", lambda t: write_npy(t, pred.normal.astype(np.float32, copy=False)))]
    if "foreground" in kinds:
        steps += [(".foreground.png", lambda t: write_png(t, _alpha(pred.foreground))),
                  (".cutout.png", lambda t: write_png(t, apps.cutout(pred.image, pred.foreground)))]
    if "vis" in kinds:
        steps.append((".vis.png", lambda t: write_png(t, visualize.panel(pred, inverse_depth=opts.depth_inverse))))
    if "ply" in kinds:
        steps.append((".ply", lambda t: _write_cloud(t, pred, opts)))
    return steps


def _alpha(foreground: np.ndarray) -> np.ndarray:
    """The mask as 8-bit alpha, band by band (no full-size float temporaries)."""
    from ._arrays import fill_by_rows

    def band(rows: slice) -> np.ndarray:
        return np.rint(np.clip(foreground[rows], 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)

    return fill_by_rows(np.empty(foreground.shape, np.uint8), band)


def _write_cloud(path: Path, pred: Any, opts: WriteOptions) -> None:
    """The point cloud, cut by the mask; a mask that keeps no pixel (no person) gives a cloud
    without points and an EmptyMaskWarning, as in david_infer.apps."""
    from . import apps

    apps.stream_point_cloud(path, pred.image, pred.depth, pred.foreground, fov_deg=opts.fov,
                            depth_range=opts.depth_range, invert=opts.depth_inverse)


def _source(path: Union[str, "os.PathLike[str]"]) -> Dict[str, Any]:
    """What the record keeps of the input file: its name and size (compared), and its path."""
    try:
        size: Optional[int] = os.stat(path).st_size
    except OSError:  # gone meanwhile: recorded as unknown, never equal to a recorded size
        size = None
    return {"file": os.path.basename(os.fspath(path)), "size": size, "path": os.path.abspath(os.fspath(path))}


def write_outputs(pred: Any, outdir: Union[str, Path], name: str, kinds: Sequence[str],
                  options: Optional[WriteOptions] = None,
                  source: Union[str, "os.PathLike[str]", None] = None) -> List[Path]:
    """Write `name`'s set for `pred` all-or-none, replacing an older or unfinished set, and the
    completion record last; returns the files written (record not included). See the module
    docstring for the sequence and what an interruption leaves."""
    opts = options or WriteOptions()
    outdir = Path(outdir)
    targets = planned_files(outdir, name, kinds)
    record = record_path(outdir, name)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the folder {record.parent}: {exc}") from None
    staged: List[Tuple[Path, Path]] = []  # (temporary, final)
    try:
        for (suffix, write), final in zip(_steps(pred, kinds, opts), targets):
            assert final.name.endswith(suffix)
            tmp = temporary_for(final)
            staged.append((tmp, final))
            write(tmp)
        commit_set(staged, outdir, name, kinds, opts, source=source)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return targets


def temporary_for(final: Path) -> Path:
    """A new empty temporary file beside `final`, named as `remove_temporaries` knows them."""
    try:
        return make_temp_path(final, TEMP_SUFFIX)
    except OSError as exc:
        raise InputError(f"cannot write {final}: {exc}") from None


def commit_set(staged: Sequence[Tuple[Path, Path]], outdir: Union[str, Path], name: str, kinds: Sequence[str],
               options: Optional[WriteOptions] = None, record: bool = True,
               source: Union[str, "os.PathLike[str]", None] = None) -> None:
    """Put a set written to temporaries (`temporary_for`) in place: remove the old record, rename
    each (temporary, final) pair, then write the completion record (unless `record` is False: a
    set that is knowingly incomplete, e.g. a truncated clip, stays unfinished for `status`). For
    writers that produce their files over time (video) and so cannot use `write_outputs`. `source`:
    the input file, recorded as by `write_outputs`."""
    opts = options or WriteOptions()
    record_file = record_path(outdir, name)
    placed: List[Path] = []
    try:
        files = {final.name: {"size": tmp.stat().st_size, "sha256": sha256_file(tmp)} for tmp, final in staged}
        record_file.unlink(missing_ok=True)  # from here until the new record, the set counts as unfinished
        for tmp, final in staged:
            os.replace(tmp, final)
            placed.append(final)
        if not record:
            return
        doc = {"format": RECORD_FORMAT, "version": RECORD_VERSION, "name": name, "kinds": list(kinds),
               "options": opts.as_record(), "source": _source(source) if source is not None else None,
               "files": files}
        data = (json.dumps(doc, indent=1) + "\n").encode()
        atomic_write(record_file, lambda tmp: tmp.write_bytes(data), suffix=TEMP_SUFFIX)
    except BaseException:
        for path in placed:  # all of the set or none of it
            path.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------- status


class SetState(enum.Enum):
    DONE = "done"
    MISSING = "missing"
    PARTIAL = "partial"
    CHANGED = "changed"


@dataclass(frozen=True)
class SetStatus:
    """The state of one set, and why (for messages)."""

    state: SetState
    reason: str = ""


def status(outdir: Union[str, Path], name: str, kinds: Sequence[str], options: Optional[WriteOptions] = None,
           verify: bool = False, source: Union[str, "os.PathLike[str]", None] = None,
           files: Mapping[str, Tuple[str, ...]] = SAVE_FILES) -> SetStatus:
    """Whether `name`'s set in `outdir` is complete for `kinds` (and `options` and the input file
    `source`, when given: same file name and size as recorded). `files`: as for `planned_files`."""
    targets = planned_files(outdir, name, kinds, files)
    record = record_path(outdir, name)
    if not os.path.lexists(record):
        present = [t for t in targets if os.path.lexists(t)]
        if not present:
            return SetStatus(SetState.MISSING)
        return SetStatus(SetState.PARTIAL, f"{len(present)} of {len(targets)} files and no completion record")
    try:
        doc = json.loads(record.read_text(encoding="utf-8"))
        recorded = doc["files"]
        recorded_kinds, recorded_options = doc["kinds"], doc["options"]
        if doc.get("format") != RECORD_FORMAT or not isinstance(recorded, dict):
            raise ValueError("not a completion record")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        return SetStatus(SetState.CHANGED, f"{record} is not a readable completion record ({exc})")
    if list(recorded_kinds) != list(kinds):
        return SetStatus(SetState.CHANGED, f"written with --save {','.join(recorded_kinds)}, "
                                           f"not {','.join(kinds)}")
    if options is not None and recorded_options != options.as_record():
        return SetStatus(SetState.CHANGED, f"written with other options ({recorded_options})")
    recorded_source = doc.get("source")
    if source is not None and isinstance(recorded_source, dict):
        here = _source(source)
        if (recorded_source.get("file"), recorded_source.get("size")) != (here["file"], here["size"]):
            return SetStatus(SetState.CHANGED, f"written for another input ({recorded_source.get('path')}, "
                                               f"{recorded_source.get('size')} bytes)")
    for target in targets:
        entry = recorded.get(target.name)
        try:
            size = target.stat().st_size
        except OSError:
            return SetStatus(SetState.CHANGED, f"{target} is missing")
        if not isinstance(entry, dict) or entry.get("size") != size:
            return SetStatus(SetState.CHANGED, f"{target} differs from its completion record")
        if verify and entry.get("sha256") != sha256_file(target):
            return SetStatus(SetState.CHANGED, f"{target} differs from its completion record (SHA-256)")
    return SetStatus(SetState.DONE)


def is_complete(outdir: Union[str, Path], name: str, kinds: Sequence[str], options: Optional[WriteOptions] = None,
                verify: bool = False, source: Union[str, "os.PathLike[str]", None] = None,
                files: Mapping[str, Tuple[str, ...]] = SAVE_FILES) -> bool:
    """True when `name`'s set is present, recorded and consistent (see `status`)."""
    return status(outdir, name, kinds, options, verify, source, files).state is SetState.DONE


def remove_temporaries(outdir: Union[str, Path], name: str, kinds: Sequence[str],
                       files: Mapping[str, Tuple[str, ...]] = SAVE_FILES) -> List[Path]:
    """Delete the stale temporaries of `name`'s set (`.<file>.*.david-partial` beside each of its
    files and its record); returns what was removed. Call it only while no other process writes
    this set."""
    removed: List[Path] = []
    for final in [*planned_files(outdir, name, kinds, files), record_path(outdir, name)]:
        folder = final.parent
        if not folder.is_dir():
            continue
        for tmp in folder.glob(f".{glob.escape(final.name)}.*{TEMP_SUFFIX}"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:
                pass
    return removed
