"""benchmarks/gpu_check.py without a GPU: its step / resume bookkeeping, its tables, and the GPU
test gate of tests/conftest.py. The GPU steps themselves run only on a GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from benchmarks import gpu_check  # noqa: E402
from benchmarks.gpu_check import Checklist, latency_stats, markdown  # noqa: E402
from david_infer.metrics import compare  # noqa: E402
from tests.support import REPO as ROOT


def _saved(out: Path) -> Dict[str, Any]:
    return json.loads((out / "gpu_check.json").read_text())


def test_results_are_written_after_every_step(tmp_path: Path) -> None:
    check = Checklist(tmp_path)
    seen: List[Dict[str, Any]] = []

    def second() -> Dict[str, Any]:
        seen.append(_saved(tmp_path)["steps"])  # what a timeout at this moment would leave
        return {"n": 2}

    assert check.run("first", lambda: {"n": 1}) == {"n": 1}
    check.run("second", second)
    assert seen[0]["first"]["status"] == "ok" and seen[0]["first"]["result"] == {"n": 1}
    assert seen[0]["second"]["status"] == "running"
    steps = _saved(tmp_path)["steps"]
    assert list(steps) == ["first", "second"] and steps["second"]["result"] == {"n": 2}
    assert "| second | ok |" in (tmp_path / "gpu_check.md").read_text()


def test_a_failed_step_is_recorded_and_the_rest_goes_on(tmp_path: Path) -> None:
    check = Checklist(tmp_path)

    def broken() -> None:
        raise RuntimeError("TensorRT could not parse the graph")

    check.run("engine", broken)
    check.run("parity", lambda: {"passed": True}, needs=["engine"])
    check.run("bench", lambda: {"fps": 1.0})
    steps = _saved(tmp_path)["steps"]
    assert steps["engine"]["status"] == "failed"
    assert steps["engine"]["error"] == "RuntimeError: TensorRT could not parse the graph"
    assert steps["engine"]["at"].startswith("test_gpu_check.py:")
    assert steps["parity"] == {"status": "skipped", "error": "needs engine (failed)"}
    assert steps["bench"]["status"] == "ok"
    assert not check.passed and _saved(tmp_path)["passed"] is False


def test_rerun_skips_finished_steps_and_retries_failed_ones(tmp_path: Path) -> None:
    calls: List[str] = []

    def step(name: str, fail: bool) -> Any:
        def fn() -> Dict[str, str]:
            calls.append(name)
            if fail:
                raise ValueError(name)
            return {"name": name}

        return fn

    first = Checklist(tmp_path)
    first.run("a", step("a", False))
    first.run("b", step("b", True))
    second = Checklist(tmp_path)
    assert second.run("a", step("a", False)) == {"name": "a"}  # from the first run's results
    second.run("b", step("b", False))
    assert calls == ["a", "b", "b"]
    saved = _saved(tmp_path)
    assert saved["steps"]["b"]["status"] == "ok" and len(saved["runs"]) == 2 and saved["passed"] is True


def test_a_step_that_died_is_not_retried_without_asking(tmp_path: Path) -> None:
    def killed() -> None:
        raise KeyboardInterrupt  # like a timeout's kill: not caught, the JSON keeps "running"

    with pytest.raises(KeyboardInterrupt):
        Checklist(tmp_path).run("build", killed)
    assert _saved(tmp_path)["steps"]["build"]["status"] == "running"
    calls: List[int] = []
    rerun = Checklist(tmp_path)
    assert rerun.status("build") == "crashed"
    rerun.run("build", lambda: calls.append(1))
    assert calls == [] and "previous run stopped inside this step" in _saved(tmp_path)["steps"]["build"]["error"]
    Checklist(tmp_path, retry_crashed=True).run("build", lambda: calls.append(1) or {"ok": 1})
    assert calls == [1] and _saved(tmp_path)["steps"]["build"]["status"] == "ok"


def test_budget_defers_the_remaining_steps(tmp_path: Path) -> None:
    now = [0.0]

    def slow() -> Dict[str, int]:
        now[0] += 100.0
        return {"took": 100}

    check = Checklist(tmp_path, budget_s=150.0, clock=lambda: now[0])
    check.run("one", slow)
    check.run("two", slow)  # started at 100 s: allowed
    check.run("three", slow)  # 200 s used: deferred
    steps = _saved(tmp_path)["steps"]
    assert [steps[n]["status"] for n in ("one", "two", "three")] == ["ok", "ok", "deferred"]
    assert "200 s of the 150 s budget" in steps["three"]["error"] and check.stopped_by_budget
    again = Checklist(tmp_path, budget_s=150.0, clock=lambda: now[0])
    again.run("three", slow)
    assert _saved(tmp_path)["steps"]["three"]["status"] == "ok"


def test_fresh_forgets_results(tmp_path: Path) -> None:
    Checklist(tmp_path).run("a", lambda: {"x": 1})
    calls: List[int] = []
    Checklist(tmp_path, fresh=True).run("a", lambda: calls.append(1) or {"x": 2})
    assert calls == [1] and len(_saved(tmp_path)["runs"]) == 1


def test_latency_stats() -> None:
    stats = latency_stats([0.010] * 9 + [0.100], batch=8)
    assert stats["p50_ms"] == pytest.approx(10.0) and stats["images_per_s"] == pytest.approx(800.0)
    assert stats["p99_ms"] > 90.0 and stats["runs"] == 10 and stats["mean_ms"] == pytest.approx(19.0)


def test_markdown_tables_from_real_parity_results(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ref = {
        "depth": rng.random((1, 1, 8, 8)),
        "normal": rng.standard_normal((1, 3, 8, 8)),
        "foreground": rng.random((1, 1, 8, 8)),
    }
    good = compare(ref, ref, precision="fp16")
    bad = compare({k: v * 0.25 for k, v in ref.items()}, ref, precision="fp16")
    check = Checklist(tmp_path)
    for name, parity in (("parity:base:tensorrt", good), ("parity:base:ort-cuda", bad)):
        check.run(
            name,
            lambda p=parity: {
                "passed": p.passed,
                "reasons": p.reasons,
                "points": [
                    {
                        "batch": 1,
                        "height": 8,
                        "width": 8,
                        "passed": p.passed,
                        "reasons": p.reasons,
                        "metrics": p.metrics,
                    }
                ],
            },
        )
    check.run("bench:base:tensorrt:engine", lambda: {"batches": [latency_stats([0.004] * 10, 1)]})
    text = (tmp_path / "gpu_check.md").read_text()
    assert "| base:tensorrt | b1 8x8 | yes |" in text and "| base:ort-cuda | b1 8x8 | NO |" in text
    assert "FAILED: depth: rmse_vs_spread" in text
    assert "| base:tensorrt:engine | 1 | 250.0 | 4.00 |" in text
    assert not check.passed
    assert markdown(_saved(tmp_path)) == text


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert gpu_check.main(["--models", "huge", "--out", str(tmp_path)]) == 2
    assert "unknown ['huge']" in capsys.readouterr().err
    assert not (tmp_path / "gpu_check.json").exists()


def test_the_gpu_gate_fails_skips_under_david_infer_gpu(tmp_path: Path) -> None:
    from tests.conftest import gpu_missing_reason

    if not gpu_missing_reason():
        pytest.skip("a GPU is visible: the gate lets GPU tests run here")
    target = "tests/backends/test_tensorrt.py::test_engine_build_and_run_matches_onnxruntime"
    env = {k: v for k, v in os.environ.items() if k != "DAVID_INFER_GPU"}
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", target]
    skipped = subprocess.run(base, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout
    strict = subprocess.run(
        base, cwd=ROOT, env={**env, "DAVID_INFER_GPU": "1"}, capture_output=True, text=True, timeout=120
    )
    assert strict.returncode == 1 and "DAVID_INFER_GPU=1 but" in strict.stdout and "1 error" in strict.stdout


def _tiny_work(tmp_path: Path, fp32: Path, fp16: Path) -> Path:
    import shutil

    work = tmp_path / "work"
    work.mkdir()
    for src, precision in ((fp32, "fp32"), (fp16, "fp16")):
        shutil.copy(src, work / f"tiny-{precision}.onnx")
        shutil.copy(src.with_suffix(".json"), work / f"tiny-{precision}.json")
    return work


def test_cpu_backend_runs_the_reference_parity_and_bench_steps(
    tiny_multitask_onnx: Path, tiny_fp16_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same steps a GPU run takes, on ONNX Runtime's CPU provider and smaller sizes: exports
    reused, the FP16 graph passes parity at every point, timings recorded."""
    for name, value in (
        ("BENCH_MAX_S", 0.0),
        ("BENCH_MIN_RUNS", 2),
        ("BENCH_SIZE", 64),
        ("PARITY_POINTS", [(1, 64, 64), (8, 64, 64), (2, 80, 48)]),
    ):
        monkeypatch.setattr(gpu_check, name, value)
    work = _tiny_work(tmp_path, tiny_multitask_onnx, tiny_fp16_onnx)
    check = Checklist(tmp_path / "out")
    gpu_check.run_all(check, work, ["tiny"], [gpu_check.CPU_BACKEND])
    steps = _saved(tmp_path / "out")["steps"]
    assert steps["export:tiny-fp32"]["result"]["note"] == "reused from an earlier run"
    assert steps["engine:tiny"]["status"] == "skipped" and steps["install"]["status"] == "failed"
    parity = steps["parity:tiny:ort-cpu"]["result"]
    assert parity["passed"], parity["reasons"]
    assert [(p["batch"], p["height"], p["width"]) for p in parity["points"]] == gpu_check.PARITY_POINTS
    for mode in ("engine", "predict_batch"):
        batches = steps[f"bench:tiny:ort-cpu:{mode}"]["result"]["batches"]
        assert [b["batch"] for b in batches] == list(gpu_check.BENCH_BATCHES) and all(
            b["images_per_s"] > 0 for b in batches
        )
    text = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| tiny:ort-cpu | b8 64x64 | yes |" in text and "| tiny:ort-cpu:predict_batch | 8 |" in text


def test_gpu_torch_check_runs_to_completion_on_the_cpu(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    """benchmarks/gpu_torch_check.py --cpu from a plain checkout (PYTHONPATH=. only), every step."""
    import shutil

    work = tmp_path / "out" / "work"
    work.mkdir(parents=True)
    for suffix in (".onnx", ".json"):  # the session's tiny export stands in for the script's own
        shutil.copy(tiny_multitask_onnx.with_suffix(suffix), work / f"tiny-fp32{suffix}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_torch_check.py"),
            "--cpu",
            "--budget",
            "300",
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        env={**env, "PYTHONPATH": "."},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads((tmp_path / "out" / "gpu_torch_check.json").read_text())
    assert state["passed"] and all(r["status"] == "ok" for r in state["steps"].values())
    parity = state["steps"]["parity:tiny:eager"]["result"]
    assert {p["precision"] for p in parity["points"]} == {"fp32", "fp16", "bf16"}
    e2e = state["steps"]["e2e:tiny"]["result"]
    assert e2e["frames"]["torch_stages_images_per_s"] > 0 and e2e["photos"]["model_only_images_per_s"] > 0
    assert "| parity:tiny:eager | ok |" in (tmp_path / "out" / "gpu_torch_check.md").read_text()
