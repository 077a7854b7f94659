"""Arguments and helpers shared by the commands that run a model (predict, bench, apps)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterable, List, Optional, Tuple, Union

from ..errors import InputError
from ..zoo import resolve_model

MODEL_HELP = ("a model file (.onnx with or without our manifest, .engine), a folder holding one, "
              "a released model's name (depth-base, multitask-large, ...; downloaded on first use), or a "
              "served model's URL (grpc://HOST:PORT/NAME, http://...; see david-infer serve)")


def add_runtime_arguments(p: argparse.ArgumentParser, resolution: bool = True) -> None:
    """-m/--model, --backend, --device, --resolution, --channel-order."""
    p.add_argument("-m", "--model", required=True, help=MODEL_HELP)
    p.add_argument("--backend", default="auto",
                   help="auto (by file type or URL), onnxruntime, torch, tensorrt or triton")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N; a GPU that cannot be used "
                   "is an error, never a silent CPU fallback")
    if resolution:
        p.add_argument("--resolution", type=resolution_arg, default=512, metavar="N",
                       help="side of the square the model runs at, a multiple of 16 (default 512), or 'image' "
                            "for the image's own size; released files run at 512 only")
    p.add_argument("--channel-order", default="rgb", choices=("rgb", "bgr"),
                   help="channel order of .npy array inputs (image files are always read as RGB)")


def resolution_arg(text: str) -> Optional[int]:
    """argparse type: a positive multiple of 16 (the models' stride), or 'image' / 'native' for None
    (the image's own size); anything else is refused in command-line terms, with the nearest sizes."""
    if text.lower() in ("image", "native", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a multiple of 16 (e.g. 512) or 'image', got {text!r}") from None
    if value < 16 or value % 16:
        lower, upper = max(16, value // 16 * 16), max(16, value // 16 * 16 + 16)
        near = f"{lower}" if lower == upper or value < 16 else f"{lower} or {upper}"
        raise argparse.ArgumentTypeError(f"{value} is not a positive multiple of 16 (the model's stride): "
                                         f"use {near}, or 'image' for the image's own size")
    return value


def model_argument(model: str) -> Union[Path, str]:
    """-m MODEL -> what DavidRuntime opens: a served model's URL as it is (the triton backend),
    else a file, folder or released model's name resolved to a path."""
    from ..backends import url_scheme

    return model if url_scheme(model) else resolve_model(model)


def open_runtime(args: argparse.Namespace, batch_size: int = 1, **kwargs: Any) -> Any:
    """A DavidRuntime from the parsed runtime arguments."""
    from ..runtime import DavidRuntime

    path = model_argument(args.model)
    return DavidRuntime(path, backend=args.backend, device=args.device,
                        resolution=getattr(args, "resolution", 512), channel_order=args.channel_order,
                        batch_size=batch_size, **kwargs)


def require_tasks(runtime: Any, needed: Iterable[str], what: str) -> None:
    """InputError when the model lacks a task that `what` needs."""
    missing = [t for t in needed if t not in runtime.tasks]
    if missing:
        raise InputError(f"{what} needs a model that predicts {' and '.join(missing)}; {runtime.path} predicts "
                         f"{', '.join(runtime.tasks)} only (try a multi-task model, e.g. multitask-large)")


def parse_floats(text: str, count: int, name: str) -> Tuple[float, ...]:
    """'1,2,3' -> (1.0, 2.0, 3.0), exactly `count` finite numbers; InputError otherwise."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count or not all(v == v and abs(v) != float("inf") for v in values):
        raise InputError(f"{name}: expected {count} comma-separated numbers, got {text!r}")
    return values


def split_list(values: Optional[List[str]], kind: type = str) -> List[Any]:
    """['a,b', 'c'] -> ['a', 'b', 'c'] converted with `kind`; lists may be given either way."""
    out: List[Any] = []
    for value in values or []:
        for item in str(value).split(","):
            item = item.strip()
            if not item:
                continue
            try:
                out.append(kind(item))
            except ValueError:
                raise InputError(f"expected {kind.__name__} values, got {item!r}") from None
    return out


def add_app_arguments(p: argparse.ArgumentParser, suffix: str) -> None:
    """IMAGE, the runtime arguments, -o OUT and --overwrite for an app subcommand."""
    p.add_argument("image", metavar="IMAGE", help="the photo")
    add_runtime_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar=f"OUT{suffix}", help=f"the {suffix} file to write")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(output_suffix=suffix)


def image_format(out: Path) -> str:
    """Pillow's format name for writing `out`, by its suffix; InputError for a suffix it cannot write."""
    from PIL import Image

    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise InputError(f"{out}: unknown image type {out.suffix or '(no suffix)'!r}; use .png or .jpg")
    return fmt


def check_app_output(args: argparse.Namespace) -> Path:
    """OUT, checked before the model runs: a file name (of an image type we write, for image
    outputs) in an existing folder we can write in (a probe file is made and removed), free
    unless --overwrite. Errors name OUT as the user wrote it."""
    from ..manifest import make_temp_path
    from ..outputs import check_free

    out = Path(args.output)
    if out.is_dir():
        raise InputError(f"{out} is a folder; -o names the file to write (e.g. {out / ('out' + args.output_suffix)})")
    if args.output_suffix != ".ply":
        image_format(out)
    folder = out.parent
    if not folder.is_dir():
        raise InputError(f"cannot write {out}: its folder {folder} does not exist (create it first)")
    try:
        make_temp_path(out).unlink()
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror or exc} (in the folder {folder})") from None
    check_free([out], args.overwrite)
    return out


def predict_for_app(args: argparse.Namespace, needed: Iterable[str], what: str) -> Any:
    """Check OUT (`check_app_output`), run the model on IMAGE and return the Prediction (InputError
    if the model lacks a task `what` needs)."""
    check_app_output(args)  # before spending time on the model
    with open_runtime(args) as runtime:
        require_tasks(runtime, needed, what)
        return runtime.predict(args.image)


def save_app_image(args: argparse.Namespace, image: Any) -> int:
    """Write an app's image result to args.output (PNG, JPEG, ... by its suffix), atomically."""
    from PIL import Image

    from ..outputs import commit

    out = Path(args.output)
    fmt = image_format(out)
    commit(out, lambda tmp: Image.fromarray(image).save(tmp, format=fmt), args.overwrite)
    print(f"wrote {out}")
    return 0
