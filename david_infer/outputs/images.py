"""The output kinds of an image (`IMAGE_KINDS`, one row each: docs/outputs.md) and `write_outputs`,
which writes one image's set; full-size maps are written band by band (no full-size float
temporaries), and `--save depth:png` writes one file of a map (a 4000x3000 photo: 24 MB, not 72)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .._arrays import fill_by_rows, finite_range
from ..apps import LOWER_THRESHOLD_KEEPS, cutout, stream_point_cloud
from ..errors import EmptyMaskWarning
from ..files import NoSpace, no_space_reason, write_npy, write_png
from ..tasks import TASK_ORDER, TASKS
from ..visualize import normals_to_rgb, panel
from .sets import KindTable, Source, WriteOptions

#: write(temporary path, prediction, options): fills one file of a set
WriteFile = Callable[[Path, Any, WriteOptions], None]


@dataclass(frozen=True)
class ImageKind:
    """One `--save` kind of an image: its files as (suffix, write) pairs, and the task it needs."""

    name: str
    needs: Optional[str]
    files: Tuple[Tuple[str, WriteFile], ...]

    @property
    def suffixes(self) -> Tuple[str, ...]:
        return tuple(suffix for suffix, _ in self.files)


def depth_to_uint16(depth: np.ndarray) -> np.ndarray:
    """Depth min-max normalised over its finite pixels to 0..65535 (non-finite -> 0), band by band."""
    d = np.asarray(depth)
    span = finite_range(d)
    if span is None or span[1] <= span[0]:
        return np.zeros(d.shape, np.uint16)
    lo, scale = span[0], 65535.0 / (span[1] - span[0])

    def band(rows: slice) -> np.ndarray:
        t = (d[rows].astype(np.float64) - lo) * scale  # float64 per band: exact at 16 bits
        return np.rint(np.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)).astype(np.uint16)

    return fill_by_rows(np.empty(d.shape, np.uint16), band)


def _alpha(foreground: np.ndarray) -> np.ndarray:
    """The mask as 8-bit alpha, band by band."""
    out = np.empty(foreground.shape, np.uint8)
    return fill_by_rows(out, lambda rows: np.rint(np.clip(foreground[rows], 0.0, 1.0) * np.float32(255.0)))


def _point_cloud(path: Path, pred: Any, opts: WriteOptions) -> None:
    """The point cloud, cut by the mask (one without points, and an EmptyMaskWarning, for an empty mask)."""
    fov, depth_range, invert = opts.fov, opts.depth_range, opts.depth_inverse
    stream_point_cloud(path, pred.image, pred.depth, pred.foreground, fov, depth_range, invert=invert)


def _raw(task: str) -> WriteFile:
    """The task's map as float32 .npy."""
    return lambda path, pred, opts: write_npy(path, getattr(pred, task).astype(np.float32, copy=False))


def _png(task: str) -> WriteFile:
    """The task's map as the PNG its picture says: relative (16-bit, min-max), vectors
    ((v + 1) / 2 * 255, RGB), matte (8-bit)."""
    picture = TASKS[task].picture
    pictures: Dict[str, Callable[[np.ndarray], np.ndarray]] = {"relative": depth_to_uint16, "vectors": normals_to_rgb}
    to_png = pictures.get(picture, _alpha)
    return lambda path, pred, opts: write_png(path, to_png(getattr(pred, task)))


def _cutout_png(task: str) -> WriteFile:
    return lambda path, pred, opts: write_png(path, cutout(pred.image, pred.foreground))


_WRITERS: Dict[str, Callable[[str], WriteFile]] = {"png": _png, "npy": _raw, "cutout": _cutout_png}
#: one kind per task, its files from the task table, then the pictures of a whole prediction
_MAPS = [
    ImageKind(task, task, tuple((suffix, _WRITERS[fmt](task)) for fmt, suffix in TASKS[task].files))
    for task in TASK_ORDER
] + [
    ImageKind(
        "vis",
        None,
        ((".vis.png", lambda path, pred, opts: write_png(path, panel(pred, inverse_depth=opts.depth_inverse))),),
    ),
    ImageKind("ply", "depth", ((".ply", _point_cloud),)),
]
#: the format name of each file of a two-file kind, in its file order: `--save KIND:FORMAT`
FORMATS: Dict[str, Tuple[str, ...]] = {task: tuple(fmt for fmt, _ in TASKS[task].files) for task in TASK_ORDER}

IMAGE_KINDS: KindTable[ImageKind] = KindTable(
    "images",
    _MAPS
    + [
        ImageKind(f"{kind.name}:{fmt}", kind.needs, (file,))
        for kind in _MAPS
        for fmt, file in zip(FORMATS.get(kind.name, ()), kind.files)
    ],
)


def write_outputs(
    pred: Any,
    outdir: Union[str, Path],
    name: str,
    kinds: Sequence[str],
    options: Optional[WriteOptions] = None,
    source: Union[Source, str, "os.PathLike[str]", None] = None,
) -> List[Path]:
    """Write `name`'s set of `kinds` for the image prediction `pred` all-or-none, replacing an older
    or unfinished set, the completion record last; returns the files written. `source`, the input
    file, is recorded (a `Source` stamped before the input was read, or its path). NoSpace when the
    folder takes no more bytes (nothing of the new set is left). An empty mask gives one
    EmptyMaskWarning for the set, naming the input and what each file it shapes is."""
    opts = options or WriteOptions()
    out = IMAGE_KINDS.set(outdir, name, kinds)
    out.make_folder()
    staged: List[Tuple[Path, Path]] = []  # (temporary, final)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EmptyMaskWarning)
            for kind in out.kinds:
                for (_, write), final in zip(IMAGE_KINDS[kind].files, out.by_kind[kind]):
                    tmp = out.temporary(final)
                    staged.append((tmp, final))
                    write(tmp, pred, opts)
        out.commit(staged, opts, source=source, results=prediction_results(pred))
    except OSError as exc:
        reason = no_space_reason(exc)
        if reason is None:
            raise
        written = sum(tmp.stat().st_size for tmp, _ in staged if tmp.exists())
        folder = out.record.parent
        raise NoSpace(f"cannot write {name}'s files in {folder}: {reason}", folder, reason, written) from None
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    _warn_once(caught, name if source is None else source.path if isinstance(source, Source) else str(source))
    return out.files


def prediction_results(pred: Any) -> Optional[Dict[str, Any]]:
    """What a completion record shows of a prediction beyond its files: a refined prediction's
    regions; None when there is nothing to show."""
    regions = getattr(pred, "regions", None)
    return None if regions is None else {"regions": [region.as_record() for region in regions]}


def _warn_once(caught: List[warnings.WarningMessage], input_name: str) -> None:
    """Issue the warnings `caught` while writing one set: every EmptyMaskWarning as one, naming
    `input_name` and each outcome; the others as they were."""
    empty = [w.message for w in caught if isinstance(w.message, EmptyMaskWarning)]
    for record in caught:
        if not isinstance(record.message, EmptyMaskWarning):
            warnings.warn_explicit(record.message, record.category, record.filename, record.lineno)
    if not empty:
        return
    outcome = "; ".join(w.outcome for w in empty)
    text = str(empty[0]) if len(empty) == 1 else f"the foreground mask keeps no pixel (no person found), so {outcome}"
    if LOWER_THRESHOLD_KEEPS in text:  # predict cuts the cloud at 0.5; the pointcloud command takes another
        text += f" (david-infer pointcloud {input_name} --mask-threshold T writes that cloud)"
    warnings.warn(EmptyMaskWarning(f"{input_name}: {text}", outcome), stacklevel=3)
