"""Which ops of an FP16 graph ONNX Runtime's CPU provider runs in FP32 (it has no FP16 kernel).

ONNX Runtime does not refuse an FP16 node it has no CPU kernel for: its InsertCastTransformer
wraps the node in Casts to FP32 and back. This script saves the session's graph with
optimisations off and lists, per op type, how many nodes ended up with FP32 inputs although the
file gives them FP16 ones.

    python benchmarks/ort_fp16_kernels.py FILE16.onnx
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`


def fp32_fallbacks(path: str) -> Dict[str, Dict[str, int]]:
    """Per op type the file runs in FP16: how many nodes, how many ORT runs in FP32, how many it rewrote."""
    import onnx
    import onnxruntime as ort

    from david_infer.export.fp16 import FLOAT, FLOAT16, _elem_types_from_inference, _node_type

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "ort.onnx")
        ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        seen = onnx.load(options.optimized_model_filepath)
    original = onnx.load(path)
    file_types, ort_types = _elem_types_from_inference(original), _elem_types_from_inference(seen)
    ort_nodes = {n.name: n for n in seen.graph.node}
    result: Dict[str, Dict[str, int]] = {}
    for node in original.graph.node:
        if node.op_type == "Cast" or _node_type(node, file_types) != FLOAT16:
            continue
        row = result.setdefault(node.op_type, {"fp16_in_file": 0, "run_in_fp32_by_ort": 0, "replaced_by_ort": 0})
        row["fp16_in_file"] += 1
        twin = ort_nodes.get(node.name)
        if twin is None:
            row["replaced_by_ort"] += 1  # ORT rewrote the node (e.g. Relu -> Max)
        elif _node_type(twin, ort_types) == FLOAT:
            row["run_in_fp32_by_ort"] += 1
    return dict(sorted(result.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an FP16 .onnx exported with --precision fp16")
    args = parser.parse_args()
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}, CPUExecutionProvider")
    print(f"{'op':<16} {'fp16 in file':>12} {'run in fp32 by ORT':>19} {'replaced by ORT':>16}")
    for op, d in fp32_fallbacks(args.model).items():
        print(f"{op:<16} {d['fp16_in_file']:>12} {d['run_in_fp32_by_ort']:>19} {d['replaced_by_ort']:>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
