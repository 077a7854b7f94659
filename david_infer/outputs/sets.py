"""One input's result files as a set: all or none, resumable, named by the input alone.

Used by `david-infer predict` (images and clips), Ray (`david_infer.distributed`) and any batch
job that writes prediction files into a folder and must survive being killed and rerun.

- `output_name(path, root=None) -> str`: an input's *name*, a function of the input alone: its
  path relative to `root` (the folder, file or glob root given on the command line; default the
  file's own folder) without the file suffix, each part made file-name safe (`safe_base`).
  `shots/a/x.jpg` under root `shots` -> `a/x`; `x.jpg` alone -> `x`. The same file gets the same
  name whatever else is in the run, so a job split across machines or resumed with another input
  list writes each input under one name. Two inputs of one run with one name are the caller's to
  report (see `predict`); names are never renamed to dodge a clash.
- `KindTable`: the output kinds of one medium (`images.IMAGE_KINDS`, `clips.VIDEO_KINDS`), each
  with its file suffixes and the model task it needs; `table.set(outdir, name, kinds)` is an
  `OutputSet`.
- `OutputSet`: `files` (the planned files, record excluded), `record` (`OUTDIR/NAME.done.json`),
  `status(options, verify, source)`, `temporary(final)`, `commit(staged, options, ...)`,
  `remove_temporaries()`.
- `WriteOptions(fov, depth_range, depth_inverse, extra)`: what shapes the files; recorded.

How a set is put in place (`OutputSet.commit`): every file was written to a temporary file beside
its final name, `.<final file name>.<random>.david-partial` (hidden; the only names this module
ever deletes on its own are those, for the set being written); the old record is removed, each
temporary is renamed over its final name (replacing what was there), and the record is written
last (atomically). The record holds the format, the kinds, the options and each file's name, size
and SHA-256. So at any moment of a kill, either the record is present and describes the files
beside it, or it is absent and the set counts as unfinished. An exception or KeyboardInterrupt
during the commit removes whatever of the new set was already renamed into place.

`status` is DONE, MISSING (nothing of the set exists), PARTIAL (files without a record: an
interrupted write, to be redone) or CHANGED (a record whose files, options or source differ:
modified after writing, or written for another input of the same name; not ours to replace
without being told to). It checks the record's kinds, options and file sizes (cheap);
`verify=True` also re-hashes every file.
"""
from __future__ import annotations

import enum
import glob
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    Dict,
    Generic,
    Iterator,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

import numpy as np

from ..errors import InputError
from .files import atomic_write, make_temp_path, sha256_file

