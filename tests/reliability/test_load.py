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


@pytest.mark.parametrize("attempt", range(4))
def test_close_waits_for_calls_in_flight_and_refuses_later_ones(tiny_multitask_onnx: Path, attempt: int) -> None:
    """8 threads predicting while another closes the runtime: every call returns its prediction
    or raises the typed "runtime is closed" error (the old code raised a raw AttributeError in
    1-2 calls of 2 runs in 4), and close() returns only after the calls it let finish."""
    import threading
    import time

    import numpy as np

    from david_infer import DavidRuntime
    from david_infer.errors import ModelError

    runtime = DavidRuntime(tiny_multitask_onnx, resolution=64, threads=2)
    image = np.random.default_rng(attempt).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    finished: list = []  # end time of each successful call
    errors: list = []
    lock = threading.Lock()
    started = threading.Barrier(9)

    def work() -> None:
        started.wait()
        for _ in range(200):
            try:
                runtime.predict(image)
                with lock:
                    finished.append(time.monotonic())
            except Exception as exc:
                with lock:
                    errors.append(exc)
                return

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(0.05 * (attempt + 1))
    runtime.close()
    closed = time.monotonic()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert len(errors) == 8 and finished, (len(errors), len(finished))  # each thread ran, then was refused
    assert all(isinstance(e, ModelError) and "the runtime is closed" in str(e) for e in errors), errors
    assert max(finished) <= closed  # nothing completed after close() returned


def test_closing_the_runtime_under_an_open_imap_fails_the_rest_typed(tiny_multitask_onnx: Path) -> None:
    import numpy as np

    from david_infer import DavidRuntime
    from david_infer.errors import ModelError

    runtime = DavidRuntime(tiny_multitask_onnx, resolution=64, threads=2)
    images = [np.full((40, 48, 3), v, np.uint8) for v in range(0, 240, 10)]
    stream = runtime.imap(images, batch_size=2)
    outcomes = [next(stream)[1]]
    runtime.close()
    outcomes.extend(outcome for _, outcome in stream)
    assert len(outcomes) == len(images)
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert errors and all(isinstance(e, ModelError) and "the runtime is closed" in str(e) for e in errors), errors
