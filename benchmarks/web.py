"""The browser page against ONNX Runtime in Python, on the same pixels-to-maps graph, in one run.

    python benchmarks/web.py                         # the tiny multi-task model, exported with --prepost
    python benchmarks/web.py --model prepost.onnx --photo person.jpg --runs 10

Browser: `david-infer web` on 127.0.0.1, headless Chromium (the system's, through Playwright), the
page forced to WebAssembly with 2 threads (`?backend=wasm&threads=2`). Python: an
`onnxruntime.InferenceSession` with 2 intra-op threads fed the same pixels (decoded by Pillow).

- time to first result, browser: from navigation to the first maps on the page (page, ONNX Runtime
  Web and model downloaded from the local server, session built, photo decoded and run, maps drawn),
  with an empty browser cache and again with the model in the browser's cache;
- time to first result, Python: session built from the file + the first run;
- per image: the median of `--runs` model runs on the photo after the first (the page's own
  `session.run` time; `InferenceSession.run` in Python).

Writes benchmarks/results/web.json and the table into docs/browser.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from benchmarks.prologue import RESULTS, ROOT, replace_doc_section  # noqa: E402
from david_infer.benchmark import machine, synthetic_photo  # noqa: E402
from david_infer.webapp import describe_model  # noqa: E402
from tests.support.web_driver import PageServerProcess, give_photo, launch_chromium, open_page  # noqa: E402

THREADS = 2
DOC = ROOT / "docs" / "browser.md"


def default_photo() -> np.ndarray:
    """scikit-image's astronaut (a person, 512x512), or a synthetic 640x480 picture without scikit-image."""
    try:
        from skimage import data

        return data.astronaut()
    except ImportError:
        return synthetic_photo(480, 640)


def export_tiny(folder: Path, resolution: int) -> Path:
    """The tiny multi-task model (random weights) exported as one pixels-to-maps graph."""
    from david_infer.export import export_onnx
    from david_infer.export.prepost import wrap_prepost

    network, path = folder / "tiny.onnx", folder / "tiny-prepost.onnx"
    export_onnx("tiny", "multitask", network, seed=0)
    wrap_prepost(network, path, resolution=resolution)
    return path


def drag_light(page: Any, u: float, v: float) -> None:
    """Drag on the relit picture to the point (u, v) in [0, 1] from its top left (moves the light)."""
    box = page.locator("#relit").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + u * box["width"], box["y"] + v * box["height"], steps=4)
    page.mouse.up()


def browser_times(model: Path, photo: Path, runs: int, screenshot: Optional[Path] = None) -> Dict[str, Any]:
    from playwright.sync_api import sync_playwright

    url_query = f"?backend=wasm&threads={THREADS}"
    with PageServerProcess(model) as server, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context(viewport={"width": 1400, "height": 640})
        visits = []
        for _ in ("empty cache", "model cached"):
            page = open_page(context.new_page(), server.url + url_query)
            give_photo(page, photo)
            timings = page.evaluate(
                "() => ({...david.timings, cached: david.cached, first_run_ms: david.result.ms,"
                " backend: david.backend, threads: david.threads})"
            )
            visits.append(timings)
            if len(visits) == 1:
                per_image = page.evaluate("(n) => david.timeRuns(n)", runs)
                version = page.evaluate("() => navigator.userAgent")
                if screenshot:
                    drag_light(page, 0.15, 0.25)
                    page.screenshot(path=str(screenshot), full_page=True)
            page.close()
        browser.close()
    assert [v["cached"] for v in visits] == [False, True], visits
    return {
        "first_result_ms": visits[0]["firstResult"],
        "first_result_cached_ms": visits[1]["firstResult"],
        "model_loaded_ms": visits[0]["loaded"],
        "model_loaded_cached_ms": visits[1]["loaded"],
        "first_run_ms": visits[0]["first_run_ms"],
        "per_image_ms": statistics.median(per_image),
        "per_image_runs_ms": per_image,
        "backend": visits[0]["backend"],
        "threads": visits[0]["threads"],
        "user_agent": version,
    }


