"""The job layer of every batch run (`david-infer predict` on images and clips, `predict_dataset` on
Ray): inputs collected and named, the output folder probed and owned, each input planned against
what the folder holds; `Tally` counts what happened. See docs/jobs.md."""

from __future__ import annotations

import errno
import glob
import itertools
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .errors import DavidError, InputError
from .files import make_temp_path
from .outputs import sets
from .outputs.clips import VIDEO_KINDS
from .outputs.images import FORMATS, IMAGE_KINDS
from .outputs.lock import OwnerLock
from .outputs.sets import KindTable, SetState, WriteOptions, check_ply_options, output_name, remove_all_temporaries
from .video import VIDEO_SUFFIXES

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".npy"}
INPUT_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES
#: the --save kinds that only clips have
VIDEO_ONLY_KINDS = tuple(kind for kind in VIDEO_KINDS if kind not in IMAGE_KINDS)
#: the endings of every file a run writes: a file in the output folder ending so is an output
OUTPUT_ENDINGS = tuple(
    sorted({suffix for table in (IMAGE_KINDS, VIDEO_KINDS) for kind in table.values() for suffix in kind.suffixes})
    + [sets.RECORD_SUFFIX]
)
#: for a kind that only clips have, the image kind that writes the same for an image
IMAGE_EQUIVALENT = {"cutout": "foreground:cutout", "depth-npz": "depth:npy"}
#: the lock file of an output folder while a run owns it
OUTPUT_LOCK = ".david-infer.lock"
#: (input, output name) of one input of a run
Job = Tuple[Path, str]


@dataclass(frozen=True)
class JobOptions:
    """What a run writes (--save; empty: the model's maps + vis) and how it treats the output folder
    (--overwrite, --recursive); the point cloud's fov, near and far."""

    save: Tuple[str, ...] = ()
    overwrite: bool = False
    recursive: bool = False
    fov: float = 60.0
    near: float = 1.0
    far: float = 2.0

    def __post_init__(self) -> None:
        given = [self.save] if isinstance(self.save, str) else list(self.save or ())
        object.__setattr__(self, "save", tuple(check_save(given)))
        check_ply_options(self.fov, self.near, self.far)

    def write_options(self, runtime: Any) -> WriteOptions:
        """What shapes the files with `runtime` (recorded in each completion record)."""
        return WriteOptions(
            self.fov, (self.near, self.far), runtime.post_options.invert_depth, extra=model_record(runtime)
        )