RECORD_SUFFIX = ".done.json"
TEMP_SUFFIX = ".david-partial"
RECORD_FORMAT = "david-infer-outputs"
RECORD_VERSION = 1
PathLike = Union[str, "os.PathLike[str]"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_BASE = 100


# ------------------------------------------------------------------------------------ names


def safe_base(name: str) -> str:
    """One part of an output name made file-name safe: every character other than letters, digits,
    `-`, `_` and `.` replaced by `_`, leading dots and spaces dropped (so no hidden files and never
    `.` or `..`), cut to 100 characters, `image` when nothing is left."""
    base = _UNSAFE.sub("_", name).lstrip(". ")[:MAX_BASE].rstrip(". ")
    return base or "image"


def output_name(path: PathLike, root: Optional[PathLike] = None) -> str:
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


# ------------------------------------------------------------------------------------ kinds


class OutputKind(Protocol):
    """What a kind table needs of a kind (`images.ImageKind`, `clips.VideoKind` add how to write it)."""

    @property
    def name(self) -> str: ...

    @property
    def suffixes(self) -> Tuple[str, ...]: ...

    @property
    def needs(self) -> Optional[str]: ...


K = TypeVar("K", bound=OutputKind)


class KindTable(Mapping[str, K], Generic[K]):
    """The output kinds of one medium, by name, in the order their files are written."""

    def __init__(self, medium: str, kinds: Sequence[K]) -> None:
        self.medium = medium
        self._kinds: Dict[str, K] = {kind.name: kind for kind in kinds}

    def __getitem__(self, name: str) -> K:
        return self._kinds[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)

    def check(self, kinds: Sequence[str], tasks: Optional[Sequence[str]] = None) -> None:
        """InputError for a kind this table does not know, or (with the model's `tasks`) one that
        needs a task the model lacks."""
        unknown = [k for k in kinds if k not in self._kinds]
        if unknown:
            raise InputError(f"unknown output kind(s) {', '.join(unknown)} for {self.medium}; choose from "
                             f"{', '.join(self._kinds)}")
        if tasks is None:
            return
        for kind in kinds:
            needs = self._kinds[kind].needs
            if needs is not None and needs not in tasks:
                raise InputError(f"--save {kind} needs a model that predicts {needs}; this one predicts "
                                 f"{', '.join(tasks)} only")

    def set(self, outdir: Union[str, Path], name: str, kinds: Sequence[str]) -> "OutputSet":
        """The set of `name`'s files of `kinds` in `outdir`."""
        return OutputSet(Path(outdir), name, tuple(kinds), self)


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


def _source(path: PathLike) -> Dict[str, Any]:
    """What the record keeps of the input file: its name and size (compared), and its path."""
    try:
        size: Optional[int] = os.stat(path).st_size
    except OSError:  # gone meanwhile: recorded as unknown, never equal to a recorded size
        size = None
    return {"file": os.path.basename(os.fspath(path)), "size": size, "path": os.path.abspath(os.fspath(path))}


# -------------------------------------------------------------------------------------- set


class OutputSet:
    """The files of kinds `kinds` (from `table`) that input `name` gets in `outdir`, and their record."""

    def __init__(self, outdir: Path, name: str, kinds: Tuple[str, ...], table: KindTable[Any]) -> None:
        table.check(kinds)
        self.outdir, self.name, self.kinds, self.table = outdir, name, kinds, table
        #: kind -> its files, in the table's suffix order
        self.by_kind: Dict[str, List[Path]] = {k: [_target(outdir, name, s) for s in table[k].suffixes]
                                               for k in kinds}
        self.files: List[Path] = [path for paths in self.by_kind.values() for path in paths]
        self.record: Path = _target(outdir, name, RECORD_SUFFIX)

    def make_folder(self) -> None:
        """Create the set's folder (names may hold subfolders: inputs found by --recursive)."""
        try:
            self.record.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the folder {self.record.parent}: {exc}") from None

    def temporary(self, final: Path) -> Path:
        """A new empty temporary file beside `final` (one of `files`) for `commit` to rename into place,
        named as `remove_temporaries` knows them."""
        try:
            return make_temp_path(final, TEMP_SUFFIX)
        except OSError as exc:
            raise InputError(f"cannot write {final}: {exc}") from None

    def commit(self, staged: Sequence[Tuple[Path, Path]], options: Optional[WriteOptions] = None,
               record: bool = True, source: Optional[PathLike] = None) -> None:
        """Put a set written to temporaries in place: remove the old record, rename each (temporary,
        final) pair, then write the completion record (unless `record` is False: a set that is
        knowingly incomplete, e.g. a truncated clip, stays unfinished for `status`). `source`: the
        input file, recorded (its file name and size)."""
        opts = options or WriteOptions()
        placed: List[Path] = []
        try:
            files = {final.name: {"size": tmp.stat().st_size, "sha256": sha256_file(tmp)} for tmp, final in staged}
            self.record.unlink(missing_ok=True)  # from here until the new record, the set counts as unfinished
            for tmp, final in staged:
                os.replace(tmp, final)
                placed.append(final)
            if not record:
                return
            doc = {"format": RECORD_FORMAT, "version": RECORD_VERSION, "name": self.name, "kinds": list(self.kinds),
                   "options": opts.as_record(), "source": _source(source) if source is not None else None,
                   "files": files}
            data = (json.dumps(doc, indent=1) + "\n").encode()
            atomic_write(self.record, lambda tmp: tmp.write_bytes(data), suffix=TEMP_SUFFIX)
        except BaseException:
            for path in placed:  # all of the set or none of it
                path.unlink(missing_ok=True)
            raise

    def status(self, options: Optional[WriteOptions] = None, verify: bool = False,
               source: Optional[PathLike] = None) -> SetStatus:
        """Whether the set is complete for its kinds (and `options` and the input file `source`,
        when given: same file name and size as recorded). See the module docstring."""
        if not os.path.lexists(self.record):
            present = [t for t in self.files if os.path.lexists(t)]
            if not present:
                return SetStatus(SetState.MISSING)
            return SetStatus(SetState.PARTIAL, f"{len(present)} of {len(self.files)} files and no completion record")
        try:
            doc = json.loads(self.record.read_text(encoding="utf-8"))
            recorded = doc["files"]
            recorded_kinds, recorded_options = doc["kinds"], doc["options"]
            if doc.get("format") != RECORD_FORMAT or not isinstance(recorded, dict):
                raise ValueError("not a completion record")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            return SetStatus(SetState.CHANGED, f"{self.record} is not a readable completion record ({exc})")
        if list(recorded_kinds) != list(self.kinds):
            return SetStatus(SetState.CHANGED, f"written with --save {','.join(recorded_kinds)}, "
                                               f"not {','.join(self.kinds)}")
        if options is not None and recorded_options != options.as_record():
            return SetStatus(SetState.CHANGED, f"written with other options ({recorded_options})")
        recorded_source = doc.get("source")
        if source is not None and isinstance(recorded_source, dict):
            here = _source(source)
            if (recorded_source.get("file"), recorded_source.get("size")) != (here["file"], here["size"]):
                return SetStatus(SetState.CHANGED, f"written for another input ({recorded_source.get('path')}, "
                                                   f"{recorded_source.get('size')} bytes)")
        for target in self.files:
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

    def is_complete(self, options: Optional[WriteOptions] = None, verify: bool = False,
                    source: Optional[PathLike] = None) -> bool:
        """True when the set is present, recorded and consistent (see `status`)."""
        return self.status(options, verify, source).state is SetState.DONE

    def remove_temporaries(self) -> List[Path]:
        """Delete the set's stale temporaries (`.<file>.*.david-partial` beside each of its files and
        its record); returns what was removed. Call it only while no other process writes this set."""
        removed: List[Path] = []
        for final in [*self.files, self.record]:
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
