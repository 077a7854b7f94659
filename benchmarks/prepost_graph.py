"""The pre/post per image: the graph stages (DavidRuntime's default with ONNX Runtime), a pre/post
graph file (`export --prepost`, as a C++ host runs it) and the reference stages.

1. Pre + post alone (the model call left out): DavidRuntime's `preprocess` + `postprocess` with
   its graph stages and with the reference stages; the pre/post graph built around a stand-in
   network (two elementwise ops with the real network's inputs and outputs, so every pre/post node
   runs and the network costs nothing), run by ONNX Runtime with `--ort-threads` threads. With
   `--compare-with DIR` (a checkout of an earlier version, e.g. `git worktree add /tmp/v0.1
   eabb1f9`), that version's DavidRuntime `preprocess` + `postprocess` too, timed in a process of
   its own right after ours, for each size.
2. With `--base`: model-inclusive time on the Base multi-task network (random weights): the pre/post
   graph file against `DavidRuntime.predict` on the network file.
3. With `--profile`: where the pre/post graph's time goes at 3840x2160, by stage (`profile`).

Medians of wall-clock ms (and of process CPU ms, which a busy shared machine inflates less) at
1280x720 and 3840x2160, for a real photo (scikit-image's coffee, upscaled).

    python benchmarks/prepost_graph.py [--runs 9] [--compare-with DIR] [--base] [--profile]

Writes benchmarks/results/prepost_graph.json and the tables of docs/prepost.md ("Speed").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from benchmarks.prologue import RESULTS, ROOT, replace_doc_section  # noqa: E402
from david_infer import DavidRuntime  # noqa: E402
from david_infer.tasks import TASK_ORDER  # noqa: E402  (a pre/post graph's outputs are named by task)

SIZES = ((720, 1280), (2160, 3840))
PAGE, HEADING = ROOT / "docs" / "prepost.md", "## Speed (measured)"  # where the tables go


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
    for channel, (task, name) in enumerate(contract.output_names.items()):
        if task == "normal":
            nodes.append(helper.make_node("Sub", ["mixed", "half"], [name]))
            channels = 3
        else:  # a channel of its own: maps made alike would be computed once (ONNX Runtime's CSE)
            nodes.append(
                helper.make_node("Slice", ["mixed", f"c{channel % 3}", f"c{channel % 3 + 1}", "c_axis"], [name])
            )
            channels = 1
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", channels, "r", "r"]))
    inits = [
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        *(helper.make_tensor(f"c{i}", TensorProto.INT64, [1], [i]) for i in range(4)),
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


def profile(graph: Any, graph_path: Path, image: np.ndarray, runs: int, threads: int) -> List[Dict[str, Any]]:
    """Where the graph's time goes for `image`: ONNX Runtime's kernel time of every node (median
    over `runs` profiled runs, a session with DavidRuntime's CPU options plus profiling), summed by
    the stage the node's name gives (`pp/<stage>/...`, david_infer/export/prepost.py) and by the size of what
    each node reads and writes: the image's size, one axis at the image's size (the passes between
    the two axes), or small (model size, weights, indices); the nodes that write the graph's
    outputs in a row of their own. Rows: stage, part, ms, MB moved (inputs + outputs), nodes."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.profile_file_prefix = str(graph_path.with_suffix(""))
    session = ort.InferenceSession(str(graph_path), sess_options=so, providers=["CPUExecutionProvider"])
    feeds = {"image": image[None]}
    session.run(None, feeds)  # warm-up, left out below
    for _ in range(runs):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    times: Dict[str, List[float]] = {}
    moved: Dict[str, float] = {}
    dims: Dict[str, set] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            node = event["name"][: -len("_kernel_time")]
            times.setdefault(node, []).append(event["dur"] / 1000.0)
            args = event["args"]
            moved[node] = int(args.get("activation_size", 0)) + int(args.get("output_size", 0))
            shapes = args.get("input_type_shape", []) + args.get("output_type_shape", [])
            dims[node] = {d for shape in shapes for dims_ in shape.values() for d in dims_}
    writers = {n.name: "writes the outputs" for n in graph.graph.node if set(n.output) & set(TASK_ORDER)}
    full = image.shape[0] * image.shape[1] * 4  # bytes of one float map at the image's size
    sides = {image.shape[0], image.shape[1], 3 * image.shape[1]}  # an axis at the image's size
    groups: Dict[tuple, List[float]] = {}
    for node, durations in times.items():
        # ONNX Runtime names the nodes it adds (layout Transposes) without the builder's prefix
        stage = node.split("/")[1] if node.startswith("pp/") else "stand-in network, ONNX Runtime's own"
        if stage == "post":
            stage = "/".join(node.split("/")[1:3])
        part = writers.get(node) or (
            "image size" if moved[node] >= full else "one axis at image size" if dims[node] & sides else "small"
        )
        entry = groups.setdefault((stage, part), [0.0, 0.0, 0])
        entry[0] += statistics.median(durations[-runs:])
        entry[1] += moved[node] / 1e6
        entry[2] += 1
    return [
        {"stage": stage, "part": part, "ms": round(ms, 1), "mb": round(mb), "nodes": count}
        for (stage, part), (ms, mb, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])
    ]


def median_ms(fn: Callable[[], Any], runs: int) -> Tuple[float, float, float]:
    """(median wall-clock ms, median process CPU ms over all threads, fastest wall-clock ms)."""
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1000.0)
        cpu.append((time.process_time() - start_cpu) * 1000.0)
    return statistics.median(wall), statistics.median(cpu), min(wall)


