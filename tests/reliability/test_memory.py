"""Memory guards: a run that cannot fit is refused before it starts, with the estimate, what is
available and the largest setting that fits; a backend's failed allocation is OutOfMemoryError.

Each run is a child process under an address-space limit it sets itself (RLIMIT_AS, a little above
what it holds once imported), so nothing here can exhaust the machine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
from PIL import Image

from david_infer.errors import OutOfMemoryError
from david_infer.memory_estimate import (
    OFFER_SHARE,
    STRIDE,
    MemoryGuard,
    allocation_error,
    is_allocation_failure,
    variant_for,
)

ROOT = Path(__file__).resolve().parents[2]
#: argv: headroom in GiB, then the command's arguments; the limit is set after the imports
_LIMITED_CLI = """
import resource, sys
from david_infer.cli import main
from david_infer.memory_estimate import _read_fields
limit = _read_fields("/proc/self/status")["VmSize"] + int(float(sys.argv[1]) * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(main(sys.argv[2:]))
"""
#: argv: model, backend; one call of the backend at 4096 under a limit 1 GiB above the opened model
_LIMITED_RUNNER = """
import resource, sys
import numpy as np
from david_infer import DavidRuntime
from david_infer.errors import OutOfMemoryError
from david_infer.memory_estimate import _read_fields
rt = DavidRuntime(sys.argv[1], backend=sys.argv[2], resolution=64)
rt.predict(np.zeros((64, 64, 3), np.uint8))
limit = _read_fields("/proc/self/status")["VmSize"] + 2**30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
feeds = {"image": np.zeros((1, 3, 4096, 4096), np.float32), "image_384": np.zeros((1, 3, 384, 384), np.float32)}
try:
    rt.runner.run(feeds)
except OutOfMemoryError as exc:
    print("OutOfMemoryError:", exc)
"""


def _child(code: str, *args: object, timeout: float = 120) -> Tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_ARENA_MAX": "2"}
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    y, x = np.mgrid[0:96, 0:80]
    Image.fromarray(np.stack([x * 3, y * 2, (x + y) % 256], -1).astype(np.uint8)).save(folder / "small.png")
    return folder


def test_a_resolution_that_cannot_fit_is_refused_before_the_model_loads_and_the_one_offered_runs(
    photos: Path, tiny_multitask_onnx: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    base = ["predict", photos, "-m", tiny_multitask_onnx, "-o", out, "--no-progress", "--resolution"]
    code, _, err = _child(_LIMITED_CLI, 1.5, *base, 8192, timeout=60)
    assert code == 1, err
    assert "tiny-multitask.onnx at resolution 8192, batch 1 needs about 21." in err
    assert "is available (the address-space limit, ulimit -v)" in err
    assert not out.exists()  # refused before anything was made
    offered = re.search(r"the largest resolution that fits is (\d+) \(--resolution \1\)", err)
    assert offered, err
    largest = int(offered.group(1))
    assert largest % STRIDE == 0 and 512 <= largest < 8192
    code, stdout, err = _child(_LIMITED_CLI, 1.5, *base, largest, timeout=120)  # the setting offered fits
    assert code == 0, err
    assert "1 of 1 input(s) written" in stdout and (out / "small.depth.npy").is_file()


def test_an_image_too_large_at_its_own_size_is_refused_naming_it_and_the_others_are_written(
    photos: Path, tiny_multitask_onnx: Path, tmp_path: Path
) -> None:
    big = tmp_path / "big.png"
    Image.new("RGB", (4000, 3000), (90, 120, 150)).save(big, compress_level=1)
    out = tmp_path / "out"
    argv = ["predict", photos / "small.png", big, "-m", tiny_multitask_onnx, "-o", out, "--resolution", "image"]
    code, stdout, err = _child(_LIMITED_CLI, 1.5, *argv, "--no-progress", timeout=120)
    assert code == 1, err
    assert "1 of 2 input(s) written" in stdout and (out / "small.depth.npy").is_file()
    assert f"{big}: this 4000x3000 image at resolution 'image' (its own size) runs at 4000x4000, batch 1" in err
    assert "the largest resolution that fits is" in err and "Traceback" not in err
    assert not list(out.glob("big.*"))


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_a_failed_allocation_of_a_backend_is_the_packages_error(tiny_multitask_onnx: Path, backend: str) -> None:
    code, stdout, err = _child(_LIMITED_RUNNER, tiny_multitask_onnx, backend)
    assert code == 0, err
    words = {"onnxruntime": "ONNX Runtime ran out of memory", "torch": "torch ran out of memory"}[backend]
    assert f"OutOfMemoryError: {words} running a batch of 1 at 4096x4096: lower the resolution" in stdout
    allocator = {"onnxruntime": "(Failed to allocate memory", "torch": "(can't allocate memory"}[backend]
    assert allocator in stdout


def test_the_estimate_grows_with_resolution_squared_and_batch_and_the_offer_fits() -> None:
    guard = MemoryGuard(431_034_747, "base", 1, "mt-base.onnx")
    assert guard.need(1024, loaded=True) == 4 * guard.need(512, loaded=True) == 2 * guard.need(512, 2, loaded=True)
    budget = 8 << 30
    largest = guard.largest_resolution(budget)
    assert guard.need(largest) <= budget < guard.need(largest + STRIDE)
    with pytest.raises(
        OutOfMemoryError, match=r"the largest resolution that fits is (\d+) \(--resolution \1\)"
    ) as refused:
        guard.check_open(32768)
    offered = int(re.search(r"fits is (\d+)", str(refused.value)).group(1))  # within OFFER_SHARE of what is there
    assert guard.need(offered) <= refused.value.available * OFFER_SHARE < guard.need(offered + STRIDE)
    assert guard.largest_batch(512, budget) * guard.need(512, loaded=True) <= budget - guard.need(None)
    assert variant_for(None, 431_034_747) == "base" and variant_for(None, 1_316_660_000) == "large"
    assert variant_for(None, 666 << 20) == "large" and variant_for(None, 2_500_000) == "tiny"  # FP16 large, tiny


def test_allocation_failures_are_told_from_other_errors() -> None:
    assert is_allocation_failure(MemoryError())
    assert is_allocation_failure(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8"))
    assert not is_allocation_failure(RuntimeError("Expected 4-dimensional input"))
    error = allocation_error(
        RuntimeError("x Failed to allocate memory for requested buffer of size 4096000000"), "B", {}
    )
    assert isinstance(error, OutOfMemoryError) and isinstance(error, MemoryError)
    assert str(error).endswith("(Failed to allocate memory for requested buffer of size 4096000000)")
