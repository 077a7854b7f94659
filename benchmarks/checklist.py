"""What the GPU checks share (benchmarks/gpu_check.py, benchmarks/gpu_torch_check.py): resumable
steps recorded in JSON + Markdown after every step (`Checklist`), latency statistics, timed calls,
the export of a model in a subprocess, and running from a plain checkout (`use_source_tree`).
No GPU needed; tested on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from david_infer.files import atomic_write  # noqa: E402

MODELS = {"tiny": ("tiny", "multitask"), "base": ("base", "multitask"), "large": ("large", "multitask")}


class Checklist:
    """Ordered steps whose state lives in OUT/gpu_check.json (and a Markdown view), saved after
    every step. A step is a name and a function returning a JSON-able result."""

    def __init__(
        self,
        out: Path,
        fresh: bool = False,
        retry_crashed: bool = False,
        budget_s: Optional[float] = None,
        clock: Callable[[], float] = time.perf_counter,
        title: str = "GPU check",
        stem: str = "gpu_check",
    ) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.json_path, self.md_path = self.out / f"{stem}.json", self.out / f"{stem}.md"
        self.retry_crashed, self.budget_s, self.clock, self.title = retry_crashed, budget_s, clock, title
        self.start = clock()
        self.stopped_by_budget = False
        self.state: Dict[str, Any] = {"runs": [], "steps": {}}
        if self.json_path.exists() and not fresh:
            self.state = json.loads(self.json_path.read_text())
            for rec in self.state["steps"].values():
                if rec["status"] == "running":  # the previous run died inside it
                    rec.update(status="crashed", error="the previous run stopped inside this step (crash or timeout)")
        self.state["runs"].append({"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())})
        self.save()

    @property
    def steps(self) -> Dict[str, Dict[str, Any]]:
        return self.state["steps"]

    def status(self, name: str) -> str:
        return self.steps.get(name, {}).get("status", "not run")

    def result(self, name: str) -> Any:
        return self.steps.get(name, {}).get("result")

    def run(self, name: str, fn: Callable[[], Any], needs: Sequence[str] = ()) -> Any:
        """Run `fn` as step `name` unless it finished before; its result, or None."""
        rec = self.steps.get(name)
        if rec and rec["status"] == "ok":
            return rec["result"]
        if rec and rec["status"] == "crashed" and not self.retry_crashed:
            return None
        missing = [n for n in needs if self.status(n) != "ok"]
        if missing:
            self._record(name, status="skipped", error=f"needs {missing[0]} ({self.status(missing[0])})")
            return None
        elapsed = self.clock() - self.start
        if self.budget_s is not None and elapsed >= self.budget_s:
            self.stopped_by_budget = True
            self._record(
                name,
                status="deferred",
                error=f"not started: {elapsed:.0f} s of the {self.budget_s:.0f} s budget used; rerun to continue",
            )
            return None
        self._record(name, status="running")
        t = self.clock()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - a failed step is a result; the script goes on
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self._record(
                name,
                status="failed",
                seconds=round(self.clock() - t, 2),
                error=f"{type(exc).__name__}: {exc}",
                at=f"{Path(where.filename).name}:{where.lineno}",
            )
            print(f"[{name}] FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return None
        self._record(name, status="ok", seconds=round(self.clock() - t, 2), result=result)
        print(f"[{name}] ok ({self.steps[name]['seconds']:.1f} s)", flush=True)
        return result

    def _record(self, name: str, **fields: Any) -> None:
        self.steps[name] = fields
        self.save()

    def save(self) -> None:
        self.state["elapsed_s_this_run"] = round(self.clock() - self.start, 1)
        self.state["passed"] = self.passed
        text = json.dumps(self.state, indent=2, default=_jsonable) + "\n"
        atomic_write(self.json_path, lambda tmp: tmp.write_text(text))
        md = markdown(self.state, self.title)
        atomic_write(self.md_path, lambda tmp: tmp.write_text(md))

    def finish(self) -> int:
        """Save the results, say where they are, and return the exit status: 0 passed, 1 not,
        3 stopped by the time budget (rerun to go on)."""
        self.save()
        print(f"results: {self.md_path} and {self.json_path}")
        if self.stopped_by_budget:
            return 3
        return 0 if self.passed else 1

    @property
    def passed(self) -> bool:
        """Every step finished and every parity result passed."""
        steps = self.state["steps"]
        return (
            bool(steps)
            and all(r["status"] == "ok" for r in steps.values())
            and all(r["result"].get("passed", True) for r in steps.values() if isinstance(r.get("result"), dict))
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def markdown(state: Dict[str, Any], title: str = "GPU check") -> str:
    """The steps, the parity points and the timings as Markdown tables."""
    steps = state["steps"]
    lines = [
        f"# {title}",
        "",
        f"Runs: {', '.join(r['started'] for r in state['runs'])}; "
        f"overall: {'PASS' if state.get('passed') else 'not passed'}.",
        "",
        "| step | status | seconds | note |",
        "|---|---|---:|---|",
    ]
    for name, rec in steps.items():
        note = rec.get("error", "")
        result = rec.get("result")
        if isinstance(result, dict) and "passed" in result:
            note = "passed" if result["passed"] else "FAILED: " + "; ".join(result.get("reasons", [])[:3])
        lines.append(f"| {name} | {rec['status']} | {rec.get('seconds', '')} | {str(note).replace('|', '/')[:300]} |")
    parity = [(n, r["result"]) for n, r in steps.items() if n.startswith("parity:") and r.get("result")]
    if parity:
        lines += [
            "",
            "| parity | point | passed | depth RMSE/spread | depth AbsRel | normal angle mean / p99 (deg) | "
            "foreground MAE / IoU | worst max abs / range |",
            "|---|---|---|---:|---:|---:|---:|---:|",
        ]
        for name, res in parity:
            for p in res["points"]:
                m = p.get("metrics", {})
                d, nrm, f = m.get("depth", {}), m.get("normal", {}), m.get("foreground", {})
                worst = max((o.get("max_abs_vs_range", 0.0) for o in m.values()), default=float("nan"))
                lines.append(
                    f"| {name[7:]} | b{p['batch']} {p['height']}x{p['width']} | {'yes' if p['passed'] else 'NO'} | "
                    f"{_fmt(d.get('rmse_vs_spread'))} | {_fmt(d.get('abs_rel_aligned'))} | "
                    f"{_fmt(nrm.get('angle_mean_deg'))} / {_fmt(nrm.get('angle_p99_deg'))} | "
                    f"{_fmt(f.get('mae'))} / {_fmt(f.get('iou_05'))} | {_fmt(worst)} |"
                    + (f" {p['error']}" if p.get("error") else "")
                )
    bench = [(n, r["result"]) for n, r in steps.items() if n.startswith("bench:") and r.get("result")]
    if bench:
        lines += [
            "",
            "| bench | batch | images/s | p50 ms | p90 ms | p99 ms | runs |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, res in bench:
            for b in res["batches"]:
                lines.append(
                    f"| {name[6:]} | {b['batch']} | {b['images_per_s']:.1f} | {b['p50_ms']:.2f} | "
                    f"{b['p90_ms']:.2f} | {b['p99_ms']:.2f} | {b['runs']} |"
                )
    return "\n".join(lines) + "\n"


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.3g}"


def latency_stats(seconds: Sequence[float], batch: int) -> Dict[str, float]:
    """Images/s (from the median) and latency percentiles in milliseconds of timed runs."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    return {
        "batch": batch,
        "runs": int(ms.size),
        "images_per_s": batch / (p50 / 1e3),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "mean_ms": float(ms.mean()),
    }


