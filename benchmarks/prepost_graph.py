"""Pre/post inside the graph (`export --prepost`) against DavidRuntime's numpy path, per image.

1. The pre/post part alone: the graph is built around a stand-in network (two elementwise ops
   with the real network's inputs and outputs, so every pre/post node runs and the network costs
   nothing) and run by ONNX Runtime on the CPU with `--ort-threads` (default 2) threads, in a
   session made as DavidRuntime makes it (its session options); against it, DavidRuntime's
   `preprocess` + `postprocess` (numpy/Pillow, `--threads` workers).
2. With `--base`: model-inclusive time of both on the Base multi-task network (random weights):
   the pre/post graph run by ONNX Runtime against `DavidRuntime.predict` on the network file.

Medians of wall-clock ms (and of process CPU ms, which a busy shared machine inflates less) at
1280x720 and 3840x2160, for a real photo (scikit-image's coffee, upscaled).

    python benchmarks/prepost_graph.py [--runs 9] [--base]

Writes benchmarks/results/prepost_graph.json and the table of docs/prepost.md ("Speed").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import prologue  # noqa: E402,F401  (the checkout on sys.path)
from PIL import Image
from prepost_4k import median_ms  # noqa: E402
from prologue import RESULTS, ROOT, replace_doc_section  # noqa: E402

from david_infer import DavidRuntime  # noqa: E402

SIZES = ((720, 1280), (2160, 3840))


def photo(height: int, width: int) -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.coffee()).resize((width, height), Image.Resampling.LANCZOS))


def stand_in_network(contract: Any) -> Any:
    """A ModelProto with the network's inputs and outputs and next to no work: every output reads
    both inputs (so neither branch of the pre-processing is pruned)."""
    from onnx import TensorProto, helper

    vit = contract.vit_input
    inputs = [helper.make_tensor_value_info(contract.image_input, TensorProto.FLOAT, ["n", 3, "r", "r"])]
    nodes = []
    if vit:
        inputs.append(helper.make_tensor_value_info(vit, TensorProto.FLOAT, ["n", 3, 384, 384]))
        nodes.append(helper.make_node("ReduceMean", [vit], ["vit_mean"], keepdims=1))
        nodes.append(helper.make_node("Add", [contract.image_input, "vit_mean"], ["mixed"]))
    else:
        nodes.append(helper.make_node("Identity", [contract.image_input], ["mixed"]))
    outputs = []
    for task, name in contract.output_names.items():
        if task == "normal":
            nodes.append(helper.make_node("Sub", ["mixed", "half"], [name]))
            channels = 3
        else:
            nodes.append(helper.make_node("Slice", ["mixed", "c0", "c1", "c_axis"], [name]))
            channels = 1
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", channels, "r", "r"]))
    inits = [
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("c0", TensorProto.INT64, [1], [0]),
        helper.make_tensor("c1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("c_axis", TensorProto.INT64, [1], [1]),
    ]
    graph = helper.make_graph(nodes, "stand_in", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def ort_session(path: Path, threads: int) -> Any:
    """The session DavidRuntime would make for `path` on the CPU (its session options)."""
    from david_infer.backends.base import Device
    from david_infer.backends.onnxruntime import OnnxRuntimeOptions
    from david_infer.backends.onnxruntime.runner import create_session

    return create_session(path, Device("cpu"), (), OnnxRuntimeOptions(intra_op_threads=threads))


def row(label: str, size: tuple, wall_cpu: tuple) -> Dict[str, Any]:
    return {
        "case": label,
        "image": f"{size[1]}x{size[0]}",
        "ms": round(wall_cpu[0], 1),
        "cpu_ms": round(wall_cpu[1], 1),
    }


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--ort-threads", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="DavidRuntime pre/post threads (default: its own)")
    parser.add_argument("--base", action="store_true", help="also time the Base network, model included")
    parser.add_argument("--json", type=Path, default=RESULTS / "prepost_graph.json")
    args = parser.parse_args(argv)

    from david_infer.contract import ModelContract
    from david_infer.export import export_onnx
    from david_infer.export.prepost import build_prepost_model, wrap_prepost

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp, "tiny.onnx")
        export_onnx("tiny", "multitask", tiny, seed=0)
        contract = ModelContract.load(tiny)
        graph, _ = build_prepost_model(stand_in_network(contract), contract)
        graph_path = Path(tmp, "stand-in-prepost.onnx")
        graph_path.write_bytes(graph.SerializeToString())
        session = ort_session(graph_path, args.ort_threads)
        with DavidRuntime(tiny, threads=args.threads) as rt:
            for size in SIZES:
                image = photo(*size)
                feeds = {"image": image[None]}
                session.run(None, feeds)
                timing = median_ms(lambda feeds=feeds: session.run(None, feeds), args.runs)
                rows.append(row("pre/post graph (ONNX Runtime)", size, timing))
                decoded, prepared = rt.preprocess(image)
                outputs = rt.infer([prepared])[0]

                def numpy_path(image: np.ndarray = image, outputs: dict = outputs) -> None:
                    d, p = rt.preprocess(image)
                    rt.postprocess(d, p, outputs)

                numpy_path()
                rows.append(row("DavidRuntime preprocess + postprocess", size, median_ms(numpy_path, args.runs)))
        if args.base:
            base = Path(tmp, "base.onnx")
            export_onnx("base", "multitask", base, seed=0)
            base_graph = Path(tmp, "base-prepost.onnx")
            wrap_prepost(base, base_graph)
            session = ort_session(base_graph, args.ort_threads)
            with DavidRuntime(base, threads=args.threads, intra_op_threads=args.ort_threads) as rt:
                for size in SIZES:
                    image = photo(*size)
                    feeds = {"image": image[None]}
                    session.run(None, feeds)
                    runs = max(3, args.runs // 3)
                    rows.append(
                        row(
                            "Base, pre/post graph (ONNX Runtime)",
                            size,
                            median_ms(lambda feeds=feeds: session.run(None, feeds), runs),
                        )
                    )
                    rt.predict(image)
                    rows.append(
                        row("Base, DavidRuntime.predict", size, median_ms(lambda image=image: rt.predict(image), runs))
                    )

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"Per image, median of {args.runs} runs{' (Base: fewer)' if args.base else ''}, ONNX Runtime CPU with "
        f"{args.ort_threads} threads, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} during the run (a shared machine: compare within "
        "one run).",
        "",
        "| case | image | ms | cpu ms |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['case']} | {r['image']} | {r['ms']} | {r['cpu_ms']} |" for r in rows]
    print("\n".join(lines))
    replace_doc_section("prepost_graph", "\n".join(lines), page=ROOT / "docs" / "prepost.md", heading="## Speed")
    result = {
        "runs": args.runs,
        "ort_threads": args.ort_threads,
        "cpus": os.cpu_count(),
        "load_average": round(load, 2),
        "results": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
