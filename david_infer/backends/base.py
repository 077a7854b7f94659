"""The interface a backend implements (after Polygraphy's loader/runner split): a `Backend` turns a
validated contract, device and workload into a `Runner`, which runs the model call alone. See
ARCHITECTURE.md, "Adding a backend"."""

from __future__ import annotations

import abc
import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple, Type, TypeVar

import numpy as np

from ..contract import GraphIO, ModelContract
from ..errors import BackendUnavailable, InputError, ModelError


class DeviceError(InputError, BackendUnavailable):
    """A device string that names no device, or a device this backend cannot run on."""


@dataclass(frozen=True)
class Device:
    """A parsed device: kind "cpu" or "cuda", and the CUDA device index."""

    kind: str
    index: int = 0
    given: str = field(default="", compare=False, repr=False)  # as the user wrote it ("gpu"), for messages

    def __str__(self) -> str:
        return self.kind if self.kind == "cpu" else f"cuda:{self.index}"

    @property
    def shown(self) -> str:
        """The device as the user wrote it, else its canonical name."""
        return self.given or str(self)


def parse_device(device: Any) -> Device:
    """ "cpu" -> Device("cpu"); "cuda", "gpu", "cuda:N" -> Device("cuda", N); DeviceError otherwise."""
    if isinstance(device, Device):
        return device
    given = str(device).strip()
    text = given.lower()
    if text == "cpu":
        return Device("cpu", 0, given)
    if text in ("cuda", "gpu"):
        return Device("cuda", 0, given)
    if text.startswith("cuda:") and text[5:].isdigit():
        return Device("cuda", int(text[5:]), given)
    raise DeviceError(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'")


@dataclass(frozen=True)
class Workload:
    """What the runtime will send: `resolution` (the square side; None = each image's own size)
    and `max_batch` (the largest batch), checked against the contract before a runner opens."""

    resolution: Optional[int]
    max_batch: int


OptionsT = TypeVar("OptionsT", bound="BackendOptions")


@dataclass(frozen=True)
class BackendOptions:
    """Base of each backend's typed options (a frozen dataclass whose fields are the options; values
    checked in `__post_init__`)."""

    #: options a backend had in an earlier release -> what to use now
    moved: ClassVar[Dict[str, str]] = {}

    @classmethod
    def parse(cls: Type[OptionsT], backend: str, options: Mapping[str, Any]) -> OptionsT:
        """The options from keyword arguments; InputError naming the valid ones for an unknown name."""
        valid = [f.name for f in dataclasses.fields(cls)]
        for name in options:
            if name in cls.moved:
                raise InputError(f"the {backend} backend's option {name!r} is gone: {cls.moved[name]}")
        unknown = [k for k in options if k not in valid]
        if unknown:
            raise InputError(unknown_option_message(f"the {backend} backend", unknown, valid))
        return cls(**options)


def unknown_option_message(what: str, unknown: Any, valid: Any) -> str:
    """ "what takes no option 'x' (did you mean 'y'?); valid: ..." for misspelled keyword arguments."""
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, list(valid), n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    listed = ", ".join(valid) or "none"
    return f"{what} takes no option {', '.join(parts)}; valid options: {listed}"


class Runner(abc.ABC):
    """Runs one loaded model (the model call only), safe to call from several threads."""

    #: backend name as given to DavidRuntime(backend=...)
    name: ClassVar[str] = ""

    @property
    @abc.abstractmethod
    def io(self) -> GraphIO:
        """The loaded graph's inputs and outputs (names in graph order, shapes, dtypes)."""

    @abc.abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Numpy arrays keyed by output name, for arrays keyed by input name of the dtypes and layout
        `io` declares."""

    def own_stages(self, contract: ModelContract, options: Any, kind: str) -> Optional[Any]:
        """The Stages this runner brings for its own device when the runtime asks for `kind` (a
        david_infer.stages.STAGE_KINDS, with a StageOptions), or None for the shared ones."""
        return None

    def close(self) -> None:  # noqa: B027 (optional: a runner may hold nothing to release)
        """Release sessions, engines and device memory. Idempotent."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Backend(abc.ABC):
    """The loader side of a backend: turns a validated contract into a `Runner`."""

    #: name as given to DavidRuntime(backend=...)
    name: ClassVar[str] = ""
    #: human-readable name for messages
    title: ClassVar[str] = ""
    #: model file suffixes `backend="auto"` opens with this backend
    suffixes: ClassVar[Tuple[str, ...]] = ()
    #: device kinds this backend runs on
    devices: ClassVar[Tuple[str, ...]] = ("cpu",)
    #: URL schemes ("grpc", "http") of served models; such a backend implements `remote_contract`
    schemes: ClassVar[Tuple[str, ...]] = ()
    #: the typed options (a BackendOptions dataclass)
    Options: ClassVar[Type[BackendOptions]] = BackendOptions

    def __init__(self, options: Optional[Mapping[str, Any]] = None) -> None:
        opts = options or {}
        self.options: BackendOptions = opts if isinstance(opts, BackendOptions) else self.Options.parse(self.name, opts)

    def check_device(self, device: Device) -> Device:
        """DeviceError unless this backend runs on `device`'s kind."""
        if device.kind not in self.devices:
            spelled = " or ".join('"cpu"' if k == "cpu" else '"cuda" or "cuda:N"' for k in self.devices)
            where = "an NVIDIA GPU" if self.devices == ("cuda",) else " or ".join(self.devices)
            raise DeviceError(
                f'the {self.title or self.name} backend runs on {where}: device must be {spelled}, not "{device.shown}"'
            )
        return device

    def inspect(self, path: Path) -> GraphIO:
        """The graph's inputs and outputs, for recognising a manifest-less file (if the backend can)."""
        raise ModelError(
            f"{path}: no manifest beside it and the {self.title or self.name} backend cannot "
            "describe a bare file; export it with david-infer (which writes the manifest)"
        )

    def remote_contract(self, url: str) -> ModelContract:
        """The contract of the model at `url` (backends with `schemes` override this)."""
        raise ModelError(f"{url}: the {self.title or self.name} backend opens model files, not server URLs")

    @abc.abstractmethod
    def open(self, contract: ModelContract, device: Device, workload: Workload) -> Runner:
        """A runner for `contract.path` on `device`, ready for `workload`."""
