"""How a model is run: one frozen `RuntimeOptions` (every runtime default, each value checked once),
and `RuntimeArguments`, the one argparse group that builds it (docs/jobs.md#the-options-objects)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from .config import DEFAULT_RESOLUTION
from .errors import InputError, positive_int
from .inputs import MAX_IMAGE_PIXELS, check_channel_order
from .refine import REFINE_MODES, RefineOptions, as_refine_options
from .stages import STAGE_KINDS, PostOptions

#: the default resolution: a model's own where it has one (a pre/post graph, a fixed-size file),
#: else DEFAULT_RESOLUTION
AUTO_RESOLUTION = "auto"

MODEL_HELP = (
    "a model file (.onnx with or without our manifest, .engine), a folder holding one, "
    "a released model's name (depth-base, multitask-large, ...; downloaded on first use), or a "
    "served model's URL (grpc://HOST:PORT/NAME, http://...; see david-infer serve)"
)


@dataclass(frozen=True)
class RuntimeOptions:
    """Everything `DavidRuntime` needs to open and run a model; its fields are `DavidRuntime`'s
    keywords (docs/runtime.md). `model`: a file, folder or served model's URL (a released model's
    name is resolved by the commands: `resolved_model`); `resolution`: "auto" (the model's own, else
    DEFAULT_RESOLUTION), a side, or None (each image's size); `refine`: None, "people", a
    RefineOptions or a mapping of its fields (held as None or a RefineOptions); `backend_options`:
    the backend's own, checked when it is chosen."""

    model: Any
    backend: str = "auto"
    device: str = "cpu"
    resolution: Union[int, str, None] = AUTO_RESOLUTION
    channel_order: str = "rgb"
    batch_size: int = 1
    threads: Optional[int] = None
    pipeline: str = "auto"
    stages: str = "auto"
    post: PostOptions = field(default_factory=PostOptions)
    verify: bool = True
    max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS
    allow_nonfinite: bool = False
    refine: Optional[RefineOptions] = None
    backend_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_order", check_channel_order(self.channel_order))
        object.__setattr__(self, "refine", as_refine_options(self.refine))
        positive_int("batch_size", self.batch_size)
        positive_int("threads", self.threads, allow_none=True)
        positive_int("max_image_pixels", self.max_image_pixels, allow_none=True)
        if isinstance(self.resolution, str):
            if self.resolution != AUTO_RESOLUTION:
                raise InputError(
                    f"resolution must be a positive integer, None or {AUTO_RESOLUTION!r}, got {self.resolution!r}"
                )
        elif self.resolution is not None:
            positive_int("resolution", self.resolution)  # the stride is the contract's, checked on open
        if self.stages not in STAGE_KINDS:
            raise InputError(f"stages must be one of {', '.join(STAGE_KINDS)}, got {self.stages!r}")
        for name in ("verify", "allow_nonfinite"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.post, PostOptions):
            raise InputError(f"post must be a david_infer.PostOptions, got {type(self.post).__name__}")
        if not isinstance(self.backend_options, Mapping):
            raise InputError(
                f"backend_options must be a mapping of option names to values, got "
                f"{type(self.backend_options).__name__}"
            )
        object.__setattr__(self, "backend_options", dict(self.backend_options))

    def replace(self, **changes: Any) -> "RuntimeOptions":
        """A copy with `changes` (checked like the original)."""
        return dataclasses.replace(self, **changes)

    def as_kwargs(self) -> Dict[str, Any]:
        """The fields by name, values as they are (what `DavidRuntime(**...)` takes)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def as_record(self) -> Dict[str, Any]:
        """The options as JSON values (`post` as its fields); `from_record` reads them back."""
        record = self.as_kwargs()
        record["model"] = str(self.model)
        record["post"] = dataclasses.asdict(self.post)
        record["refine"] = None if self.refine is None else self.refine.as_record()
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "RuntimeOptions":
        """The options `as_record` wrote."""
        values = dict(record)
        values["post"] = PostOptions(**values.get("post", {}))
        return cls(**values)


def resolution_arg(text: str) -> Union[int, str, None]:
    """argparse type: a positive multiple of 16 (the models' stride), 'auto', or 'image' / 'native'
    for None (the image's own size); else refused with the nearest sizes."""
    if text.lower() in ("image", "native", "none"):
        return None
    if text.lower() == AUTO_RESOLUTION:
        return AUTO_RESOLUTION
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a multiple of 16 (e.g. 512) or 'image', got {text!r}") from None
    if value < 16 or value % 16:
        lower, upper = max(16, value // 16 * 16), max(16, value // 16 * 16 + 16)
        near = f"{lower}" if lower == upper or value < 16 else f"{lower} or {upper}"
        raise argparse.ArgumentTypeError(
            f"{value} is not a positive multiple of 16 (the model's stride): "
            f"use {near}, or 'image' for the image's own size"
        )
    return value


def positive_int_arg(text: str) -> int:
    """argparse type: a positive integer."""
    try:
        return positive_int("value", int(text))
    except (ValueError, InputError):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None


class RuntimeArguments:
    """The runtime flags of every command that runs a model: `add_to(parser)` adds -m, --backend,
    --device, --resolution, --stages and, as asked, --channel-order, --batch-size, --threads,
    --refine; `options(args)` makes the RuntimeOptions (the model as given). With `many` (bench),
    --backend and --resolution take lists: `variants(args)`, one RuntimeOptions per pair."""

    def __init__(
        self,
        *,
        channel_order: bool = True,
        batch_size: bool = True,
        threads: bool = True,
        refine: bool = False,
        many: bool = False,
        model_help: str = MODEL_HELP,
        resolution_help: Optional[str] = None,
    ) -> None:
        self.channel_order, self.batch_size, self.threads, self.refine = channel_order, batch_size, threads, refine
        self.many, self.model_help = many, model_help
        self.resolution_help = resolution_help or (
            f"side of the square the model runs at, a multiple of 16, or 'image' for the image's own size "
            f"(default auto: {DEFAULT_RESOLUTION}, or the model's own for a pre/post graph or a fixed-size file such "
            "as the released ones)"
        )

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Add the flags to `parser`, with RuntimeOptions' defaults."""
        g = parser.add_argument_group("model and runtime")
        g.add_argument("-m", "--model", required=True, help=self.model_help)
        if self.many:
            g.add_argument(
                "--backend",
                action="append",
                metavar="NAMES",
                help="backend(s), comma-separated or repeated (default: auto, by file type)",
            )
            g.add_argument(
                "--resolution",
                action="append",
                metavar="NS",
                help=f"model resolution(s), comma-separated or repeated (default: the model's own, else {DEFAULT_RESOLUTION})",
            )
        else:
            g.add_argument(
                "--backend",
                default=RuntimeOptions.backend,
                help="auto (by file type or URL), onnxruntime, torch, tensorrt or triton",
            )
            g.add_argument(
                "--resolution",
                type=resolution_arg,
                default=RuntimeOptions.resolution,
                metavar="N",
                help=self.resolution_help,
            )
        g.add_argument(
            "--device",
            default=RuntimeOptions.device,
            help="cpu (default), cuda or cuda:N; a GPU that cannot be used is an error, never a silent CPU fallback",
        )
        g.add_argument(
            "--stages",
            default=RuntimeOptions.stages,
            choices=STAGE_KINDS,
            help="where the pre/postprocessing runs: graph (ONNX graphs on ONNX Runtime), torch (on the torch "
            "backend's device), reference (numpy); default auto: the torch backend's own, else graph",
        )
        if self.channel_order:
            g.add_argument(
                "--channel-order",
                default=RuntimeOptions.channel_order,
                choices=("rgb", "bgr"),
                help="channel order of .npy array inputs (image files are always read as RGB)",
            )
        if self.batch_size:
            g.add_argument(
                "--batch-size",
                type=positive_int_arg,
                default=RuntimeOptions.batch_size,
                metavar="N",
                help=f"images per model call (default {RuntimeOptions.batch_size})",
            )
        if self.threads:
            g.add_argument(
                "--threads",
                type=positive_int_arg,
                default=None,
                metavar="N",
                help="threads for the model (ONNX Runtime's intra-op threads) and pre/postprocessing; "
                "with --ray, per worker (default: the backend's own; 1 per worker with --ray)",
            )
        if self.refine:
            g.add_argument(
                "--refine",
                default="none",
                choices=REFINE_MODES,
                help="people: a second, zoomed pass per person found in the mask, pasted back at full "
                "resolution (about one more model run per person; see david_infer.refine); default none",
            )

    def options(self, args: argparse.Namespace, **fields: Any) -> RuntimeOptions:
        """The RuntimeOptions of the parsed flags (`fields` override or add, e.g. batch_size)."""
        given: Dict[str, Any] = {"model": args.model, "device": args.device, "stages": args.stages}
        if not self.many:
            given.update(backend=args.backend, resolution=args.resolution)
        for name in ("channel_order", "batch_size", "threads", "refine"):  # the flags this group added
            if getattr(self, name):
                given[name] = getattr(args, name)
        return RuntimeOptions(**{**given, **fields})

    def variants(self, args: argparse.Namespace, **fields: Any) -> List[RuntimeOptions]:
        """With many=True: one RuntimeOptions per resolution and backend, resolution-major."""
        backends = split_list(args.backend) or [RuntimeOptions.backend]
        resolutions: List[Union[int, str]] = split_list(args.resolution, int) or [AUTO_RESOLUTION]
        return [
            RuntimeOptions(
                args.model, backend=backend, device=args.device, resolution=resolution, stages=args.stages, **fields
            )
            for resolution in resolutions
            for backend in backends
        ]


def resolved_model(model: Any) -> Any:
    """A -m MODEL value -> what DavidRuntime opens: a served model's URL as it is, else a path (a
    released model's name downloaded once)."""
    from .backends import url_scheme
    from .zoo import resolve_model

    return model if isinstance(model, str) and url_scheme(model) else resolve_model(model)


def split_list(values: Optional[Sequence[str]], kind: type = str) -> List[Any]:
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
