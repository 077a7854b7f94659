"""A small, fast run of benchmarks/stress.py: one runtime shared by threads, results equal to
single-threaded ones, no errors. (The full run, 8 threads x 2000 predictions with memory figures,
is `python benchmarks/stress.py`; its figures are in docs/benchmarks.md.)"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")


def _stress_module():
    from benchmarks import stress

    return stress


def test_threads_share_one_runtime(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    stress = _stress_module()
    args = argparse.Namespace(threads=4, predictions=40, warmup=8, resolution=64, max_growth_mb=50.0)
    report = stress.stress(tiny_multitask_onnx, tmp_path, args)
    assert report["errors"] == 0, report["first_error"]
    assert report["mismatches"] == 0
    assert report["predictions"] == 40 and report["distinct_inputs"] >= 10
    rss = report["rss_mb"]
    assert all(rss[k] > 0 for k in ("start", "middle", "end"))  # /proc/self/status was read
    assert [n for n, _ in report["rss_samples_mb"]] == list(range(4, 41, 4))  # every 10% of the run


def test_stress_counts_mismatches_and_errors(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    """Control: the checker notices a wrong reference and a failing input."""
    import numpy as np

    from david_infer import DavidRuntime

    stress = _stress_module()
    with DavidRuntime(tiny_multitask_onnx, resolution=64) as rt:
        inputs = [np.zeros((20, 30, 3), np.uint8), np.full((20, 30, 3), 200, np.uint8), np.zeros((4, 4), complex)]
        good = rt.predict(inputs[0])
        checker = stress.Stress(rt, inputs, [good, good, good])  # input 1's reference is wrong
        checker.run(6, 3)
    assert (checker.done, checker.mismatches, checker.errors) == (6, 2, 2)
    assert "input 2: InputError" in checker.first_error
