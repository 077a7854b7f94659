"""Which ONNX Runtime build is installed, and whether the GPU stack under it can run (docs/gpu.md):
`import_onnxruntime(device)` before a session, `check_gpu(ort, device_id, tensorrt=...)` before the
CUDA / TensorRT providers; each way a setup fails has its own error and fix."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata as metadata
import importlib.util
import io
import logging
import re
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional

from ..._optional import require
from ...errors import (
    BackendUnavailable,
    NoGpuError,
    OnnxRuntimeConflictWarning,
    TensorRTMissingError,
    TensorRTVersionError,
)
from ..gpu import MIN_DRIVER, TENSORRT_PACKAGE, check_cuda_device, install_command, nvidia_driver_present

log = logging.getLogger(__name__)

CPU_BUILD, GPU_BUILD = "onnxruntime", "onnxruntime-gpu"

_preloaded = False


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_builds(path: Optional[List[str]] = None) -> Dict[str, str]:
    """{distribution: version} of every installed distribution that provides `onnxruntime/` (on `path`)."""
    found: Dict[str, str] = {}
    dists = metadata.distributions(path=path) if path is not None else metadata.distributions()
    for dist in dists:
        meta = dist.metadata  # (`get` is in its typed protocol from Python 3.12 only)
        name = _normalise((meta["Name"] or "") if "Name" in meta else "")
        if not name.startswith("onnxruntime") or name in found:
            continue
        files = dist.files
        # onnxruntime-extensions, onnxruntime-tools ... are add-ons, not builds: they lack the package.
        if files is None or any(str(f).replace("\\", "/") == "onnxruntime/__init__.py" for f in files):
            found[name] = dist.version
    return found


def active_build() -> Optional[str]:
    """The distribution whose files `import onnxruntime` would load now (read without importing it)."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.origin:
        return None
    info = Path(spec.origin).parent / "capi" / "build_and_package_info.py"
    match = re.search(r"package_name\s*=\s*['\"]([^'\"]+)", info.read_text()) if info.is_file() else None
    return _normalise(match.group(1)) if match else None


def check_builds(
    device: str = "cpu",
    path: Optional[List[str]] = None,
    shown: Optional[str] = None,
    load: Callable[[str], Any] = ctypes.CDLL,
) -> Dict[str, str]:
    """The installed builds (on `path`); BackendUnavailable naming the extra when none fits `device`
    (`shown`: as the user wrote it), NoGpuError for a GPU asked for without the NVIDIA driver (found
    with `load`), an OnnxRuntimeConflictWarning with the repair when several are installed."""
    shown = shown or device
    builds = installed_builds(path)
    if not builds:
        raise BackendUnavailable(
            f"ONNX Runtime is not installed. Install it with: {install_command('cpu')} "
            f"(CPU) or {install_command('cuda')} (NVIDIA GPU; {install_command('cuda', 12)} for a "
            f"driver older than {MIN_DRIVER[13]})"
        )
    if len(builds) > 1:
        listed = ", ".join(f"{n} {v}" for n, v in sorted(builds.items()))
        keep = GPU_BUILD if GPU_BUILD in builds else CPU_BUILD
        extra = "gpu" if keep == GPU_BUILD else "cpu"
        warnings.warn(
            f"{len(builds)} ONNX Runtime builds are installed ({listed}); they share the onnxruntime/ "
            f"folder and the files of {active_build() or 'the last one installed'} are the ones in use, so "
            f"providers may be missing or broken. Repair: pip uninstall -y {' '.join(sorted(builds))} && "
            f'pip install "david-infer[{extra}]"',
            OnnxRuntimeConflictWarning,
            stacklevel=2,
        )
    if device != "cpu" and GPU_BUILD not in builds:
        if not nvidia_driver_present(load):
            raise NoGpuError(
                f"device {shown!r} asks for an NVIDIA GPU, but this machine has no NVIDIA driver (libcuda "
                f"cannot be loaded), so no GPU is usable. Run on the CPU instead: drop --device {shown} (or "
                f'pass device="cpu"). On a machine with an NVIDIA GPU, install its driver first (nvidia-smi '
                f"must list the GPU), then {install_command('cuda')}"
            )
        raise BackendUnavailable(
            f"device {shown!r} needs onnxruntime-gpu, but the installed ONNX Runtime is the CPU build "
            f"({', '.join(sorted(builds))}); the NVIDIA driver is present. Repair: pip uninstall -y "
            f"{' '.join(sorted(builds))} && {install_command('cuda')} (or drop --device {shown} to run on the CPU)"
        )
    return builds


def import_onnxruntime(
    device: str = "cpu", purpose: str = "the ONNX Runtime backend", shown: Optional[str] = None
) -> ModuleType:
    """`check_builds(device)`, then `import onnxruntime`, with CUDA/cuDNN preloaded for a GPU device."""
    check_builds(device, shown=shown)
    ort = require("onnxruntime", purpose)
    if device != "cpu":
        preload_cuda_libraries(ort)
    return ort


