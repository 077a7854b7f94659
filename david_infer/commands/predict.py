"""Run a model on image files, folders and globs, and write the results into OUTDIR.

Per input (base name B, see below), with --save choosing among:
  depth       B.depth.png (16-bit, min-max normalised per image, white = near) + B.depth.npy (float32)
  normal      B.normal.png (RGB, (n + 1) / 2 * 255, x -> red, y -> green, z -> blue) + B.normal.npy
  foreground  B.foreground.png (8-bit alpha) + B.cutout.png (RGBA: the photo with the mask as alpha)
  vis         B.vis.png (the photo and every map side by side, labelled)
  ply         B.ply (binary point cloud from depth, coloured, cut by the mask when there is one)
Default: every map the model predicts, plus vis.

Output names: B is the input's file stem with characters other than letters, digits, - _ . replaced
by _ and leading dots removed; folders of the input never appear in it, so nothing is written
outside OUTDIR. Inputs sharing a stem (a/x.jpg, b/x.png) each get -HASH appended (8 hex digits of
the SHA-256 of the input's absolute path). Existing files are kept unless --overwrite. Files are
written under a temporary name and renamed into place.

Decoding runs ahead in a background thread and postprocessing in worker threads
(`DavidRuntime.imap`); this command writes the files as results come, in input order. Inputs that
fail are listed at the end and the exit status is 1; the others are written.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import DavidError, InputError
from ..video import VIDEO_SUFFIXES, is_video_path
from . import predict_video
from ._common import add_runtime_arguments, open_runtime, split_list

SAVE_KINDS = ("depth", "normal", "foreground", "vis", "ply")
#: kind -> the file suffixes it writes after the base name
SAVE_FILES = {
    "depth": (".depth.png", ".depth.npy"),
    "normal": (".normal.png", ".normal.npy"),
    "foreground": (".foreground.png", ".cutout.png"),
    "vis": (".vis.png",),
    "ply": (".ply",),
}
#: kind -> the model task it needs
SAVE_NEEDS = {"depth": "depth", "normal": "normal", "foreground": "foreground", "ply": "depth"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".npy"}
INPUT_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image or video files, folders of them, or globs ('shots/*.jpg')")
    add_runtime_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results (created if needed)")
    p.add_argument("--save", action="append", metavar="KINDS",
                   help=f"what to write, comma-separated: {', '.join(SAVE_KINDS)}; for videos also "
                        f"{', '.join(predict_video.VIDEO_ONLY_KINDS)} (default: the model's maps + vis)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per model call (default 1)")
    p.add_argument("--recursive", action="store_true", help="also take images from subfolders of folder inputs")
    p.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--fov", type=float, default=60.0, help="ply: horizontal field of view in degrees (default 60)")
    p.add_argument("--near", type=float, default=1.0, help="ply: distance of the nearest point (default 1)")
    p.add_argument("--far", type=float, default=2.0, help="ply: distance of the farthest point (default 2)")
    predict_video.add_arguments(p)


# ---------------------------------------------------------------------------------- inputs


def collect_inputs(specs: Sequence[str], recursive: bool = False,
                   exclude: Optional[Path] = None) -> Tuple[List[Path], List[Tuple[str, str]]]:
    """Expand files, folders and globs into image paths (each folder's images sorted by name;
    duplicates dropped) and the specs that named nothing, with the reason."""
    found: List[Path] = []
    problems: List[Tuple[str, str]] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            images = _folder_images(path, recursive, exclude)
            if not images:
                problems.append((spec, f"folder holds no images or videos ({', '.join(sorted(INPUT_SUFFIXES))})"))
            found.extend(images)
        elif path.exists():
            found.append(path)
        elif glob.has_magic(spec):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=True) if os.path.isfile(m))
            if not matches:
                problems.append((spec, "the pattern matched no file"))
            found.extend(matches)
        else:
            problems.append((spec, "no such file or folder"))
    unique: Dict[str, Path] = {}
    for path in found:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values()), problems


def _folder_images(folder: Path, recursive: bool, exclude: Optional[Path]) -> List[Path]:
    entries = folder.rglob("*") if recursive else folder.iterdir()
    skip = os.path.realpath(exclude) + os.sep if exclude is not None else None
    images = []
    for entry in entries:
        if entry.name.startswith(".") or entry.suffix.lower() not in INPUT_SUFFIXES or not entry.is_file():
            continue
        if skip and os.path.realpath(entry).startswith(skip):
            continue  # our own outputs when OUTDIR lies inside an input folder
        images.append(entry)
    return sorted(images, key=lambda p: str(p))


def load_input(path: Path) -> Any:
    """What the runtime gets for a file: the path itself, or the array inside a .npy."""
    if path.suffix.lower() != ".npy":
        return path
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npy image array ({exc})") from None


# ---------------------------------------------------------------------------------- outputs


def parse_save(values: Optional[List[str]], tasks: Sequence[str], video_kinds: Sequence[str] = ()) -> List[str]:
    """The --save kinds, checked against the model's tasks (default: its maps + vis); `video_kinds`
    are accepted too (checked by the video part)."""
    kinds = split_list(values) or [t for t in ("depth", "normal", "foreground") if t in tasks] + ["vis"]
    unknown = [k for k in kinds if k not in SAVE_KINDS and k not in video_kinds]
    if unknown:
        raise InputError(f"--save: unknown kind(s) {', '.join(unknown)}; choose from "
                         f"{', '.join([*SAVE_KINDS, *video_kinds])}")
    for kind in (k for k in kinds if k in SAVE_KINDS):
        if kind in SAVE_NEEDS and SAVE_NEEDS[kind] not in tasks:
            raise InputError(f"--save {kind} needs a model that predicts {SAVE_NEEDS[kind]}; this one predicts "
                             f"{', '.join(tasks)} only")
    return list(dict.fromkeys(kinds))


def planned_files(outdir: Path, base: str, kinds: Sequence[str]) -> List[Path]:
    """Every file `write_prediction` writes for one input."""
    from ..outputs import inside

    return [inside(outdir, base + suffix) for kind in kinds for suffix in SAVE_FILES[kind]]


@dataclass
class WriteOptions:
    kinds: Sequence[str]
    overwrite: bool = False
    fov: float = 60.0
    depth_range: Tuple[float, float] = (1.0, 2.0)
    depth_inverse: bool = True  # the runtime's invert_depth: larger = nearer


def write_prediction(pred: Any, outdir: Path, base: str, opts: WriteOptions) -> List[Path]:
    """Write the requested files of one prediction; returns their paths."""
    import numpy as np

    from .. import apps, visualize
    from ..outputs import commit, depth_to_uint16, inside, save_npy, save_png

    def out(suffix: str) -> Path:
        return inside(outdir, base + suffix)

    ow = opts.overwrite
    written: List[Path] = []
    steps: List[Callable[[], Path]] = []
    if "depth" in opts.kinds:
        steps += [lambda: save_png(out(".depth.png"), depth_to_uint16(pred.depth), ow),
                  lambda: save_npy(out(".depth.npy"), pred.depth.astype(np.float32, copy=False), ow)]
    if "normal" in opts.kinds:
        steps += [lambda: save_png(out(".normal.png"), visualize.normals_to_rgb(pred.normal), ow),
                  lambda: save_npy(out(".normal.npy"), pred.normal.astype(np.float32, copy=False), ow)]
    if "foreground" in opts.kinds:
        alpha = np.rint(np.clip(pred.foreground, 0.0, 1.0) * 255.0).astype(np.uint8)
        steps += [lambda: (save_png(out(".foreground.png"), alpha, ow)),
                  lambda: save_png(out(".cutout.png"), apps.cutout(pred.image, pred.foreground), ow)]
    if "vis" in opts.kinds:
        steps.append(lambda: save_png(out(".vis.png"), visualize.panel(pred, inverse_depth=opts.depth_inverse), ow))
    if "ply" in opts.kinds:
        steps.append(lambda: commit(out(".ply"), lambda tmp: _write_cloud(tmp, pred, opts), ow))
    try:
        for step in steps:
            written.append(step())
    except BaseException:
        for path in written:  # all of an input's files or none of them
            path.unlink(missing_ok=True)
        raise
    return written


def _write_cloud(path: Path, pred: Any, opts: WriteOptions) -> None:
    """The point cloud, cut by the mask; a mask that keeps no pixel (no person) is not applied."""
    from .. import apps

    mask = pred.foreground
    if mask is not None and not (mask >= 0.5).any():
        mask = None
    points, colors = apps.point_cloud(pred.image, pred.depth, mask, fov_deg=opts.fov,
                                      depth_range=opts.depth_range, invert=opts.depth_inverse)
    apps.write_ply(path, points, colors)


# ---------------------------------------------------------------------------------- pipeline


class Progress:
    """tqdm when installed (and wanted), else one plain line per finished input on stderr."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.bar = total, 0, None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="img", desc="predict", file=sys.stderr)
            except ImportError:
                pass

    def update(self, name: str, ok: bool) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            print(f"[{self.done}/{self.total}] {'ok' if ok else 'FAILED'} {name}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _describe(exc: BaseException, name: str) -> str:
    text = str(exc) if isinstance(exc, DavidError) else f"{type(exc).__name__}: {exc}"
    return text[len(name) + 2:] if text.startswith(name + ": ") else text  # the summary names the input


def run_pipeline(
    runtime: Any,
    jobs: Sequence[Tuple[Path, str]],
    outdir: Path,
    opts: WriteOptions,
    batch_size: int = 1,
    progress: bool = True,
) -> Tuple[int, List[Tuple[str, str]]]:
    """Predict and write every (input, base) job; returns (how many succeeded, [(input, reason)]).

    `runtime.imap` decodes ahead, batches and postprocesses; this loop only writes files.
    """
    failures: List[Tuple[str, str]] = []
    succeeded = 0
    bar = Progress(len(jobs), progress)
    outcomes = runtime.imap(jobs, batch_size=batch_size, load=lambda job: load_input(job[0]))
    try:
        for (path, base), outcome in outcomes:
            error: Optional[BaseException] = outcome if isinstance(outcome, Exception) else None
            if error is None:
                try:
                    write_prediction(outcome, outdir, base, opts)
                    succeeded += 1
                except Exception as exc:
                    error = exc
            if error is not None:
                failures.append((str(path), _describe(error, str(path))))
            bar.update(str(path), error is None)
    finally:
        outcomes.close()
        bar.close()
    return succeeded, failures


# ---------------------------------------------------------------------------------- command


def run(args: argparse.Namespace) -> int:
    from ..outputs import check_free, output_bases

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    outdir = Path(args.output)
    paths, problems = collect_inputs(args.inputs, args.recursive, exclude=outdir)
    if not paths and not problems:
        raise InputError("no inputs given")
    failures: List[Tuple[str, str]] = list(problems)
    succeeded = 0
    if paths:
        try:
            outdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the output folder {outdir}: {exc}") from None
        with open_runtime(args, batch_size=args.batch_size) as runtime:
            named = list(zip(paths, output_bases(paths)))
            clips = [(path, base) for path, base in named if is_video_path(path)]
            kinds = parse_save(args.save, runtime.tasks, predict_video.VIDEO_ONLY_KINDS if clips else ())
            if clips:  # video files: their own module (probed before any model call)
                done, failed = predict_video.run_videos(runtime, clips, outdir, args, kinds)
                succeeded += done
                failures.extend(failed)
            kinds = [k for k in kinds if k in SAVE_KINDS]
            opts = WriteOptions(kinds, args.overwrite, args.fov, (args.near, args.far),
                                runtime.post_options.invert_depth)
            jobs: List[Tuple[Path, str]] = []
            for path, base in (job for job in named if not is_video_path(job[0])):
                try:
                    check_free(planned_files(outdir, base, kinds), args.overwrite)
                    jobs.append((path, base))
                except DavidError as exc:
                    failures.append((str(path), str(exc)))
            if jobs:
                done, failed = run_pipeline(runtime, jobs, outdir, opts, args.batch_size, not args.no_progress)
                succeeded += done
                failures.extend(failed)
    return _summary(succeeded, failures, outdir)


def _summary(succeeded: int, failures: List[Tuple[str, str]], outdir: Path) -> int:
    total = succeeded + len(failures)
    print(f"{succeeded} of {total} input(s) written to {outdir}")
    if not failures:
        return 0
    print(f"{len(failures)} input(s) failed:", file=sys.stderr)
    for name, reason in failures:
        print(f"  {name}: {reason}", file=sys.stderr)
    return 1