@dataclass
class InputSet:
    """What the INPUT arguments name: (file, root) pairs, one per distinct file; the arguments that
    named nothing, with the reason; warnings about what was left out, and their counts."""

    inputs: List[Tuple[Path, Path]] = field(default_factory=list)
    problems: List[Tuple[str, str]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    dangling: int = 0
    duplicates: int = 0


class OutputFilter:
    """Tells a run's outputs in the folder `output` (None: nothing is): files in or below it named as
    outputs (OUTPUT_ENDINGS). Each folder is resolved once, not once per file."""

    def __init__(self, output: Optional[Path]) -> None:
        self._root = None if output is None else os.path.realpath(output) + os.sep
        self._inside: Dict[Path, bool] = {}

    def __call__(self, path: Path) -> bool:
        if self._root is None or not path.name.lower().endswith(OUTPUT_ENDINGS):
            return False
        if path.parent not in self._inside:
            self._inside[path.parent] = (os.path.realpath(path.parent) + os.sep).startswith(self._root)
        return self._inside[path.parent]


def collect_inputs(specs: Sequence[str], recursive: bool = False, output: Optional[Path] = None) -> InputSet:
    """Expand files, folders and globs into image and video files, each with the root its output
    name is taken from (a folder's files sorted); dangling links and second names of one file are
    warnings; the outputs of a run in `output` are left out (docs/jobs.md)."""
    found = InputSet()
    seen: Dict[str, Path] = {}
    is_ours = OutputFilter(output)

    def add(path: Path, root: Path) -> None:
        real = os.path.realpath(path)
        if real in seen:
            found.duplicates += 1
            same = "given more than once" if str(path) == str(seen[real]) else f"the same file as {seen[real]}"
            found.warnings.append(f"{path}: {same}; written once")
        else:
            seen[real] = path
            found.inputs.append((path, root))

    def skip(links: Sequence[Path], others: Sequence[Path]) -> None:
        found.dangling += len(links)
        found.warnings.extend(f"{link}: {_broken_link(link)}; skipped" for link in links)
        found.problems.extend((str(other), _not_regular(other)) for other in others)

    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            files, broken, others = _folder_inputs(path, recursive, is_ours)
            skip(broken, others)
            if not files and not broken and not others:
                found.problems.append((spec, _empty_folder(path, output)))
            for file in files:
                add(file, path)
        elif path.is_file():
            add(path, path.parent)
        elif path.exists():  # a pipe, socket or device: reading it would block or never end
            skip([], [path])
        elif path.is_symlink():
            found.problems.append((spec, _broken_link(path)))
        elif glob.has_magic(spec):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
            files = [m for m in matches if m.is_file() and not is_ours(m)]
            skip(
                [m for m in matches if m.is_symlink() and not m.exists()],
                [m for m in matches if m.exists() and not m.is_file() and not m.is_dir()],
            )
            if not matches:
                found.problems.append((spec, "the pattern matched no file"))
            elif not files and any(is_ours(m) for m in matches):
                why = f"the pattern matched only the outputs of a run in the output folder {output} (outputs are never inputs)"
                found.problems.append((spec, why))
            root = Path(*itertools.takewhile(lambda part: not glob.has_magic(part), path.parts[:-1]))
            for match in files:
                add(match, root)
        else:
            found.problems.append((spec, "no such file or folder"))
    return found


def _empty_folder(folder: Path, output: Optional[Path]) -> str:
    text = f"folder holds no images or videos ({', '.join(sorted(INPUT_SUFFIXES))})"
    if output is not None and os.path.realpath(folder) == os.path.realpath(output):
        text += " other than the outputs of a run (it is also the output folder; outputs are never inputs)"
    return text


def _folder_inputs(folder: Path, recursive: bool, is_ours: OutputFilter) -> Tuple[List[Path], List[Path], List[Path]]:
    """(files, broken links, entries that are no regular file) of a folder with an input suffix,
    each sorted; the run's outputs left out."""
    files, broken, others = [], [], []
    for entry in folder.rglob("*") if recursive else folder.iterdir():
        if entry.name.startswith(".") or entry.suffix.lower() not in INPUT_SUFFIXES or is_ours(entry):
            continue
        try:
            mode = entry.stat().st_mode  # through links
        except OSError:  # a link to nothing, or a loop of links
            if entry.is_symlink():
                broken.append(entry)
            continue
        if stat.S_ISREG(mode):
            files.append(entry)
        elif not stat.S_ISDIR(mode):
            others.append(entry)
    return sorted(files, key=str), sorted(broken, key=str), sorted(others, key=str)


def _broken_link(path: Path) -> str:
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"a symbolic link into a loop of links ({path.name} -> {os.readlink(path)} -> ...)"
    return f"a symbolic link to a missing file ({os.readlink(path)})"


def _not_regular(path: Path) -> str:
    mode = os.stat(path).st_mode
    kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"not a regular file but {kind}; expected an image or video file"


def name_inputs(inputs: Sequence[Tuple[Path, Path]]) -> Tuple[List[Job], List[Tuple[str, str]]]:
    """(path, output name) per input, and a failure for each input whose name (compared
    case-insensitively, as some file systems do) an earlier input already has."""
    jobs: List[Job] = []
    clashes: List[Tuple[str, str]] = []
    taken: Dict[str, Path] = {}
    for path, root in inputs:
        name = output_name(path, root)
        other = taken.setdefault(name.lower(), path)
        if other is path:
            jobs.append((path, name))
        else:
            why = f"its output name {name!r} is also that of {other}; rename one, or run them with separate output folders"
            clashes.append((str(path), why))
    return jobs, clashes


def gather_inputs(
    specs: Sequence[str], recursive: bool, output: Path, warn: Callable[[str], None]
) -> Tuple[List[Job], InputSet]:
    """`collect_inputs` then `name_inputs`: the jobs, and the InputSet whose problems include the
    name clashes; each warning goes to `warn`. InputError when nothing is left."""
    found = collect_inputs(specs, recursive, output)
    for text in found.warnings:
        warn(text)
    if not found.inputs and not found.problems:
        raise InputError("no inputs given" if not found.warnings else "no inputs left (see the warnings)")
    jobs, clashes = name_inputs(found.inputs)
    found.problems.extend(clashes)
    return jobs, found


def load_input(path: Path, data: Optional[bytes] = None) -> Any:
    """What the runtime gets for a file: the path (or `data`, its contents when already read), or
    the array inside a .npy."""
    if path.suffix.lower() != ".npy":
        return path if data is None else data
    import io

    import numpy as np

    try:
        return np.load(path if data is None else io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npy image array ({exc})") from None


def save_choices() -> str:
    """The --save kinds of each medium, as the messages list them."""
    maps = [k for k in IMAGE_KINDS if ":" not in k]
    formats = ", ".join(f"{kind}:{fmt}" for kind, names in FORMATS.items() for fmt in names)
    return f"images take {', '.join(maps)} (one file of a map: {formats}); clips take {', '.join(VIDEO_KINDS)}"


def check_save(values: Optional[List[str]]) -> List[str]:
    """The --save kinds as given (empty = the default), refusing unknown ones; a map's file given
    beside the map itself (depth,depth:png) is dropped."""
    from .options import split_list

    kinds = list(dict.fromkeys(split_list(values)))
    unknown = [k for k in kinds if k not in IMAGE_KINDS and k not in VIDEO_ONLY_KINDS]
    if unknown:
        raise InputError(f"--save: unknown kind(s) {', '.join(unknown)}; {save_choices()}")
    return [k for k in kinds if k.partition(":")[0] == k or k.partition(":")[0] not in kinds]


def check_save_media(save: Sequence[str], images: bool, clips: bool) -> Optional[str]:
    """InputError when a --save kind applies to none of a run's media (`images`, `clips`); else a
    warning naming the kinds that apply to one medium of a mixed run, or None."""
    image_only = [k for k in save if k not in VIDEO_KINDS]
    clip_only = [k for k in save if k not in IMAGE_KINDS]
    useless = (image_only if not images else []) + (clip_only if not clips else [])
    if useless:
        medium = "the inputs are images" if images else "the inputs are video clips"
        hints = [f"an image's {k} is {IMAGE_EQUIVALENT[k]}" for k in useless if k in IMAGE_EQUIVALENT and images]
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise InputError(f"--save {', '.join(useless)} writes nothing here: {medium}{hint}; {save_choices()}")
    parts = [f"{', '.join(k)} for {m} only" for k, m in ((image_only, "images"), (clip_only, "clips")) if k]
    return f"--save: this run writes {' and '.join(parts)} ({save_choices()})" if parts and images and clips else None


def parse_save(values: Optional[Sequence[str]], tasks: Sequence[str]) -> List[str]:
    """The --save kinds, checked against the model's tasks (default: its maps + vis)."""
    kinds = check_save(list(values or [])) or [t for t in ("depth", "normal", "foreground") if t in tasks] + ["vis"]
    IMAGE_KINDS.check([k for k in kinds if k in IMAGE_KINDS], tasks)
    return kinds


def probe_output_folder(outdir: Path) -> None:
    """InputError unless OUTDIR is (or can be made as) a folder we can write in: a temporary file is
    made and removed in it or its nearest existing parent; OUTDIR itself is not created."""
    existing = Path(os.path.abspath(outdir))
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot use {outdir} as the output folder: {existing} exists and is not a folder")
    try:
        make_temp_path(existing / "write-probe", sets.TEMP_SUFFIX).unlink()
    except OSError as exc:
        where = "" if existing == Path(os.path.abspath(outdir)) else f" (its nearest existing parent {existing})"
        raise InputError(f"cannot write in the output folder {outdir}{where}: {exc.strerror or exc}") from None


def output_folder_lock(outdir: Path) -> OwnerLock:
    """The (not yet taken) lock of OUTDIR: one run owns an output folder at a time."""
    return OwnerLock(outdir / OUTPUT_LOCK, f"the output folder {outdir}")


def claim_output_folder(lock: OwnerLock, outdir: Path, jobs: Sequence[Job]) -> List[Path]:
    """Take `lock` (InUse naming its holder), then delete the temporaries killed runs left in the
    folders of `jobs`' sets (no other writer is left); returns what was removed."""
    lock.acquire()
    folders = {os.path.dirname(os.path.join(outdir, name)) for _, name in jobs} | {str(outdir)}
    return remove_all_temporaries(Path(f) for f in sorted(folders))


def make_output_folder(outdir: Path) -> None:
    """Create OUTDIR (once the model is accepted); InputError naming it when that fails."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {outdir}: {exc}") from None


def model_record(runtime: Any) -> Dict[str, Any]:
    """What of the model and runtime shapes the files, for the completion record."""
    record = {
        "model": runtime.path.name if isinstance(runtime.path, Path) else str(runtime.path),  # a file, or a URL
        "model_sha256": runtime.contract.sha256,
        "resolution": runtime.resolution,
        "pipeline": runtime.pipeline,
    }
    # each only when it is not the default: other runs' records stay as they were
    if getattr(runtime, "refine", None) is not None:
        record["refine"] = runtime.refine.as_record()
    if runtime.channel_order != "rgb":  # arrays' channels read another way
        record["channel_order"] = runtime.channel_order
    precision = runtime.options.backend_options.get("precision")
    if precision not in (None, "fp32"):  # torch's half precisions: maps about 1e-3 of their range apart
        record["precision"] = precision
    return record


@dataclass
class Tally:
    """A run's counts and failures (input, reason) for the summary; `total` is set once the inputs
    are known; `redone`: the inputs `plan` redoes because they or their files changed (each also
    passed to `warn` when given)."""

    written: int = 0
    skipped: int = 0
    failures: List[Tuple[str, str]] = field(default_factory=list)
    dangling: int = 0
    duplicates: int = 0
    total: int = 0
    redone: List[Tuple[str, str]] = field(default_factory=list)
    warn: Optional[Callable[[str], None]] = None

    def redo(self, path: Any, reason: str) -> None:
        """Record that `path` is redone although its set has a record, and why."""
        self.redone.append((str(path), reason))
        if self.warn is not None:
            self.warn(f"{path}: redone: {reason}")

    def fail(self, path: Any, error: BaseException) -> None:
        """Record that `path` failed with `error`."""
        self.failures.append((str(path), describe(error, str(path))))

    def report(self, outdir: Path) -> int:
        """Print the summary (stdout; failures on stderr); returns the exit status."""
        line = f"{self.written} of {self.written + self.skipped + len(self.failures)} input(s) written to {outdir}"
        if self.redone:
            line += f" ({len(self.redone)} redone: changed since written)"
        if self.skipped:
            line += f", {self.skipped} skipped (already complete)"
        counts = ((self.dangling, "dangling link(s) skipped"), (self.duplicates, "duplicate name(s) of one file"))
        notes = [f"{n} {what}" for n, what in counts if n]
        if notes:
            line += f"; warnings: {', '.join(notes)}"
        print(line)
        if not self.failures:
            return 0
        print(f"{len(self.failures)} input(s) failed:", file=sys.stderr)
        for name, reason in self.failures:
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1

    def out_of_space(self, outdir: Path, reason: str, per_input: int, measured: bool) -> str:
        """What a run stopped by a full disk says; `per_input`: the bytes of a set this run wrote
        (`measured`), else what the failing write had put down."""
        size = f"{per_input / 1e6:.1f} MB" if per_input >= 100_000 else f"{per_input / 1e3:.0f} kB"
        need = f"about {size} per input" if measured else f"more than {size} per input"
        return (
            f"stopped: the output folder {outdir} is full: {reason}. Its files need {need}; free that much "
            f"for each input left (or choose another output folder), then run the same command again "
            f"to resume: {self.written + self.skipped} of {self.total} input(s) are complete, nothing partial was left"
        )

    def interrupted(self, outdir: Path) -> str:
        """What an interrupted run says: how many inputs are complete, and that a rerun resumes."""
        return (
            f"{self.written + self.skipped} of {self.total} input(s) complete in {outdir} ({self.written} written "
            f"by this run); run the same command again to resume: complete inputs are skipped, the rest redone"
        )


def describe(exc: Union[BaseException, str], name: str) -> str:
    """An error (or its message) for the summary, which names the input: without a leading "NAME: "."""
    text = str(exc) if isinstance(exc, (DavidError, str)) else f"{type(exc).__name__}: {exc}"
    return text[len(name) + 2 :] if text.startswith(name + ": ") else text


def plan(
    jobs: Sequence[Job],
    outdir: Path,
    kinds: Sequence[str],
    options: WriteOptions,
    overwrite: bool,
    tally: Tally,
    table: KindTable[Any] = IMAGE_KINDS,
) -> List[Job]:
    """The jobs to run against what OUTDIR holds (docs/jobs.md): complete sets skipped unless
    `overwrite`, changed ones redone, mismatching ones failed (in `tally`); the stale temporaries of
    the rest removed. `table`: the kinds of the sets' medium."""
    todo = []
    for path, name in jobs:
        try:
            output_set = table.set(outdir, name, kinds)
            # an input on other storage (a Ray Dataset read from S3) has no local file to compare
            state = output_set.status(options, source=path if os.path.isfile(path) else None)
            if not overwrite and state.state is SetState.DONE:
                tally.skipped += 1
                continue
            if not overwrite and state.state is SetState.CHANGED:
                raise InputError(
                    f"its outputs in {outdir} do not match its completion record: {state.reason}; "
                    f"pass --overwrite to redo it (or choose another output folder)"
                )
            if not overwrite and state.state is SetState.STALE:
                tally.redo(path, state.reason)
            blocked = [t for t in output_set.files if t.is_dir()]
            if blocked:
                raise InputError(f"cannot write {blocked[0]}: a folder has that name")
            output_set.remove_temporaries()
            todo.append((path, name))
        except DavidError as exc:
            tally.fail(path, exc)
    return todo
