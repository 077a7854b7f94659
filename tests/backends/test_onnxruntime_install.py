"""Which ONNX Runtime build is installed, and the four GPU setup failures (david_infer/backends/onnxruntime/install.py, backends/gpu.py).

Distribution detection reads real metadata: a second build is a real `*.dist-info` folder put on
the search path. The GPU checks call the real cuda-python (no driver here: "no NVIDIA driver");
the other answers of the driver are given by replacing only cuda-python's two query functions.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Tuple

import pytest

from david_infer.backends.onnxruntime import install as _ort
from david_infer.errors import (
    BackendUnavailable,
    DriverTooOldError,
    NoGpuError,
    OnnxRuntimeConflictWarning,
    TensorRTMissingError,
    TensorRTVersionError,
)

ort = pytest.importorskip("onnxruntime", reason="the dev extra installs onnxruntime (the cpu extra)")


def _dist_info(where: Path, name: str, version: str, files: Tuple[str, ...] = ("onnxruntime/__init__.py",)) -> Path:
    """A real, minimal installed distribution: METADATA and RECORD, as pip writes them."""
    info = where / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in files) + f"{info.name}/METADATA,,\n")
    return info


def test_the_build_in_use_is_found() -> None:
    builds = _ort.installed_builds()
    active = _ort.active_build()
    assert active in builds and builds[active] == ort.__version__
    assert all(name.startswith("onnxruntime") for name in builds)


def test_no_build_names_both_extras(tmp_path: Path) -> None:
    _dist_info(tmp_path, "onnxruntime-extensions", "0.14.0", files=("onnxruntime_extensions/__init__.py",))
    assert _ort.installed_builds([str(tmp_path)]) == {}  # an add-on is not a build
    with pytest.raises(BackendUnavailable) as err:
        _ort.check_builds("cpu", [str(tmp_path)])
    message = str(err.value)
    assert 'pip install "david-infer[cpu]"' in message and 'pip install "david-infer[gpu]"' in message
    assert 'pip install "david-infer[gpu-cu12]"' in message


def test_both_builds_warn_with_the_repair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dist_info(tmp_path, "onnxruntime-gpu", "1.31.1")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(OnnxRuntimeConflictWarning) as caught:
        builds = _ort.check_builds("cuda")
    assert builds == {"onnxruntime": ort.__version__, "onnxruntime-gpu": "1.31.1"}
    message = str(caught[0].message)
    assert f"onnxruntime {ort.__version__}, onnxruntime-gpu 1.31.1" in message
    assert "files of onnxruntime are the ones in use" in message  # the CPU build's files are on disk
    assert 'pip uninstall -y onnxruntime onnxruntime-gpu && pip install "david-infer[gpu]"' in message


def test_single_build_gives_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "onnxruntime" in _ort.check_builds("cpu")


def test_gpu_device_with_the_cpu_build_says_how_to_switch() -> None:
    def driver_loads(name: str) -> object:  # stands in for loading the NVIDIA driver's libcuda
        return object()

    with pytest.raises(
        BackendUnavailable,
        match=r"is the CPU build \(onnxruntime\); the NVIDIA driver is present. "
        r"Repair: pip uninstall -y onnxruntime && "
        r'pip install "david-infer\[gpu\]" \(or drop --device gpu',
    ):
        _ort.check_builds("cuda", shown="gpu", load=driver_loads)
    with pytest.raises(BackendUnavailable, match="is a CPU build"):
        _ort.check_gpu(ort)
    assert _ort.import_onnxruntime("cpu") is ort


def test_gpu_device_without_a_driver_says_to_drop_the_device() -> None:
    """No NVIDIA driver: onnxruntime-gpu would not help; the fix is the CPU (or a driver)."""

    def no_driver(name: str) -> object:
        raise OSError(f"{name}: cannot open shared object file")

    with pytest.raises(
        NoGpuError,
        match=r"device 'gpu' asks for an NVIDIA GPU, but this machine has no NVIDIA "
        r"driver.*drop --device gpu",
    ) as caught:
        _ort.check_builds("cuda", shown="gpu", load=no_driver)
    assert "cuda'" not in str(caught.value)


# -- the driver and the device (cuda-python) -----------------------------------------------------

cudart = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is in the dev extra")
OK = cudart.cudaError_t.cudaSuccess


def _driver(monkeypatch: pytest.MonkeyPatch, version: int, count_result: Tuple[Any, Any]) -> None:
    """The driver answers `version` and `count_result`: only the two GPU library calls are replaced."""
    monkeypatch.setattr(cudart, "cudaDriverGetVersion", lambda: (OK, version))
    monkeypatch.setattr(cudart, "cudaGetDeviceCount", lambda: count_result)


def test_no_driver_here_is_no_gpu() -> None:
    # The real call on this machine: no NVIDIA driver, so cudaGetDeviceCount fails with
    # cudaErrorInsufficientDriver, which must not be reported as a driver that is too old.
    with pytest.raises(NoGpuError, match="no NVIDIA driver is installed") as err:
        _ort.check_cuda_device(13)
    assert not isinstance(err.value, DriverTooOldError)


def test_old_driver_is_not_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _driver(monkeypatch, 12080, (cudart.cudaError_t.cudaErrorInsufficientDriver, None))
    with pytest.raises(DriverTooOldError) as err:
        _ort.check_cuda_device(13)
    message = str(err.value)
    assert "supports CUDA up to 12.8" in message and "CUDA 13 runtime" in message
    assert "Upgrade the driver to 580 or newer" in message
    assert 'pip install "david-infer[gpu-cu12]"' in message


def test_old_driver_found_by_version_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    _driver(monkeypatch, 11080, (OK, 1))  # the device query works, the runtime would not
    with pytest.raises(DriverTooOldError, match="up to 11.8.*CUDA 12 runtime.*525.60.13"):
        _ort.check_cuda_device(12)


def test_driver_without_device(monkeypatch: pytest.MonkeyPatch) -> None:
    _driver(monkeypatch, 13000, (cudart.cudaError_t.cudaErrorNoDevice, None))
    with pytest.raises(NoGpuError, match="no NVIDIA GPU is visible \\(cudaErrorNoDevice\\)"):
        _ort.check_cuda_device(13)


def test_device_count_and_range(monkeypatch: pytest.MonkeyPatch) -> None:
    _driver(monkeypatch, 13000, (OK, 2))
    assert _ort.check_cuda_device(13, 1) == 2
    with pytest.raises(NoGpuError, match=r"CUDA device 2 does not exist; this machine has 2 \(0..1\)"):
        _ort.check_cuda_device(13, 2)


# -- TensorRT for the ONNX Runtime TensorRT provider ----------------------------------------------


def test_provider_tensorrt_major(tmp_path: Path) -> None:
    lib = tmp_path / "libonnxruntime_providers_tensorrt.so"
    lib.write_bytes(b"\x7fELF\0\0libcublas.so.13\0libnvinfer.so.10\0libnvonnxparser.so.10\0")
    assert _ort.provider_tensorrt_major(lib) == 10
    lib.write_bytes(b"\x7fELF\0\0libcudart.so.13\0")
    assert _ort.provider_tensorrt_major(lib) is None


def test_tensorrt_missing() -> None:
    assert _ort.installed_tensorrt() is None
    with pytest.raises(
        TensorRTMissingError,
        match=r"TensorRT 10 \(libnvinfer.so.10\).*not installed.*"
        r'pip install "tensorrt-cu13>=10,<11"',
    ):
        _ort.check_tensorrt(10, 13)


def test_tensorrt_major_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dist_info(tmp_path, "tensorrt-cu12", "11.4.0.106", files=("tensorrt/__init__.py",))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _ort.installed_tensorrt() == "11.4.0.106"
    with pytest.raises(TensorRTVersionError) as err:
        _ort.check_tensorrt(10, 12)
    message = str(err.value)
    assert "TensorRT 11.4.0.106 is installed" in message and "loads TensorRT 10" in message
    assert 'pip install "tensorrt-cu12>=10,<11"' in message and "david-infer[gpu-cu12]" in message
    assert not isinstance(err.value, TensorRTMissingError)


def test_matching_tensorrt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dist_info(tmp_path, "tensorrt-cu13", "10.16.1.11", files=("tensorrt/__init__.py",))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _ort.check_tensorrt(10, 13) == "10.16.1.11"


def test_missing_onnxruntime_hint_names_the_cpu_extra() -> None:
    from david_infer._optional import install_hint

    assert install_hint("onnxruntime") == 'pip install "david-infer[cpu]"'
    assert _ort.install_command("cuda", 12) == 'pip install "david-infer[gpu-cu12]"'


def test_preload_is_harmless_on_a_cpu_build() -> None:
    # The CPU build has no CUDA version: nothing to load, nothing printed, nothing raised.
    assert _ort.build_cuda_major(ort) is None
    assert _ort.preload_cuda_libraries(ort) == []
