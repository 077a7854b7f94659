"""The memory a model run needs, estimated before it starts (the model file's size + LIBRARIES +
c(variant) x resolution^2 x batch, c measured by benchmarks/model_memory.py), against what this
process may still allocate; and a backend's failed allocation as the package's typed error. See
docs/reliability.md (Memory).

    guard = MemoryGuard(weights_bytes, variant, batch, model="mt-base.onnx")
    guard.check_open(resolution)                            # before the model is loaded
    guard.check_image(resolution, (h, w), name="photo.jpg")  # per image when the resolution follows it
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

from .errors import OutOfMemoryError

#: bytes of peak resident memory per model pixel (R^2 x B) of each variant (large: base's x 256 / 224)
BYTES_PER_MODEL_PIXEL: Dict[str, int] = {"tiny": 348, "base": 2058, "large": 2352}
#: parameters of each variant's multi-task model (benchmarks/results/params_macs.json; tiny: its torch model)
PARAMETERS: Dict[str, int] = {"tiny": 499_413, "base": 107_514_613, "large": 332_467_365}
#: what opening a model adds besides its weights: ONNX Runtime's library and threads (the tiny
#: model's open: 48 MB resident, 210 MB of address space, which counts 1/ADDRESS_SPACE_PER_BYTE)
LIBRARIES = 128 << 20
#: address space taken per resident byte of a run (VmPeak / VmHWM growth of one call: tiny 1.6,
#: base 1.2; arenas and thread stacks reserve more than they touch): what RLIMIT_AS's headroom is divided by
ADDRESS_SPACE_PER_BYTE = 1.7
#: the side the model runs at is a multiple of this (the resizer's stride)
STRIDE = 16
#: the share of what is available that the setting a refusal offers may need: the estimate is
#: within about 10%, and what is available moves a little between one run and the next
OFFER_SHARE = 0.9

_GB = 1 << 30


def variant_for(variant: Optional[str], weights: int) -> str:
    """`variant` when its activations are known, else the variant whose FP32 (4 bytes) or FP16
    (2 bytes) parameters are nearest `weights` bytes."""
    if variant in BYTES_PER_MODEL_PIXEL:
        return variant
    distance = {
        name: min(abs(math.log(max(weights, 1) / (count * size))) for size in (2, 4))
        for name, count in PARAMETERS.items()
    }
    return min(distance, key=distance.__getitem__)


def available_memory() -> Optional[Tuple[int, str]]:
    """(bytes this process may still allocate, the limit that says so): the least of MemAvailable, the
    cgroup's headroom and RLIMIT_AS's; None where none can be read."""
    found = []
    meminfo = _read_fields("/proc/meminfo")
    if "MemAvailable" in meminfo:
        found.append((meminfo["MemAvailable"], "MemAvailable"))
    cgroup = _cgroup_headroom()
    if cgroup is not None:
        found.append((cgroup, "the cgroup's memory.max"))
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    status = _read_fields("/proc/self/status")
    if limit != resource.RLIM_INFINITY and "VmSize" in status:
        headroom = max(0, limit - status["VmSize"])
        found.append((int(headroom / ADDRESS_SPACE_PER_BYTE), "the address-space limit, ulimit -v"))
    return min(found) if found else None


def _read_fields(path: str) -> Dict[str, int]:
    """'Name:   123 kB' lines of a /proc file as bytes by name; empty where it cannot be read."""
    fields: Dict[str, int] = {}
    with contextlib.suppress(OSError), open(path, encoding="ascii", errors="replace") as f:
        for line in f:
            name, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
                fields[name] = int(parts[0]) * 1024
    return fields


def _cgroup_headroom() -> Optional[int]:
    """memory.max - memory.current of this process's cgroup (v2), or None (no limit, not v2)."""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as f:
            entries = [line.strip().split(":", 2) for line in f]
        path = next(entry[2] for entry in entries if len(entry) == 3 and entry[0] == "0")
        folder = Path("/sys/fs/cgroup") / path.lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        current = (folder / "memory.current").read_text().strip()
    except (OSError, StopIteration):
        return None
    if not limit.isdigit() or not current.isdigit():
        return None  # "max": no limit
    return max(0, int(limit) - int(current))


def gigabytes(value: float) -> str:
    """Bytes as '12.3 GB' (GiB, as `free -h`), or '45 MB' below a tenth of that."""
    return f"{value / _GB:.1f} GB" if value >= _GB / 10 else f"{value / 2**20:.0f} MB"