BENCH_MAX_S = 8.0  # timed seconds per figure (after at least BENCH_MIN_RUNS runs)
BENCH_MIN_RUNS = 10


def time_calls(
    call: Callable[[], Any], warmup: int = 3, min_runs: Optional[int] = None, max_s: Optional[float] = None
) -> List[float]:
    """Seconds per call after `warmup` calls: at least `min_runs`, then until `max_s` is spent."""
    for _ in range(warmup):
        call()
    max_s = BENCH_MAX_S if max_s is None else max_s
    min_runs = BENCH_MIN_RUNS if min_runs is None else min_runs
    times: List[float] = []
    spent = 0.0
    while len(times) < min_runs or (spent < max_s and len(times) < 1000):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
        spent += times[-1]
    return times


def step_export(work: Path, model: str, precision: str) -> Dict[str, Any]:
    """One export in a subprocess (torch stays out of this process; a crash stays in the child)."""
    variant, task = MODELS[model]
    path = work / f"{model}-{precision}.onnx"
    if path.exists() and path.with_suffix(".json").exists():
        return {"path": str(path), "seconds": 0.0, "note": "reused from an earlier run"}
    code = (
        "import sys; sys.path.insert(0, sys.argv[5]); import checklist; "
        "from david_infer.export import export_onnx; "
        "export_onnx(sys.argv[1], sys.argv[2], sys.argv[3], seed=0, precision=sys.argv[4])"
    )
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, variant, task, str(path), precision, str(ROOT / "benchmarks")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    if done.returncode != 0:
        raise RuntimeError(f"export failed (exit {done.returncode}): {done.stderr.strip()[-800:]}")
    return {"path": str(path), "seconds": round(time.perf_counter() - t, 1), "mb": round(path.stat().st_size / 1e6, 1)}