def stage_ms(rt: Any, image: np.ndarray, runs: int) -> tuple:
    """(wall, cpu) median ms of `rt.preprocess` + `rt.postprocess` for `image` (the model left out)."""
    decoded, staged = rt.preprocess(image)
    outputs = rt.infer([staged])[0]

    def once() -> None:
        d, s = rt.preprocess(image)
        rt.postprocess(d, s, outputs)

    once()
    return median_ms(once, runs)


_OTHER = """
import sys, time, numpy as np
from PIL import Image
from skimage import data
import david_infer
from david_infer import DavidRuntime
assert david_infer.__file__.startswith(sys.argv[5]), f"imported {david_infer.__file__}, not the checkout {sys.argv[5]}"
model, h, w, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
image = np.asarray(Image.fromarray(data.coffee()).resize((w, h), Image.Resampling.LANCZOS))
with DavidRuntime(model) as rt:
    d, p = rt.preprocess(image)
    out = rt.infer([p])[0]
    wall, cpu = [], []
    for i in range(runs + 1):
        t, c = time.perf_counter(), time.process_time()
        d, p = rt.preprocess(image)
        rt.postprocess(d, p, out)
        if i:
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
print(1000 * float(np.median(wall)), 1000 * float(np.median(cpu)))
"""


def other_ms(checkout: Path, model: Path, size: tuple, runs: int) -> tuple:
    """(wall, cpu) median ms of an earlier version's DavidRuntime preprocess + postprocess, in a
    process of its own started in that checkout (`-c` puts the working directory first on the path,
    before PYTHONPATH: started here, it would import this checkout)."""
    checkout = checkout.resolve()
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(
        [sys.executable, "-c", _OTHER, str(model), str(size[0]), str(size[1]), str(runs), str(checkout)],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode:
        raise SystemExit(f"{checkout}: {done.stderr[-2000:]}")
    wall, cpu = done.stdout.split()[-2:]
    return float(wall), float(cpu)


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
    parser.add_argument("--compare-with", type=Path, help="a checkout of an earlier version, timed alike")
    parser.add_argument("--base", action="store_true", help="also time the Base network, model included")
    parser.add_argument(
        "--profile", action="store_true", help="also profile the graph at 3840x2160: kernel time by stage"
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "prepost_graph.json")
    args = parser.parse_args(argv)

    from david_infer.contract import ModelContract
    from david_infer.export import export_onnx
    from david_infer.export.prepost import build_prepost_model, wrap_prepost

    rows: List[Dict[str, Any]] = []
    stages: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp, "tiny.onnx")
        export_onnx("tiny", "multitask", tiny, seed=0)
        contract = ModelContract.load(tiny)
        graph, _ = build_prepost_model(stand_in_network(contract), contract)
        graph_path = Path(tmp, "stand-in-prepost.onnx")
        graph_path.write_bytes(graph.SerializeToString())
        session = ort_session(graph_path, args.ort_threads)
        with DavidRuntime(tiny, threads=args.threads) as graph_rt, DavidRuntime(tiny, stages="reference") as ref_rt:
            for size in SIZES:
                image = photo(*size)
                rows.append(row("DavidRuntime, graph stages", size, stage_ms(graph_rt, image, args.runs)))
                if args.compare_with:
                    rows.append(
                        row(
                            f"DavidRuntime {args.compare_with.name}",
                            size,
                            other_ms(args.compare_with, tiny, size, args.runs),
                        )
                    )
                feeds = {"image": image[None]}
                session.run(None, feeds)
                timing = median_ms(lambda feeds=feeds: session.run(None, feeds), args.runs)
                rows.append(row(f"pre/post graph file ({args.ort_threads} threads)", size, timing))
                rows.append(
                    row("DavidRuntime, reference stages", size, stage_ms(ref_rt, image, max(3, args.runs // 3)))
                )
        if args.profile:
            stages = profile(graph, graph_path, photo(*SIZES[-1]), args.runs, args.ort_threads)
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
    replace_doc_section("prepost_graph", "\n".join(lines), page=PAGE, heading=HEADING)
    cases = list(dict.fromkeys(r["case"] for r in rows if not r["case"].startswith("Base")))
    summary = ["| photo | " + " | ".join(cases) + " |", "|---" * (len(cases) + 1) + "|"]
    for size in SIZES:
        image = f"{size[1]}x{size[0]}"
        cells = {r["case"]: r for r in rows if r["image"] == image}
        summary.append(
            f"| {image} | " + " | ".join(f"{cells[c]['ms']} ms ({cells[c]['cpu_ms']} CPU)" for c in cases) + " |"
        )
    summary.append(f"\n(wall-clock median, process CPU time in brackets; load average {load:.1f} during the run)")
    replace_doc_section("readme_speed", "\n".join(summary), page=ROOT / "README.md")
    if stages:
        total = sum(r["ms"] for r in stages)
        table = [
            f"Kernel time of one {SIZES[-1][1]}x{SIZES[-1][0]} image by stage, median of {args.runs} profiled runs "
            f"(ONNX Runtime's own per-node times, {args.ort_threads} threads): {total:.1f} ms in all.",
            "",
            "| stage | part | ms | MB moved | nodes |",
            "|---|---|---|---|---|",
        ]
        table += [f"| {r['stage']} | {r['part']} | {r['ms']} | {r['mb']} | {r['nodes']} |" for r in stages]
        print("\n" + "\n".join(table))
        replace_doc_section("prepost_profile", "\n".join(table), page=PAGE, heading=HEADING)
    result = {
        "runs": args.runs,
        "ort_threads": args.ort_threads,
        "cpus": os.cpu_count(),
        "load_average": round(load, 2),
        "results": rows,
        "profile_4k": stages,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
