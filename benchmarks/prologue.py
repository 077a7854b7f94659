"""What the benchmark scripts share: where results go, and the writer of the generated tables in the
docs. (Each script puts the checkout's root first on sys.path itself, so that it runs from a plain
checkout, installed or not: `python benchmarks/NAME.py`.)

    from benchmarks.prologue import RESULTS, replace_doc_section
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"
BENCHMARK_DOCS = ROOT / "docs" / "benchmarks.md"


def replace_doc_section(name: str, body: str, page: Path = BENCHMARK_DOCS, heading: str = "") -> None:
    """Put `body` between `<!-- NAME:start -->` and `<!-- NAME:end -->` in a docs page, atomically.

    A page without the markers gets them appended under `heading` (e.g. "## Performance"), so a
    benchmark never silently drops its table."""
    from david_infer.files import atomic_write_bytes

    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = page.read_text(encoding="utf-8") if page.exists() else ""
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + (f"{heading}\n\n" if heading else "") + block + "\n"
    atomic_write_bytes(page, text.encode("utf-8"))


def model_or_tiny(model: Optional[str], folder: Path) -> Path:
    """`model` (a --model argument), or the tiny multi-task model (random weights, seed 0) exported
    into `folder` when none was given: the default model of the benchmarks."""
    if model:
        return Path(model)
    from david_infer.export import export_onnx

    path = folder / "tiny-multitask.onnx"
    export_onnx("tiny", "multitask", path, seed=0)
    return path