@dataclass
class MemoryGuard:
    """The memory checks of one opened model: `weights` bytes (its file) of `variant` (None: guessed,
    `variant_for`), `batch` images at a time; `model` names it; not `enabled` checks nothing."""

    weights: int
    variant: Optional[str]
    batch: int
    model: str = "the model"
    enabled: bool = True
    #: the largest R^2 x B that passed once the model was loaded: the backend keeps that memory
    #: (ONNX Runtime's arena), so it is not asked for again
    _fitted: int = field(default=0, repr=False)

    @property
    def bytes_per_pixel(self) -> int:
        """c of this model's variant."""
        return BYTES_PER_MODEL_PIXEL[variant_for(self.variant, self.weights)]

    def need(self, resolution: Optional[int], batch: Optional[int] = None, loaded: bool = False) -> int:
        """Bytes one call at `resolution` (None: the weights alone) with `batch` (default the
        guard's) needs beyond what is resident, with the model `loaded` or not yet."""
        activations = 0 if resolution is None else self.bytes_per_pixel * resolution**2 * (batch or self.batch)
        return activations + (0 if loaded else self.weights + LIBRARIES)

    def largest_resolution(self, budget: int, loaded: bool = False) -> int:
        """The largest multiple of STRIDE whose call fits in `budget` bytes (0: none does)."""
        room = budget - self.need(None, loaded=loaded)
        if room <= 0:
            return 0
        return int(math.sqrt(room / (self.bytes_per_pixel * self.batch))) // STRIDE * STRIDE

    def largest_batch(self, resolution: int, budget: int, loaded: bool = False) -> int:
        """The largest batch whose call at `resolution` fits in `budget` bytes (0: none does)."""
        room = budget - self.need(None, loaded=loaded)
        return max(0, int(room // (self.bytes_per_pixel * resolution**2)))

    def check_open(self, resolution: Optional[int]) -> None:
        """OutOfMemoryError unless the model's weights and one call at `resolution` (None: each
        image's own size, checked per image) fit in what is available, before the model loads."""
        self._check(resolution, loaded=False)

    def check_image(self, resolution: int, size: Tuple[int, int], name: str) -> None:
        """OutOfMemoryError (naming input `name` of (height, width) `size`) unless a call at
        `resolution`, the image's own size, fits; the model is loaded."""
        if self.enabled and resolution**2 * self.batch > self._fitted:
            self._check(resolution, loaded=True, image=(name, size))
            self._fitted = resolution**2 * self.batch

    def _check(
        self, resolution: Optional[int], loaded: bool, image: Optional[Tuple[str, Tuple[int, int]]] = None
    ) -> None:
        found = available_memory() if self.enabled else None
        needed = self.need(resolution, loaded=loaded)
        if found is None or needed <= found[0]:
            return
        budget, available = found[0], f"{gigabytes(found[0])} is available ({found[1]})"
        if resolution is None:
            message = f"{self.model}: loading it needs about {gigabytes(needed)} but {available}"
            raise OutOfMemoryError(message, needed, budget)
        activations = f"activations {gigabytes(self.need(resolution, loaded=True))}, growing with resolution^2 x batch"
        parts = activations if loaded else f"the model {gigabytes(self.weights)} + {activations}"
        setting = f"{self.model} at resolution {resolution}, batch {self.batch}"
        if image is not None:
            name, (h, w) = image
            setting = (
                f"{name}: this {w}x{h} image at resolution 'image' (its own size) runs at {resolution}x{resolution}, "
                f"batch {self.batch}, which"
            )
        largest = self.largest_resolution(int(budget * OFFER_SHARE), loaded)
        fits = f"the largest resolution that fits is {largest} (--resolution {largest})"
        fits = fits if largest else f"no resolution fits at batch {self.batch}"
        batch = self.largest_batch(resolution, int(budget * OFFER_SHARE), loaded)
        if self.batch > 1 and batch:
            fits += f", or batch {batch} at resolution {resolution} (--batch-size {batch})"
        message = f"{setting} needs about {gigabytes(needed)} ({parts}) but {available}: {fits}"
        raise OutOfMemoryError(message, needed, budget)


#: what each backend's failed allocation says: ONNX Runtime's arena, torch's CPU and CUDA allocators
_ALLOCATION_FAILURES = ("Failed to allocate memory", "can't allocate memory", "out of memory", "bad_alloc")


def is_allocation_failure(exc: BaseException) -> bool:
    """True for a backend's (or numpy's) failed allocation: MemoryError, ONNX Runtime's "Failed to
    allocate memory", torch's "DefaultCPUAllocator: can't allocate memory" and CUDA "out of memory"."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return any(phrase in text for phrase in _ALLOCATION_FAILURES)


def allocation_error(exc: BaseException, backend: str, feeds: Mapping[str, Tuple[int, ...]]) -> OutOfMemoryError:
    """The OutOfMemoryError for `exc`, a failed allocation of `backend` running inputs of the shapes
    `feeds` (by name): the batch and resolution it ran, what to lower, and the backend's words."""
    image = max(feeds.values(), key=lambda shape: math.prod(shape), default=())
    setting = f"a batch of {image[0]} at {image[-1]}x{image[-2]}" if len(image) == 4 else f"inputs {dict(feeds)}"
    text = str(exc)
    start = min((text.find(phrase) for phrase in _ALLOCATION_FAILURES if phrase in text), default=0)
    first = (text[start:].strip().splitlines() or [type(exc).__name__])[0]  # the allocator's own words
    return OutOfMemoryError(
        f"{backend} ran out of memory running {setting}: lower the resolution (--resolution) or the batch "
        f"size (--batch-size) ({first[:200]})"
    )


def guard_for(model: Union[Path, str], variant: Optional[str], batch: int, device_kind: str) -> MemoryGuard:
    """The guard of a runtime opening `model` of `variant` with `batch` on `device_kind`: only a file
    on the CPU is guarded (a GPU's memory is not the host's)."""
    local = isinstance(model, Path)
    try:
        weights = os.path.getsize(model) if local else 0
    except OSError:
        weights = 0
    name = Path(model).name if local else str(model)
    return MemoryGuard(weights, variant, batch, name, enabled=local and device_kind == "cpu")
