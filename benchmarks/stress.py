"""Load test: one DavidRuntime shared by many threads over thousands of predictions.

Runs the tiny multi-task model (random weights, seed 0; exported to a temporary folder unless
--model is given) on a fixed set of distinct inputs of mixed sizes and forms (arrays of several
dtypes and shapes, PNG and JPEG files). First every distinct input is predicted once on the calling
thread: those results are the reference. Then a threaded warm-up (`--warmup` predictions), then the
measured run: `--predictions` predictions spread over `--threads` threads, prediction i using
input i mod N. Every result is compared bit for bit with the reference of its input.

Reported: throughput, errors, mismatches, and resident memory (VmRSS from /proc/self/status) at
the start (after warm-up), the middle and the end of the measured run (and every 10% of it), with
the growth after warm-up. Each sample is taken after glibc's malloc_trim(0), which returns freed
heap memory to the OS: without it RSS swings by +-50 MB with whatever the eight threads' malloc
arenas happen to keep cached, which says nothing about leaks (the untrimmed start and end are
reported too). Exit status 1 if there was any error or mismatch, or the growth reached --max-growth-mb.

    python benchmarks/stress.py [--threads 8] [--predictions 2000] [--resolution 64] [--json out.json]

Kill and resume (`--kill-resume`): `david-infer predict` on `--images` small images (every --save
kind) is run once cleanly into one folder, then into another folder `--kills` times, each run
killed with SIGKILL at a random moment while it works: once a random number of further inputs
have their completion record (spread so the kills cover the whole job), plus a random delay of
up to one input's time (so the kill falls anywhere in decoding, inference or writing), then once
more to the end. Checked: the final run exits 0; every input has a complete set
(its completion record matches its files, SHA-256 included) byte for byte equal to the clean
run's; no temporary file is left. Exit status 1 otherwise.

    python benchmarks/stress.py --kill-resume [--images 40] [--kills 10] [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from benchmarks.prologue import model_or_tiny  # noqa: E402
from david_infer import DavidRuntime, Prediction  # noqa: E402

MAPS = ("depth", "normal", "foreground")


def _malloc_trim() -> None:
    """Hand freed heap memory back to the OS (glibc), so RSS shows live memory rather than what
    the per-thread malloc arenas happen to keep cached; a no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_mb(trim: bool = False) -> float:
    """Resident memory of this process in MB (VmRSS; Linux), NaN where /proc is missing.
    trim=True first returns freed heap memory to the OS (see _malloc_trim)."""
    if trim:
        _malloc_trim()
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def make_inputs(folder: Path, seed: int = 0) -> List[Any]:
    """Distinct inputs of mixed sizes and forms (arrays and files)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:480, 0:640]
    photo = np.stack([x * 255 // 639, y * 255 // 479, (x * y) % 256], axis=-1).astype(np.uint8)
    photo = np.clip(photo.astype(np.int16) + rng.integers(-20, 21, photo.shape), 0, 255).astype(np.uint8)
    png, jpg = folder / "photo.png", folder / "photo.jpg"
    Image.fromarray(photo[:300, :200]).save(png)
    Image.fromarray(photo).save(jpg, quality=90)
    return [
        photo,  # 480x640 uint8 RGB
        photo[:, :360],  # portrait-ish crop (a view)
        photo[::-1, ::-1],  # negative strides
        photo.mean(axis=2).astype(np.uint8),  # gray
        (photo.astype(np.uint16) * 257)[:200, :500],  # 16-bit
        (photo[:100, :100] / 255.0).astype(np.float32),  # float
        rng.integers(0, 256, (1, 1, 3), dtype=np.uint8),  # 1x1
        rng.integers(0, 256, (3, 700, 3), dtype=np.uint8),  # extreme aspect ratio
        rng.integers(0, 256, (1080, 720, 3), dtype=np.uint8),  # large
        rng.integers(0, 256, (64, 64, 4), dtype=np.uint8),  # RGBA
        png,
        jpg,
    ]


def same(a: Prediction, b: Prediction) -> bool:
    """True when every map of `a` equals `b` exactly."""
    return all(np.array_equal(getattr(a, m), getattr(b, m)) for m in MAPS)


class Stress:
    """Counts results of predictions run from many threads; samples memory at the midpoint."""

    def __init__(self, rt: DavidRuntime, inputs: Sequence[Any], reference: Sequence[Prediction]) -> None:
        self.rt, self.inputs, self.reference = rt, inputs, reference
        self.lock = threading.Lock()
        self.done = self.errors = self.mismatches = 0
        self.first_error: Optional[str] = None
        self.midpoint: Optional[int] = None
        self.rss_middle = float("nan")
        self.sample_every = 0
        self.samples: List[Tuple[int, float]] = []  # (predictions done, RSS MB) during the run

    def one(self, i: int) -> None:
        k = i % len(self.inputs)
        try:
            ok = same(self.rt.predict(self.inputs[k]), self.reference[k])
            failed = False
        except Exception as exc:  # counted and reported, never raised from a worker
            ok, failed = False, True
            with self.lock:
                self.first_error = self.first_error or f"input {k}: {type(exc).__name__}: {exc}"
        with self.lock:
            self.done += 1
            self.errors += failed
            self.mismatches += not ok and not failed
            done = self.done
        if done == self.midpoint:
            self.rss_middle = rss_mb(trim=True)
        if self.sample_every and done % self.sample_every == 0:
            value = self.rss_middle if done == self.midpoint else rss_mb(trim=True)
            with self.lock:
                self.samples.append((done, round(value, 1)))

    def run(self, count: int, threads: int, midpoint: Optional[int] = None, sample_every: int = 0) -> float:
        """Run `count` predictions on `threads` threads; returns the wall time in seconds."""
        self.midpoint, self.sample_every = midpoint, sample_every
        start = time.perf_counter()
        with ThreadPoolExecutor(threads, thread_name_prefix="stress") as pool:
            list(pool.map(self.one, range(count)))
        return time.perf_counter() - start


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model file (default: the tiny multi-task model, exported now)")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--predictions", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200, help="threaded predictions before the start sample")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--max-growth-mb", type=float, default=50.0)
    p.add_argument("--json", help="also write the JSON report to this file")
    p.add_argument("--kill-resume", action="store_true", help="run the kill-and-resume check instead")
    p.add_argument("--images", type=int, default=40, help="--kill-resume: inputs of the run")
    p.add_argument("--kills", type=int, default=10, help="--kill-resume: runs killed with SIGKILL")
    p.add_argument("--seed", type=int, default=0, help="--kill-resume: images and kill moments")
    return p.parse_args(argv)


KILL_KINDS = "depth,normal,foreground,vis,ply"


def _tree(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def kill_resume(model: Path, folder: Path, args: argparse.Namespace) -> Dict[str, Any]:
    """See the module docstring (--kill-resume)."""
    from david_infer.outputs.images import IMAGE_KINDS
    from david_infer.outputs.sets import TEMP_SUFFIX, SetState

    rng = random.Random(args.seed)
    images = folder / "in"
    images.mkdir()
    pixels = np.random.default_rng(args.seed)
    for i in range(args.images):
        h, w = 96 + 8 * (i % 9), 128 + 8 * (i % 7)
        Image.fromarray(pixels.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"img{i:03d}.png")

    def command(out: Path) -> List[str]:
        return [
            sys.executable,
            "-m",
            "david_infer",
            "predict",
            str(images),
            "-m",
            str(model),
            "-o",
            str(out),
            "--resolution",
            str(args.resolution),
            "--save",
            KILL_KINDS,
            "--no-progress",
        ]

    t0 = time.perf_counter()
    clean = subprocess.run(command(folder / "clean"), capture_output=True, timeout=900)
    clean_s = time.perf_counter() - t0
    if clean.returncode != 0:
        raise RuntimeError(f"the clean run failed: {clean.stderr.decode()[-2000:]}")
    out = folder / "out"
    names = [f"img{i:03d}" for i in range(args.images)]
    kinds = KILL_KINDS.split(",")
    per_input = clean_s / args.images
    kills = []

    def records() -> int:
        return len(list(out.glob("*.done.json"))) if out.exists() else 0

    for left in range(args.kills, 0, -1):
        before = records()
        target = min(args.images - 1, before + rng.randint(1, max(1, 2 * (args.images - before) // (left + 1))))
        extra = rng.uniform(0.0, per_input)
        start = time.perf_counter()
        proc = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and records() < target and time.perf_counter() - start < 600:
            time.sleep(0.01)
        time.sleep(extra)
        finished = proc.poll() is not None
        if not finished:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        done = sum(IMAGE_KINDS.set(out, n, kinds).is_complete() for n in names)
        temporaries = len(list(out.rglob(f"*{TEMP_SUFFIX}")))
        partial = sum(IMAGE_KINDS.set(out, n, kinds).status().state is SetState.PARTIAL for n in names)
        kills.append(
            {
                "after_s": round(time.perf_counter() - start, 2),
                "complete_before": before,
                "finished_before_kill": finished,
                "complete_after": done,
                "partial_sets_after": partial,
                "temporaries_after": temporaries,
            }
        )
    final = subprocess.run(command(out), capture_output=True, timeout=900)
    complete = sum(IMAGE_KINDS.set(out, n, kinds).is_complete(verify=True) for n in names)
    got, want = _tree(out), _tree(folder / "clean")
    differing = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    left = sorted(str(p.relative_to(out)) for p in out.rglob(".*"))
    return {
        "model": str(model),
        "images": args.images,
        "kinds": kinds,
        "resolution": args.resolution,
        "clean_run_s": round(clean_s, 2),
        "kills": kills,
        "killed_mid_run": sum(not k["finished_before_kill"] for k in kills),
        "final_rc": final.returncode,
        "final_summary": final.stdout.decode().strip(),
        "complete_sets": complete,
        "files_differing_from_clean_run": differing,
        "temporaries_left": left,
        "ok": final.returncode == 0 and complete == args.images and not differing and not left,
    }


def print_kill_table(r: Dict[str, Any]) -> None:
    print(
        f"{r['images']} images, --save {','.join(r['kinds'])}, resolution {r['resolution']}; "
        f"clean run {r['clean_run_s']} s"
    )
    print("| kill | killed after | complete sets before / after | sets left half-written | temporary files left |")
    print("|---:|---:|---:|---:|---:|")
    for i, k in enumerate(r["kills"], 1):
        after = "finished first" if k["finished_before_kill"] else f"{k['after_s']} s"
        print(
            f"| {i} | {after} | {k['complete_before']} / {k['complete_after']} | {k['partial_sets_after']} | "
            f"{k['temporaries_after']} |"
        )
    print(
        f"final run: exit {r['final_rc']} ({r['final_summary']}); complete sets {r['complete_sets']} / "
        f"{r['images']}; files differing from the clean run: {len(r['files_differing_from_clean_run'])}; "
        f"temporary files left: {len(r['temporaries_left'])}"
    )


def stress(model: Path, folder: Path, args: argparse.Namespace) -> Dict[str, Any]:
    rss_before = rss_mb()
    with DavidRuntime(model, resolution=args.resolution) as rt:
        inputs = make_inputs(folder)
        t0 = time.perf_counter()
        reference = [rt.predict(image) for image in inputs]
        single_s = (time.perf_counter() - t0) / len(inputs)
        stress = Stress(rt, inputs, reference)
        stress.run(args.warmup, args.threads)
        warm = (stress.errors, stress.mismatches)
        stress.errors = stress.mismatches = stress.done = 0
        gc.collect()
        rss_start_raw, rss_start = rss_mb(), rss_mb(trim=True)
        wall = stress.run(
            args.predictions, args.threads, midpoint=args.predictions // 2, sample_every=max(1, args.predictions // 10)
        )
        gc.collect()
        rss_end_raw, rss_end = rss_mb(), rss_mb(trim=True)
    return {
        "model": str(model),
        "resolution": args.resolution,
        "threads": args.threads,
        "predictions": args.predictions,
        "warmup_predictions": args.warmup,
        "distinct_inputs": len(inputs),
        "wall_s": round(wall, 2),
        "throughput_per_s": round(args.predictions / wall, 1),
        "single_thread_ms_per_input": round(single_s * 1000, 1),
        "errors": stress.errors + warm[0],
        "mismatches": stress.mismatches + warm[1],
        "first_error": stress.first_error,
        "rss_mb": {
            "before_load": round(rss_before, 1),
            "start": round(rss_start, 1),
            "middle": round(stress.rss_middle, 1),
            "end": round(rss_end, 1),
        },
        "rss_growth_mb": round(rss_end - rss_start, 1),
        "max_growth_mb": args.max_growth_mb,
        "rss_samples_mb": sorted(stress.samples),
        "rss_untrimmed_mb": {"start": round(rss_start_raw, 1), "end": round(rss_end_raw, 1)},
        "cpu_count": os.cpu_count(),
    }


def print_table(r: Dict[str, Any]) -> None:
    rss = r["rss_mb"]
    rows = [
        (
            "threads x predictions",
            f"{r['threads']} x {r['predictions']} (+{r['warmup_predictions']} warm-up), "
            f"{r['distinct_inputs']} distinct inputs, resolution {r['resolution']}",
        ),
        ("wall time", f"{r['wall_s']} s"),
        ("throughput", f"{r['throughput_per_s']} predictions/s"),
        ("single-thread reference", f"{r['single_thread_ms_per_input']} ms per input"),
        ("errors", str(r["errors"]) + (f" (first: {r['first_error']})" if r["first_error"] else "")),
        ("results != single-threaded", str(r["mismatches"])),
        (
            "RSS before load / start / middle / end",
            f"{rss['before_load']} / {rss['start']} / {rss['middle']} / {rss['end']} MB",
        ),
        ("RSS growth after warm-up", f"{r['rss_growth_mb']} MB (limit {r['max_growth_mb']} MB)"),
        ("RSS every 10% of the run", " ".join(f"{v:g}" for _, v in r["rss_samples_mb"]) + " MB"),
        ("RSS untrimmed start / end", f"{r['rss_untrimmed_mb']['start']} / {r['rss_untrimmed_mb']['end']} MB"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = model_or_tiny(args.model, Path(tmp))
        if args.kill_resume:
            report = kill_resume(model, Path(tmp), args)
            print_kill_table(report)
            print(json.dumps(report, indent=2))
            if args.json:
                Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
            return 0 if report["ok"] else 1
        report = stress(model, Path(tmp), args)
    print_table(report)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    failed = report["errors"] or report["mismatches"] or not report["rss_growth_mb"] < args.max_growth_mb
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