def preload_cuda_libraries(ort: ModuleType) -> List[str]:
    """Load CUDA and cuDNN from the pip nvidia-* wheels (`onnxruntime.preload_dlls`), once per process;
    ONNX Runtime's messages about libraries it could not load (also logged), [] when all loaded."""
    global _preloaded
    if _preloaded or not hasattr(ort, "preload_dlls"):
        return []
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # preload_dlls reports failures with print()
        ort.preload_dlls(cuda=True, cudnn=True)
    _preloaded = True
    problems = [line for line in out.getvalue().splitlines() if line.strip()]
    for line in problems:
        log.warning("onnxruntime.preload_dlls: %s", line)
    return problems


def build_cuda_major(ort: ModuleType) -> Optional[int]:
    """The CUDA major the installed onnxruntime-gpu was built for (None for a CPU build)."""
    try:
        version = getattr(importlib.import_module(f"{ort.__name__}.capi.build_and_package_info"), "cuda_version", "")
    except ImportError:
        return None
    return int(version.split(".")[0]) if version and version.split(".")[0].isdigit() else None


def provider_tensorrt_major(provider_library: Path) -> Optional[int]:
    """The TensorRT major (N of libnvinfer.so.N / nvinfer_N.dll) the provider library names, or None."""
    match = re.search(rb"(?:libnvinfer\.so\.|nvinfer_)(\d+)", Path(provider_library).read_bytes())
    return int(match.group(1)) if match else None


def tensorrt_provider_library(ort: ModuleType) -> Optional[Path]:
    """The TensorRT provider's shared library inside the installed onnxruntime, if there is one."""
    if ort.__file__ is None:  # a namespace package (a broken install): no library files to find
        return None
    capi = Path(ort.__file__).parent / "capi"
    found = [capi / n for n in ("libonnxruntime_providers_tensorrt.so", "onnxruntime_providers_tensorrt.dll")]
    return next((f for f in found if f.is_file()), None)


def installed_tensorrt() -> Optional[str]:
    """The installed TensorRT version (from the `tensorrt*` distributions' metadata), or None."""
    for name in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-libs", "tensorrt-cu12-libs"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _tensorrt_fix(cuda_major: int, trt_major: int) -> str:
    package = TENSORRT_PACKAGE.get(cuda_major, TENSORRT_PACKAGE[13])
    return f'pip install "{package}>={trt_major},<{trt_major + 1}"  (or {install_command("cuda", cuda_major)})'


def check_tensorrt(required_major: int, cuda_major: int) -> str:
    """The installed TensorRT version if its major is `required_major`, else TensorRTMissingError or
    TensorRTVersionError with the pip command that fixes it."""
    version = installed_tensorrt()
    if version is None:
        raise TensorRTMissingError(
            f"the TensorRT provider needs TensorRT {required_major} (libnvinfer.so.{required_major}) and "
            f"TensorRT is not installed. Install it with: {_tensorrt_fix(cuda_major, required_major)}"
        )
    major = int(version.split(".")[0])
    if major != required_major:
        raise TensorRTVersionError(
            f"TensorRT {version} is installed, but this onnxruntime-gpu's TensorRT provider loads "
            f"TensorRT {required_major} (libnvinfer.so.{required_major}). Repair: "
            f"pip uninstall -y tensorrt {TENSORRT_PACKAGE.get(cuda_major, 'tensorrt-cu13')} && "
            f"{_tensorrt_fix(cuda_major, required_major)}"
        )
    return version


def check_gpu(ort: ModuleType, device_id: int = 0, tensorrt: bool = False, cudart: Any = None) -> Dict[str, Any]:
    """What a CUDA (and with `tensorrt`, TensorRT) provider needs, checked in the order a user fixes
    it (driver and device, then TensorRT); returns what was found."""
    cuda_major = build_cuda_major(ort)
    if cuda_major is None:
        raise BackendUnavailable(
            f"the installed onnxruntime ({getattr(ort, '__version__', '?')}) is a CPU build. Repair: "
            f"pip uninstall -y onnxruntime onnxruntime-gpu && {install_command('cuda')}"
        )
    found: Dict[str, Any] = {"cuda_major": cuda_major, "devices": check_cuda_device(cuda_major, device_id, cudart)}
    if tensorrt:
        library = tensorrt_provider_library(ort)
        required = provider_tensorrt_major(library) if library else None
        if required is None:
            raise BackendUnavailable(
                f"this onnxruntime build ({ort.__version__}) has no TensorRT provider; "
                f'use providers=("cuda",) or {install_command("cuda", cuda_major)}'
            )
        found["tensorrt"] = check_tensorrt(required, cuda_major)
        try:  # loads libnvinfer from the pip wheel, where the provider's dlopen then finds it
            importlib.import_module("tensorrt")
        except Exception as exc:  # a broken install raises OSError/ImportError from its loader
            raise TensorRTMissingError(
                f"TensorRT {found['tensorrt']} is installed but cannot be loaded ({type(exc).__name__}: {exc}). "
                f"Reinstall: {_tensorrt_fix(cuda_major, required)}"
            ) from None
    return found
