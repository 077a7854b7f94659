"""The C++ host's model call against ONNX Runtime's in Python, on the same pre/post graph.

Builds cpp/ with CMake (or takes --build DIR), exports the tiny multi-task model (random weights)
and wraps it with `export --prepost` (or takes --model), then for each photo size runs
`david_predict --timings` over --runs copies of the photo in one process and ONNX Runtime's
Python `InferenceSession.run` --runs times, both with --threads intra-op threads, and reports the
median milliseconds of the model call (the C++ side's `predict`: channel handling, Run, copies
out) and of the C++ side's decode and write steps.

    python benchmarks/cpp_host.py [--runs 5] [--threads 1] [--model X.onnx] [--build DIR] [--no-docs]

Results: benchmarks/results/cpp_host.json and .md, and the table in docs/benchmarks.md (unless
--no-docs).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from benchmarks.prologue import RESULTS, ROOT, replace_doc_section

SIZES = {"512x512": (512, 512), "480x273": (480, 273), "2160x3840": (2160, 3840)}  # (H, W)
TIMINGS = re.compile(r"\(decode ([\d.]+) ms, predict ([\d.]+) ms, write ([\d.]+) ms\)")


def build(folder: Path) -> Path:
    subprocess.run(
        ["cmake", "-S", str(ROOT / "cpp"), "-B", str(folder), f"-DPython3_EXECUTABLE={sys.executable}"],
        check=True,
        capture_output=True,
    )
    subprocess.run(["cmake", "--build", str(folder), "-j", "2"], check=True, capture_output=True)
    return folder / "david_predict"


def tiny_prepost(folder: Path) -> Path:
    from david_infer.export import export_onnx
    from david_infer.export.prepost import wrap_prepost

    export_onnx("tiny", "multitask", folder / "tiny.onnx", seed=0)
    wrap_prepost(folder / "tiny.onnx", folder / "tiny-prepost.onnx", channel_order="rgb", resolution=384)
    return folder / "tiny-prepost.onnx"


def photo(h: int, w: int) -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((w, h), Image.Resampling.BICUBIC))


def measure(exe: Path, model: Path, rgb: np.ndarray, runs: int, threads: int, work: Path) -> dict[str, float]:
    import onnxruntime as ort

    images = []
    for i in range(runs):
        images.append(work / f"photo{i}.png")
        Image.fromarray(rgb).save(images[-1])
    (work / "out").mkdir(exist_ok=True)
    done = subprocess.run(
        [str(exe), str(model), *map(str, images), "-o", str(work / "out"), "--threads", str(threads), "--timings"],
        check=True,
        capture_output=True,
        text=True,
    )
    steps = np.array([[float(v) for v in TIMINGS.search(line).groups()] for line in done.stdout.splitlines()])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    feed = {"image": np.ascontiguousarray(rgb[None])}
    python_ms = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        python_ms.append((time.perf_counter() - start) * 1000)
    decode, predict, write = (statistics.median(steps[:, i]) for i in range(3))
    return {
        "cpp_decode_ms": decode,
        "cpp_predict_ms": predict,
        "cpp_write_ms": write,
        "python_run_ms": statistics.median(python_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", type=Path, help="a pre/post graph (default: the tiny multi-task, wrapped)")
    parser.add_argument("--build", type=Path, help="an existing build folder of cpp/")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md as it is")
    args = parser.parse_args()
    lines = [
        "| photo (H x W) | C++ predict ms | Python ORT run ms | C++ decode ms | C++ write ms |",
        "|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        exe = args.build / "david_predict" if args.build else build(work / "build")
        model = args.model or tiny_prepost(work)
        for name, (h, w) in SIZES.items():
            (work / name).mkdir()
            row = {"photo": name, **measure(exe, model, photo(h, w), args.runs, args.threads, work / name)}
            rows.append(row)
            lines.append(
                f"| {name} | {row['cpp_predict_ms']:.1f} | {row['python_run_ms']:.1f} | "
                f"{row['cpp_decode_ms']:.1f} | {row['cpp_write_ms']:.1f} |"
            )
            print(lines[-1], flush=True)
    command = "python benchmarks/cpp_host.py " + " ".join(sys.argv[1:])
    text = "\n".join(
        [
            f"Medians of {args.runs} runs, {args.threads} intra-op thread(s), "
            f"{'the tiny multi-task model wrapped at 384' if not args.model else args.model.name}: "
            f"`{command.strip()}`",
            "",
            *lines,
        ]
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cpp_host.json").write_text(
        json.dumps({"command": command, "runs": args.runs, "threads": args.threads, "rows": rows}, indent=1) + "\n"
    )
    (RESULTS / "cpp_host.md").write_text(text + "\n")
    if not args.no_docs:
        replace_doc_section("cpp-host", text, heading="## C++ host")


if __name__ == "__main__":
    main()
