"""Arguments and helpers shared by the commands that run a model (predict, bench, apps), the torch
backend's flags among them (--precision, --channels-last, --compile, --cuda-graphs, --no-pinned)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Iterable, Tuple

from ..backends.base import parse_device
from ..config import DEFAULT_RESOLUTION
from ..errors import InputError
from ..files import check_free, commit, make_temp_path
from ..memory_estimate import MemoryGuard
from ..options import AUTO_RESOLUTION, RuntimeArguments, RuntimeOptions, resolved_model
from ..zoo import MODELS

#: the runtime flags of the app commands (relight, background, pointcloud): one image, no batching
APP_RUNTIME = RuntimeArguments(batch_size=False, threads=False)


def open_runtime(options: RuntimeOptions) -> Any:
    """A DavidRuntime for `options`, its model resolved as -m takes it (a released model's name,
    downloaded once; a URL as it is); --threads also sizes the backend's own threads."""
    from ..runtime import DavidRuntime, with_threads

    check_memory_early(options)
    options = options.replace(model=resolved_model(options.model))
    return DavidRuntime.from_options(with_threads(options, options.threads) if options.threads else options)


def check_memory_early(options: RuntimeOptions) -> None:
    """OutOfMemoryError when a fixed resolution and batch cannot fit, before a released model is
    downloaded or any model loaded (`david_infer.memory_estimate`; the runtime checks again)."""
    model, resolution = options.model, options.resolution
    if parse_device(options.device).kind != "cpu" or not isinstance(model, (str, os.PathLike)):
        return
    if isinstance(model, str) and model in MODELS and not os.path.exists(model):
        released = MODELS[model]  # fixed at DEFAULT_RESOLUTION (another is refused on open); its card's size
        if resolution in (AUTO_RESOLUTION, DEFAULT_RESOLUTION):
            guard = MemoryGuard(int(released.card_mb * 1e6), released.variant, options.batch_size, model)
            guard.check_open(DEFAULT_RESOLUTION)
    elif os.path.isfile(model) and isinstance(resolution, int):  # 'auto' is the model's own: read when it opens
        MemoryGuard(os.path.getsize(model), None, options.batch_size, Path(model).name).check_open(resolution)


