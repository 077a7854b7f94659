"""Shared fixtures: tiny exported graphs are made once per session (each export takes ~10 s)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytest

# Ray's one-machine mode: its node address is 127.0.0.1 instead of the machine's network interface,
# so the local clusters of the tests (and their CLI subprocesses, which inherit this) stay on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

GPU_STRICT = os.environ.get("DAVID_INFER_GPU") == "1"


def gpu_missing_reason() -> str:
    """Why GPU tests cannot run here ("" when they can), asked of the NVIDIA driver itself through
    cuda-python: a CPU-only torch wheel on a GPU machine must not hide the GPU."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        return f'cuda-python is not installed ({exc}); pip install "david-infer[gpu]"'
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        return f"no usable NVIDIA GPU: cudaGetDeviceCount failed with {getattr(err, 'name', err)}"
    return "" if count else "no NVIDIA GPU: the driver reports 0 devices"


def gpu_skip(reason: str) -> None:
    """Skip a GPU test, or fail it when DAVID_INFER_GPU=1 (a GPU machine must run every GPU test)."""
    if GPU_STRICT:
        pytest.fail(f"DAVID_INFER_GPU=1 but {reason}", pytrace=False)
    pytest.skip(reason)


class GpuGate:
    """What a `gpu` test gets from the `requires_gpu` fixture."""

    def need(self, module: str) -> Any:
        """Import `module`; a missing or broken install skips (fails under DAVID_INFER_GPU=1)."""
        try:
            return importlib.import_module(module)
        except Exception as exc:  # a broken TensorRT install raises OSError from its loader too
            gpu_skip(f"{module} cannot be imported ({type(exc).__name__}: {exc})")


@pytest.fixture
def requires_gpu() -> GpuGate:
    """Gate for GPU tests: skips without a GPU (fails under DAVID_INFER_GPU=1); `.need(module)`
    imports GPU packages under the same rule instead of pytest.importorskip."""
    reason = gpu_missing_reason()
    if reason:
        gpu_skip(reason)
    return GpuGate()


_GPU_REASON: list = []


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A `gpu`-marked test (the marker, not any "gpu" in its path) skips without a GPU, and fails
    under DAVID_INFER_GPU=1."""
    if item.get_closest_marker("gpu") is not None:
        if not _GPU_REASON:
            _GPU_REASON.append(gpu_missing_reason())
        if _GPU_REASON[0]:
            gpu_skip(_GPU_REASON[0])


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Skip full-size tests unless DAVID_INFER_FULLSIZE=1."""
    for item in items:
        if item.get_closest_marker("fullsize") is not None and os.environ.get("DAVID_INFER_FULLSIZE") != "1":
            item.add_marker(pytest.mark.skip(reason="full-size model: set DAVID_INFER_FULLSIZE=1 to run"))


@pytest.fixture(scope="session")
def exported_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("exported")


@pytest.fixture(scope="session")
def tiny_multitask_onnx(exported_dir: Path) -> Path:
    """A dynamic-layout FP32 export of the tiny multi-task model (random weights, seed 0)."""
    from david_infer.export import export_onnx

    path = exported_dir / "tiny-multitask.onnx"
    export_onnx("tiny", "multitask", path, seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_fp16_onnx(exported_dir: Path) -> Path:
    """The mixed-precision FP16 export of the same tiny multi-task model (random weights, seed 0)."""
    from david_infer.export import export_onnx

    path = exported_dir / "tiny-multitask-fp16.onnx"
    export_onnx("tiny", "multitask", path, precision="fp16", seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_runtime(tiny_multitask_onnx: Path):
    """A DavidRuntime on the tiny multi-task export at resolution 64 (fast; shared, thread-safe)."""
    from david_infer import DavidRuntime

    runtime = DavidRuntime(tiny_multitask_onnx, resolution=64)
    yield runtime
    runtime.close()


@pytest.fixture(scope="session")
def official_onnx(exported_dir: Path) -> Path:
    """The tiny multi-task model (same seed as tiny_multitask_onnx) in the released files' layout."""
    from david_infer.export import export_onnx

    path = exported_dir / "tiny-multitask-official.onnx"
    if not path.exists():
        export_onnx("tiny", "multitask", path, layout="official", seed=0)
    return path


@pytest.fixture(scope="session")
def parity_models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The parity model (tests/support/parity.py: tiny multi-task, seed 5) per pipeline, as a network
    ("antialias": the dynamic export; "official": the released files' layout) and wrapped in its
    pre/post graph (keys "antialias+graph", "official+graph")."""
    from david_infer.export import export_onnx
    from david_infer.export.prepost import wrap_prepost
    from tests.support.parity import SEED

    folder = tmp_path_factory.mktemp("parity-models")
    models = {}
    for pipeline, layout in (("antialias", "dynamic"), ("official", "official")):
        network = folder / f"tiny-{pipeline}.onnx"
        export_onnx("tiny", "multitask", network, layout=layout, seed=SEED)
        models[pipeline] = network
        models[pipeline + "+graph"] = folder / f"tiny-{pipeline}-prepost.onnx"
        wrap_prepost(network, models[pipeline + "+graph"])
    return models


@pytest.fixture(scope="session")
def reference_maps(parity_models: dict, tmp_path_factory: pytest.TempPathFactory):
    """The reference stages' maps per (pipeline, shape), computed once (tests/support/parity.py);
    the files are removed at the end of the session (hundreds of MB)."""
    import shutil

    from tests.support.parity import ReferenceMaps

    folder = tmp_path_factory.mktemp("reference-maps")
    yield ReferenceMaps(folder, parity_models)
    shutil.rmtree(folder, ignore_errors=True)
