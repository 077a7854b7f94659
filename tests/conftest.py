"""Shared fixtures: tiny exported graphs are made once per session (each export takes ~10 s)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Skip GPU tests without a GPU and full-size tests unless DAVID_INFER_FULLSIZE=1."""
    gpu_reason = _gpu_missing_reason()
    for item in items:
        if "gpu" in item.keywords and gpu_reason:
            item.add_marker(pytest.mark.skip(reason=gpu_reason))
        if "fullsize" in item.keywords and os.environ.get("DAVID_INFER_FULLSIZE") != "1":
            item.add_marker(pytest.mark.skip(reason="full-size model: set DAVID_INFER_FULLSIZE=1 to run"))


def _gpu_missing_reason() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return ""
    except ImportError:
        pass
    return "needs an NVIDIA GPU with CUDA; none is visible on this machine"


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
