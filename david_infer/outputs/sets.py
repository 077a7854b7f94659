"""One input's result files as a set: named by the input alone, written all or none (temporaries
renamed into place, the completion record last), told complete, changed or unfinished by a rerun.
See docs/outputs.md and docs/jobs.md#what-a-resume-checks."""

from __future__ import annotations

import contextlib
import enum
import glob
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence, Set, Tuple, TypeVar, Union

import numpy as np

from ..errors import InputError, stop_if_requested
from ..files import atomic_write, make_temp_path, no_space_reason, sha256_file

RECORD_SUFFIX = ".done.json"
TEMP_SUFFIX = ".david-partial"
RECORD_FORMAT = "david-infer-outputs"
RECORD_VERSION = 2
#: record formats this release reads (1: no input hash, no stamps; its sets are redone)
READ_VERSIONS = (1, 2)
PathLike = Union[str, "os.PathLike[str]"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_BASE = 100


def safe_base(name: str) -> str:
    """One part of an output name made file-name safe: every character other than letters, digits,
    `-`, `_` and `.` replaced by `_`, leading dots and spaces dropped (so no hidden files and never
    `.` or `..`), cut to 100 characters, `image` when nothing is left."""
    base = _UNSAFE.sub("_", name).lstrip(". ")[:MAX_BASE].rstrip(". ")
    return base or "image"


def output_name(path: PathLike, root: Optional[PathLike] = None) -> str:
    """The name of `path`'s output set, a function of the input alone: its path relative to `root`
    (default: its own folder; `shots/a/x.jpg` under `shots` -> `a/x`) without the suffix, each part
    file-name safe, parts joined by '/'."""
    absolute = Path(os.path.abspath(os.fspath(path)))
    base = Path(os.path.abspath(os.fspath(root))) if root is not None else absolute.parent
    try:
        parts = list(absolute.relative_to(base).parts) or [absolute.name]
    except ValueError:  # not under root: only the file's own name
        parts = [absolute.name]
    last = Path(parts[-1])
    parts[-1] = last.stem if last.suffix else last.name
    return "/".join(safe_base(part) for part in parts)


def _targets(outdir: Path, name: str, suffixes: Sequence[str]) -> List[Path]:
    """OUTDIR/NAME+suffix for each suffix, refusing any name that would leave OUTDIR or be hidden (the
    folder resolved once per set, not per file: that took most of a rerun's planning)."""
    parts = name.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") or "\\" in p for p in parts):
        raise InputError(
            f"output name {name!r} is not a plain relative name (parts may not be empty, hidden, '.' or '..')"
        )
    folder = Path(outdir, *parts[:-1])
    root = os.path.realpath(outdir) + os.sep
    targets = [folder / (parts[-1] + suffix) for suffix in suffixes]
    inside = (os.path.realpath(folder) + os.sep).startswith(root)
    if not inside or any(os.path.islink(t) and not os.path.realpath(t).startswith(root) for t in targets):
        raise InputError(f"output name {name!r} would leave the output folder {outdir}")
    return targets


class OutputKind(Protocol):
    """What a kind table needs of a kind (`images.ImageKind`, `clips.VideoKind`)."""

    @property
    def name(self) -> str: ...

    @property
    def suffixes(self) -> Tuple[str, ...]: ...

    @property
    def needs(self) -> Optional[str]: ...


K = TypeVar("K", bound=OutputKind)


class KindTable(Dict[str, K]):
    """The output kinds of one medium by name, in the order their files are written."""

    def __init__(self, medium: str, kinds: Sequence[K]) -> None:
        super().__init__((kind.name, kind) for kind in kinds)
        self.medium = medium

    def check(self, kinds: Sequence[str], tasks: Optional[Sequence[str]] = None) -> None:
        """InputError for a kind this table does not know, or (with the model's `tasks`) one that
        needs a task the model lacks."""
        unknown = [k for k in kinds if k not in self]
        if unknown:
            raise InputError(
                f"unknown output kind(s) {', '.join(unknown)} for {self.medium}; choose from {', '.join(self)}"
            )
        for kind in kinds:
            needs = self[kind].needs
            if tasks is not None and needs is not None and needs not in tasks:
                raise InputError(
                    f"--save {kind} needs a model that predicts {needs}; this one predicts {', '.join(tasks)} only"
                )

    def set(self, outdir: Union[str, Path], name: str, kinds: Sequence[str]) -> "OutputSet":
        """The set of `name`'s files of `kinds` in `outdir`."""
        return OutputSet(Path(outdir), name, tuple(kinds), self)


@dataclass(frozen=True)
class WriteOptions:
    """What shapes the files beyond the prediction, recorded and compared by `status`: the point
    cloud's horizontal `fov` (degrees) and `depth_range` (near, far), the runtime's invert_depth
    (`depth_inverse`), and `extra` (JSON values the caller records: model, resolution, ...)."""

    fov: float = 60.0
    depth_range: Tuple[float, float] = (1.0, 2.0)
    depth_inverse: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_ply_options(self.fov, *self.depth_range)

    def as_record(self) -> Dict[str, Any]:
        """The options as JSON values (what the record stores)."""
        near_far = [float(v) for v in self.depth_range]
        record = {"fov": float(self.fov), "depth_range": near_far, "depth_inverse": bool(self.depth_inverse)}
        return json.loads(json.dumps({**record, "extra": dict(self.extra)}))


def check_ply_options(fov: float, near: float, far: float) -> None:
    """InputError unless 0 < fov < 180 and 0 < near < far, all finite."""
    if not (np.isfinite(fov) and 0.0 < fov < 180.0):
        raise InputError(f"--fov must be between 0 and 180 degrees (exclusive), got {fov}")
    if not (np.isfinite(near) and np.isfinite(far) and 0.0 < near < far):
        raise InputError(f"--near and --far must be finite with 0 < near < far, got near={near}, far={far}")


class SetState(enum.Enum):
    """DONE, MISSING (nothing there), PARTIAL (files, no record), STALE (the input or a file changed
    since: redo), CHANGED (another --save, options, input or release: not ours to replace)."""

    DONE = "done"
    MISSING = "missing"
    PARTIAL = "partial"
    STALE = "stale"
    CHANGED = "changed"


@dataclass(frozen=True)
class SetStatus:
    """The state of one set, and why (for messages)."""

    state: SetState
    reason: str = ""


#: a modification time in whole milliseconds comes from a coarse clock (FAT: 2 s, HFS+: 1 s, some
#: network file systems): a change within one tick keeps the times, so the SHA-256 decides
_COARSE_NS = 1_000_000


@dataclass(frozen=True)
class FileStamp:
    """What `stat` tells of a file's contents without reading them: size, modification and change
    times (ns) and inode. Equal stamps mean unchanged contents unless `coarse`."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, path: PathLike) -> Optional["FileStamp"]:
        """The stamp of `path` (following links), or None when it cannot be read."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    @classmethod
    def from_record(cls, value: Any) -> Optional["FileStamp"]:
        """A stamp as `as_record` wrote it; None for anything else."""
        if isinstance(value, list) and len(value) == 4 and all(type(v) is int for v in value):
            return cls(*value)
        return None

    @property
    def coarse(self) -> bool:
        return self.mtime_ns % _COARSE_NS == 0

    def as_record(self) -> List[int]:
        return [self.size, self.mtime_ns, self.ctime_ns, self.inode]


@dataclass(frozen=True)
class Source:
    """The input file a set is made from, with its stamp taken before the model read it (so a
    change while it is predicted shows at the commit)."""

    path: str
    stamp: Optional[FileStamp]

    @classmethod
    def before_read(cls, path: PathLike) -> "Source":
        """`path` and its stamp now: call it before the input is read."""
        return cls(os.path.abspath(os.fspath(path)), FileStamp.of(path))

    def as_record(self) -> Dict[str, Any]:
        """What the record keeps of the input: name, path, size and stamp (from before the read),
        and its SHA-256 when the file is still as it was read (else None: the next run redoes it)."""
        digest = None
        if self.stamp is not None and FileStamp.of(self.path) == self.stamp:
            with contextlib.suppress(OSError):
                digest = sha256_file(self.path)
            if FileStamp.of(self.path) != self.stamp:  # changed while being read
                digest = None
        return {
            "file": os.path.basename(self.path),
            "path": self.path,
            "size": None if self.stamp is None else self.stamp.size,
            "stamp": None if self.stamp is None else self.stamp.as_record(),
            "sha256": digest,
        }


def file_change(path: PathLike, entry: Any, verify: bool = False) -> Optional[str]:
    """How the file `path` differs from its record `entry` ({"size", "sha256", "stamp"}), or None
    when it is unchanged: equal stamps (not coarse) are trusted, else (or with `verify`) the
    SHA-256 decides."""
    stamp = FileStamp.of(path)
    if stamp is None:
        return "is missing" if not os.path.lexists(path) else "cannot be read"
    if not isinstance(entry, dict) or entry.get("size") != stamp.size:
        size = entry.get("size") if isinstance(entry, dict) else None
        return f"has {stamp.size} bytes, {size} when recorded"
    if not verify and not stamp.coarse and FileStamp.from_record(entry.get("stamp")) == stamp:
        return None
    recorded = entry.get("sha256")
    if not isinstance(recorded, str):
        return "changed since it was recorded (no SHA-256 recorded: it changed while being read)"
    try:
        digest = sha256_file(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None if digest == recorded else "has other contents (SHA-256 differs from the record)"


def _changes(recorded: Any, options: WriteOptions) -> str:
    """Which options differ from the record's, as "name: recorded then, current now" (the record's
    nested "extra" entries by their own names); the whole record where it is not a mapping."""

    def flat(d: Any) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for k, v in d.items():
            out.update({f"{k}.{n}" if n in d else n: w for n, w in v.items()} if isinstance(v, dict) else {k: v})
        return out

    if not isinstance(recorded, dict):
        return repr(recorded)
    then, now = flat(recorded), flat(options.as_record())
    return "; ".join(
        f"{k}: {then.get(k)!r} then, {now.get(k)!r} now"
        for k in sorted(then.keys() | now.keys())
        if then.get(k) != now.get(k)
    )


class OutputSet:
    """The files of kinds `kinds` (from `table`) that input `name` gets in `outdir`, and their record."""

    def __init__(self, outdir: Path, name: str, kinds: Tuple[str, ...], table: KindTable[Any]) -> None:
        table.check(kinds)
        self.outdir, self.name, self.kinds, self.table = outdir, name, kinds, table
        suffixes = [s for k in kinds for s in table[k].suffixes]
        targets = _targets(outdir, name, [*suffixes, RECORD_SUFFIX])
        self.files: List[Path] = targets[:-1]
        self.record: Path = targets[-1]
        files = iter(self.files)
        #: kind -> its files, in the table's suffix order
        self.by_kind: Dict[str, List[Path]] = {k: [next(files) for _ in table[k].suffixes] for k in kinds}

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
            if no_space_reason(exc) is not None:
                raise  # the writer says so for the whole set
            raise InputError(f"cannot write {final}: {exc}") from None

    def commit(
        self,
        staged: Sequence[Tuple[Path, Path]],
        options: Optional[WriteOptions] = None,
        record: bool = True,
        source: Union[Source, PathLike, None] = None,
        results: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Put a set written to temporaries in place: remove the old record, rename each (temporary,
        final) pair, then write the completion record (unless `record` is False: a set that is
        knowingly incomplete, e.g. a truncated clip, stays unfinished for `status`). `source`: the
        input file, recorded: a `Source` taken before the input was read, or a path (stamped now,
        so a change while it was predicted goes unseen). `results`: JSON values the record shows
        (what the prediction found), never compared."""
        stop_if_requested()  # never put in place after a stop (its KeyboardInterrupt may have been lost)
        opts = options or WriteOptions()
        placed: List[Path] = []
        try:
            digests = {final.name: sha256_file(tmp) for tmp, final in staged}
            replaced = self._recorded_files()
            self.record.unlink(missing_ok=True)  # from here until the new record, the set counts as unfinished
            for tmp, final in staged:
                os.replace(tmp, final)
                placed.append(final)
            for old in replaced - {final.name for final in placed}:  # the replaced set's other kinds
                (self.record.parent / old).unlink(missing_ok=True)
            if not record:
                return
            files: Dict[str, Any] = {}
            for final in placed:  # stamped once in place: a rename moves the change time
                stamp = FileStamp.of(final)
                if stamp is None:
                    raise InputError(f"cannot read {final} back after writing it")
                files[final.name] = {"size": stamp.size, "sha256": digests[final.name], "stamp": stamp.as_record()}
            if source is not None and not isinstance(source, Source):
                source = Source.before_read(source)
            doc = {
                "format": RECORD_FORMAT,
                "version": RECORD_VERSION,
                "name": self.name,
                "kinds": list(self.kinds),
                "options": opts.as_record(),
                "source": source.as_record() if source is not None else None,
                "files": files,
            }
            if results is not None:
                doc["results"] = dict(results)
            data = (json.dumps(doc, indent=1) + "\n").encode()
            atomic_write(self.record, lambda tmp: tmp.write_bytes(data), suffix=TEMP_SUFFIX)
        except BaseException:
            for path in placed:  # all of the set or none of it
                path.unlink(missing_ok=True)
            raise

    def _recorded_files(self) -> Set[str]:
        """The names of this set's files its record lists (none where it has no readable record)."""
        try:
            names = json.loads(self.record.read_text(encoding="utf-8"))["files"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            return set()
        stem = Path(self.name).name + "."
        return {n for n in names if isinstance(n, str) and os.path.basename(n) == n and n.startswith(stem)}

    def status(
        self, options: Optional[WriteOptions] = None, verify: bool = False, source: Optional[PathLike] = None
    ) -> SetStatus:
        """Whether the set is complete for its kinds (and `options` and the input file `source`, when
        given; `verify`: re-hash every file); docs/jobs.md#what-a-resume-checks."""
        if not os.path.lexists(self.record):
            present = [t for t in self.files if os.path.lexists(t)]
            if not present:
                return SetStatus(SetState.MISSING)
            return SetStatus(SetState.PARTIAL, f"{len(present)} of {len(self.files)} files and no completion record")
        try:
            doc = json.loads(self.record.read_text(encoding="utf-8"))
            recorded = doc["files"]
            recorded_kinds, recorded_options, version = doc["kinds"], doc["options"], doc["version"]
            if doc.get("format") != RECORD_FORMAT or not isinstance(recorded, dict):
                raise ValueError("not a completion record")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            return SetStatus(SetState.CHANGED, f"{self.record} is not a readable completion record ({exc})")
        if version not in READ_VERSIONS:
            why = f"{self.record} was written by a newer release of david-infer (record format {version}); resume with that release"
            return SetStatus(SetState.CHANGED, why)
        if list(recorded_kinds) != list(self.kinds):
            why = f"written with --save {','.join(recorded_kinds)}, not {','.join(self.kinds)}"
            return SetStatus(SetState.CHANGED, why)
        if options is not None and recorded_options != options.as_record():
            return SetStatus(SetState.CHANGED, f"written with other options ({_changes(recorded_options, options)})")
        recorded_source = doc.get("source")
        if source is not None and not isinstance(recorded_source, dict):  # nothing to tell a changed input by
            return SetStatus(SetState.STALE, f"{self.record.name} does not say which input it was written for")
        if source is not None and isinstance(recorded_source, dict):
            here = os.path.abspath(os.fspath(source))
            same_input = recorded_source.get("path") == here
            if version == 1:  # name and size only: as that release told inputs apart
                stamp = FileStamp.of(here)
                here_id = (os.path.basename(here), None if stamp is None else stamp.size)
                same_input = (recorded_source.get("file"), recorded_source.get("size")) == here_id
                change = None if same_input else "differs"
            else:
                change = file_change(source, recorded_source, verify)
            if change is not None and not same_input:
                other = f"{recorded_source.get('path')}, {recorded_source.get('size')} bytes"
                return SetStatus(SetState.CHANGED, f"written for another input ({other})")
            if change is not None:
                return SetStatus(SetState.STALE, f"the input changed since its outputs were written: it {change}")
        if version == 1:
            why = (
                "is of an earlier release (record format 1), which kept no hash of the input to tell a changed input by"
            )
            return SetStatus(SetState.STALE, f"{self.record.name} {why}")
        for target in self.files:
            change = file_change(target, recorded.get(target.name), verify)
            if change is not None:
                return SetStatus(SetState.STALE, f"its output {target.name} {change}")
        return SetStatus(SetState.DONE)

    def is_complete(
        self, options: Optional[WriteOptions] = None, verify: bool = False, source: Optional[PathLike] = None
    ) -> bool:
        """True when the set is present, recorded and consistent (see `status`)."""
        return self.status(options, verify, source).state is SetState.DONE

    def remove_temporaries(self) -> List[Path]:
        """Delete the set's stale temporaries (`.<file>.*.david-partial` beside each of its files and
        its record); returns what was removed. Call it only while no other process writes this set."""
        removed: List[Path] = []
        for final in [*self.files, self.record]:
            for tmp in final.parent.glob(f".{glob.escape(final.name)}.*{TEMP_SUFFIX}"):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                    removed.append(tmp)
        return removed


def remove_all_temporaries(folders: Iterable[Path]) -> List[Path]:
    """Delete every temporary (`.*.david-partial`) in `folders` (not below them), whichever set or
    run left it; returns what was removed. Only for the owner of the output folder (see
    `david_infer.outputs.lock`): another writer's live temporaries would go too."""
    removed: List[Path] = []
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:  # not there (yet): nothing left in it
            continue
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX) and not entry.is_dir():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed
