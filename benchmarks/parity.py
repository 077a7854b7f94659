"""Parity of every production pre/post against the reference stages, measured: the numbers behind
the bounds the parity suite asserts (tests/integration/parity, tests/support/parity.py).

For each shape of the suite and both pipelines, on the same real photos and model (tiny multi-task,
random weights, seed 5: a soft mask), the reference stages' maps against those of the graph stages
(DavidRuntime's default), a pre/post graph file run as a model (`export --prepost`) and the torch
stages on the CPU: depth RMSE over the reference depth's RMS, normals' mean angle (degrees), the
mask's MAE; the worst of the three implementations per column.

    python benchmarks/parity.py

Writes the table into docs/prepost.md ("Parity") and benchmarks/results/parity.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from benchmarks.prologue import RESULTS, ROOT, replace_doc_section  # noqa: E402
from tests.support.parity import PIPELINES, SEED, SHAPES, maps_of, metrics, photo  # noqa: E402


def main() -> int:
    from david_infer import DavidRuntime
    from david_infer.export import export_onnx
    from david_infer.export.prepost import wrap_prepost

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pipeline, layout in zip(PIPELINES, ("dynamic", "official")):
            network = Path(tmp, f"{pipeline}.onnx")
            export_onnx("tiny", "multitask", network, layout=layout, seed=SEED)
            wrapped = Path(tmp, f"{pipeline}-prepost.onnx")
            wrap_prepost(network, wrapped)
            hosts = {
                "graph stages": DavidRuntime(network),
                "pre/post graph file": DavidRuntime(wrapped),
                "torch stages": DavidRuntime(network, backend="torch", stages="torch"),
            }
            with DavidRuntime(network, stages="reference") as reference:
                for shape in SHAPES:
                    image = photo(shape)
                    want = maps_of(reference.predict(image))
                    found = {name: metrics(maps_of(rt.predict(image)), want) for name, rt in hosts.items()}
                    worst = {task: max(f[task] for f in found.values()) for task in ("depth", "normal", "foreground")}
                    rows.append({"pipeline": pipeline, "shape": list(shape), "worst": worst, "each": found})
                    print(pipeline, shape, worst, file=sys.stderr)
            for rt in hosts.values():
                rt.close()
    lines = [
        "Worst of the graph stages, a pre/post graph file and the torch stages (CPU) against the reference "
        "stages; bounds asserted: depth 1e-4, normals 0.05 deg, mask 1e-4.",
        "",
        "| photo (H x W) | pipeline | depth RMSE / RMS | normals (deg) | mask MAE |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        w = r["worst"]
        h, wd = r["shape"]
        lines.append(f"| {h} x {wd} | {r['pipeline']} | {w['depth']:.1e} | {w['normal']:.4f} | {w['foreground']:.1e} |")
    print("\n".join(lines))
    replace_doc_section("parity", "\n".join(lines), page=ROOT / "docs" / "prepost.md", heading="## Parity (measured)")
    (RESULTS / "parity.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