def python_times(model: Path, photo: Path, runs: int) -> Dict[str, Any]:
    import onnxruntime as ort

    rgb = np.asarray(Image.open(photo).convert("RGB"))
    pixels = np.ascontiguousarray(rgb[..., ::-1] if describe_model(model).channel_order == "bgr" else rgb)[None]
    start = time.perf_counter()
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    loaded = time.perf_counter()
    session.run(None, {"image": pixels})
    first = time.perf_counter()
    per_image = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {"image": pixels})
        per_image.append((time.perf_counter() - t0) * 1e3)
    return {
        "first_result_ms": (first - start) * 1e3,
        "model_loaded_ms": (loaded - start) * 1e3,
        "first_run_ms": (first - loaded) * 1e3,
        "per_image_ms": statistics.median(per_image),
        "per_image_runs_ms": per_image,
        "onnxruntime": ort.__version__,
    }


def cell(value: Any) -> str:
    """A table cell: milliseconds rounded, text as it is, None as a dash."""
    return "-" if value is None else value if isinstance(value, str) else f"{value:.0f}"


def table(result: Dict[str, Any]) -> str:
    b, p = result["browser"], result["python"]
    rows = [
        ("time to first result (empty cache)", b["first_result_ms"], p["first_result_ms"]),
        ("time to first result (model cached)", b["first_result_cached_ms"], None),
        (
            "model loaded (empty cache / cached)",
            f"{b['model_loaded_ms']:.0f} / {b['model_loaded_cached_ms']:.0f}",
            p["model_loaded_ms"],
        ),
        ("first run", b["first_run_ms"], p["first_run_ms"]),
        (f"per image (median of {len(b['per_image_runs_ms'])})", b["per_image_ms"], p["per_image_ms"]),
    ]
    lines = [
        f"| ms | browser (WASM, {b['threads']} threads) | Python (ONNX Runtime {p['onnxruntime']}, "
        f"{THREADS} threads) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {cell(bv)} | {cell(pv)} |" for name, bv, pv in rows]
    ratio = b["per_image_ms"] / p["per_image_ms"]
    lines.append(f"\nPer image the browser takes {ratio:.2f}x the Python time.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a pixels-to-maps graph (default: the tiny model exported here)")
    parser.add_argument("--resolution", type=int, default=512, help="resolution of the default graph (default 512)")
    parser.add_argument(
        "--photo",
        type=Path,
        help="the photo (default: scikit-image's astronaut, 512x512, else a synthetic 640x480 PNG)",
    )
    parser.add_argument("--screenshot", type=Path, help="also save a screenshot of the page with its maps here")
    parser.add_argument("--runs", type=int, default=10, help="runs per image after the first (default 10)")
    parser.add_argument("--name", default="web", help="results file stem (default web)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="david-web-bench-") as tmp:
        folder = Path(tmp)
        model = args.model or export_tiny(folder, args.resolution)
        photo = args.photo
        if photo is None:
            photo = folder / "photo.png"
            Image.fromarray(default_photo()).save(photo)
        with Image.open(photo) as img:
            size = img.size
        result = {
            "model": model.name,
            "model_bytes": model.stat().st_size,
            "photo": photo.name,
            "photo_size": list(size),
            "runs": args.runs,
            "browser": browser_times(model, photo, args.runs, args.screenshot),
            "python": python_times(model, photo, args.runs),
            "machine": machine(),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = (
        f"{result['model']} ({result['model_bytes'] / 1e6:.1f} MB), photo {size[0]}x{size[1]}, "
        f"{result['machine']['cpu']}\n\n{table(result)}\n"
    )
    command = " ".join(["python benchmarks/web.py", *sys.argv[1:]])
    replace_doc_section(
        args.name,
        f"Generated by `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).\n\n{text}",
        page=DOC,
        heading="## Benchmark",
    )
    print(text)


if __name__ == "__main__":
    main()