def parse_floats(text: str, count: int, name: str) -> Tuple[float, ...]:
    """'1,2,3' -> (1.0, 2.0, 3.0), exactly `count` finite numbers; InputError otherwise."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count or not all(v == v and abs(v) != float("inf") for v in values):
        raise InputError(f"{name}: expected {count} comma-separated numbers, got {text!r}")
    return values


def add_app_arguments(p: argparse.ArgumentParser, suffix: str) -> None:
    """IMAGE, the runtime arguments, -o OUT and --overwrite for an app subcommand."""
    p.add_argument("image", metavar="IMAGE", help="the photo")
    APP_RUNTIME.add_to(p)
    p.add_argument("-o", "--output", required=True, metavar=f"OUT{suffix}", help=f"the {suffix} file to write")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(output_suffix=suffix)


# The formats that store an app's full-size RGB picture as it is (JPEG and WebP: lossy). Pillow
# writes others resized (.ico, .icns), as a palette (.gif), or only after the model ran (.blp, .xbm,
# .h5, ...: no writer, or none for RGB).
APP_IMAGE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".ppm": "PPM",
    ".tga": "TGA",
}


def image_format(out: Path) -> str:
    """Pillow's format name for writing `out`, by its suffix; InputError for a suffix not in
    APP_IMAGE_FORMATS."""
    fmt = APP_IMAGE_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise InputError(
            f"{out}: unsupported image type {out.suffix or '(no suffix)'!r}; use one of {', '.join(APP_IMAGE_FORMATS)}"
        )
    return fmt


def check_app_output(args: argparse.Namespace) -> Path:
    """OUT, checked before the model runs: a file name (of an image type we write, for images) in an
    existing folder we can write in (a probe file is made and removed), free unless --overwrite."""
    out = Path(args.output)
    if out.is_dir():
        raise InputError(f"{out} is a folder; -o names the file to write (e.g. {out / ('out' + args.output_suffix)})")
    if args.output_suffix != ".ply":
        image_format(out)
    elif out.suffix.lower() != ".ply":  # a PLY under another type's name would open as that type, or not at all
        raise InputError(f"{out}: a point cloud is written as PLY; name the file .ply (e.g. {out.with_suffix('.ply')})")
    check_output_file(out, "-o", "out" + args.output_suffix)
    check_free([out], args.overwrite)
    return out


def check_output_file(out: Path, flag: str, example: str) -> None:
    """InputError unless `out` (given as `flag`) names a file in an existing folder we can write in
    (a probe file is made and removed): checked before a long run, not after it."""
    if out.is_dir():
        raise InputError(f"{out} is a folder; {flag} names the file to write (e.g. {out / example})")
    folder = out.parent
    if not folder.is_dir():
        raise InputError(f"cannot write {out}: its folder {folder} does not exist (create it first)")
    try:
        make_temp_path(out).unlink()
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror or exc} (in the folder {folder})") from None


def predict_for_app(args: argparse.Namespace, needed: Iterable[str], what: str) -> Any:
    """Check OUT, run the model on IMAGE and return the Prediction (InputError if the model lacks a
    task `what` needs)."""
    check_app_output(args)  # before spending time on the model
    with open_runtime(APP_RUNTIME.options(args)) as runtime:
        missing = [t for t in needed if t not in runtime.tasks]
        if missing:
            raise InputError(
                f"{what} needs a model that predicts {' and '.join(missing)}; {runtime.path} predicts "
                f"{', '.join(runtime.tasks)} only (try a multi-task model, e.g. multitask-large)"
            )
        return runtime.predict(args.image)


def save_app_image(args: argparse.Namespace, image: Any) -> int:
    """Write an app's image result to args.output (PNG, JPEG, ... by its suffix), atomically."""
    from PIL import Image

    out = Path(args.output)
    fmt = image_format(out)
    commit(out, lambda tmp: Image.fromarray(image).save(tmp, format=fmt), args.overwrite)
    print(f"wrote {out}")
    return 0


_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def add_torch_arguments(p: argparse.ArgumentParser) -> None:
    """The TorchOptions flags, in their own argument group (they apply to --backend torch only)."""
    g = p.add_argument_group("torch backend (--backend torch)")
    g.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        default=None,
        help="compute precision (autocast; LayerNorm and softmax stay FP32); default fp32",
    )
    g.add_argument("--channels-last", action="store_true", default=None, help="NHWC memory format for convolutions")
    g.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        choices=_COMPILE_MODES,
        metavar="MODE",
        help=f"torch.compile, once per input shape ({', '.join(_COMPILE_MODES)}; default mode: default)",
    )
    g.add_argument(
        "--cuda-graphs",
        action="store_true",
        default=None,
        help="capture and replay one CUDA graph per input shape (CUDA only)",
    )
    g.add_argument(
        "--no-pinned",
        dest="pinned",
        action="store_false",
        default=None,
        help="plain (pageable) host copies instead of pinned buffers on CUDA",
    )


def with_torch_options(options: Any, args: argparse.Namespace) -> Any:
    """`options` (a RuntimeOptions) with the torch flags given as backend options; an InputError when
    they are given for another backend."""
    names = ("precision", "channels_last", "compile", "cuda_graphs", "pinned")
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if given and options.backend != "torch":
        flags = ", ".join("--" + ("no-pinned" if k == "pinned" else k.replace("_", "-")) for k in given)
        raise InputError(f"{flags} set options of the torch backend; add --backend torch")
    return options.replace(backend_options={**options.backend_options, **given}) if given else options
