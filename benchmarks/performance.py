"""Regenerate the performance tables of docs/benchmarks.md: size, latency against resolution, throughput against batch.

    python benchmarks/performance.py            # full run (Base depth; ~30 min on 2 busy cores)
    python benchmarks/performance.py --quick    # fewer points and runs; does not touch the docs

What it measures, all on this machine's CPU:

1. Params and MACs of every variant against the model cards (benchmarks/gmacs.py).
2. Latency against resolution (256, 384, 512, 768, 1024; batch 1) of one model with the same
   random weights (seed 0) in three forms: ONNX Runtime on the FP32 graph, ONNX Runtime on the
   mixed-FP16 graph, and PyTorch eager. Both graphs are exported once into a cache folder
   (`--cache`, default `$DAVID_INFER_HOME/bench`) and reused while their manifests match. Each point
   is `david_infer.benchmark.time_runtime`: warm-up, then repeated runs of the runtime's three stages
   (pre / model / post), median latency reported; ratios ORT / PyTorch.
3. Throughput (images/s) against batch size (1, 2, 4) at 512.

Writes `benchmarks/results/{params_macs,latency_vs_resolution,throughput_vs_batch}.json`, a PNG plot
per figure (needs matplotlib: `pip install matplotlib`; skipped with a note without it),
`benchmarks/results/performance.md`, and replaces the table in `docs/benchmarks.md` between
`<!-- performance:start -->` and `<!-- performance:end -->`. Results are saved after every point.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from benchmarks.prologue import RESULTS, replace_doc_section
from david_infer.benchmark import machine, synthetic_photo, time_interleaved

#: form name -> (graph precision, backend)
FORMS: Dict[str, Tuple[str, str]] = {
    "ort-fp32": ("fp32", "onnxruntime"),
    "ort-fp16": ("fp16", "onnxruntime"),
    "torch": ("fp32", "torch"),
}
TITLES = {"ort-fp32": "ONNX Runtime FP32", "ort-fp16": "ONNX Runtime FP16", "torch": "PyTorch eager FP32"}


# ------------------------------------------------------------------------------- model files


def exported(cache: Path, variant: str, task: str, precision: str) -> Path:
    """The cached export (seed 0, dynamic layout) of variant/task at `precision`, made if missing."""
    from export_check import export_in_subprocess

    from david_infer.contract import read_manifest
    from david_infer.errors import ModelError
    from david_infer.manifest import check_sha256, manifest_path

    path = cache / f"{variant}-{task}-{precision}.onnx"
    if path.exists() and manifest_path(path).exists():
        try:
            m = read_manifest(manifest_path(path))
            check_sha256(path, m.get("sha256"))
            if (m.get("weights") or {}).get("seed") == 0 and m.get("precision") == precision:
                return path
        except ModelError:
            pass
    cache.mkdir(parents=True, exist_ok=True)
    print(f"exporting {variant}/{task} {precision} to {path} ...", flush=True)
    info = export_in_subprocess(variant, task, path, precision)
    print(f"  done in {info['subprocess_wall_s']:.0f} s", flush=True)
    return path


def test_image() -> np.ndarray:
    """scikit-image's astronaut (a real 512x512 portrait) when installed, else a synthetic picture."""
    try:
        from skimage import data

        return np.ascontiguousarray(data.astronaut())
    except ImportError:
        return synthetic_photo(512, 512)


# ------------------------------------------------------------------------------- measuring


def measure_point(
    files: Dict[str, Path], forms: List[str], resolution: int, batch: int, args: argparse.Namespace, image: np.ndarray
) -> Dict[str, dict]:
    """One (resolution, batch) point for every form, the forms taking turns run by run."""
    from contextlib import ExitStack

    from david_infer import DavidRuntime

    with ExitStack() as stack:
        runtimes = {
            form: stack.enter_context(
                DavidRuntime(files[FORMS[form][0]], backend=FORMS[form][1], resolution=resolution, batch_size=batch)
            )
            for form in forms
        }
        records = time_interleaved(runtimes, image, batch, args.runs, args.warmup, args.max_seconds)
    gc.collect()
    return records


def sweep(
    points: List[Tuple[int, int]],
    forms: List[str],
    files: Dict[str, Path],
    args: argparse.Namespace,
    image: np.ndarray,
    save: Callable[[List[dict]], None],
) -> List[dict]:
    """Measure every (resolution, batch) point, saving after each."""
    records: List[dict] = []
    for resolution, batch in points:
        t = time.perf_counter()
        for form, record in measure_point(files, forms, resolution, batch, args, image).items():
            record.update(form=form, resolution=resolution)
            records.append(record)
            print(
                f"  {form:<9} {resolution:>5} batch {batch}: median {record['latency']['median_ms']:8.1f} ms "
                f"(model {record['stages']['model']['median_ms']:8.1f} ms, CPU {record['cpu']['median_ms']:8.1f} ms), "
                f"{record['images_per_s']:.2f} img/s, {record['runs_done']} runs",
                flush=True,
            )
        print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)
        save(records)
    return records


def add_ratios(records: List[dict], key: str) -> List[dict]:
    """Per point: each ORT form's median latency (total and model) over PyTorch's."""
    out = []
    for point in dict.fromkeys(r[key] for r in records):
        rows = {r["form"]: r for r in records if r[key] == point}
        torch_row = rows.get("torch")
        if torch_row is None:
            continue
        entry = {key: point}
        for form, r in rows.items():
            if form != "torch":
                entry[f"{form}/torch"] = r["latency"]["median_ms"] / torch_row["latency"]["median_ms"]
                entry[f"{form}/torch model"] = (
                    r["stages"]["model"]["median_ms"] / torch_row["stages"]["model"]["median_ms"]
                )
                entry[f"{form}/torch cpu"] = r["cpu"]["median_ms"] / torch_row["cpu"]["median_ms"]
        out.append(entry)
    return out


# ------------------------------------------------------------------------------- reporting


def write_json(name: str, payload: Any, out: Path) -> None:
    from david_infer.files import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / name, (json.dumps(payload, indent=2) + "\n").encode())


def plot(
    records: List[dict],
    key: str,
    value: Callable[[dict], float],
    ylabel: str,
    title: str,
    path: Path,
    log_y: bool = False,
) -> Optional[str]:
    """A line per form; returns a note instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"{path.name} not drawn: matplotlib is not installed (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for form in FORMS:
        rows = sorted((r for r in records if r["form"] == form), key=lambda r: r[key])
        if rows:
            ax.plot([r[key] for r in rows], [value(r) for r in rows], marker="o", label=TITLES[form])
    ax.set_xlabel(key.replace("_", " "))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.set_xticks(sorted({r[key] for r in records}))
    if log_y:
        from matplotlib.ticker import LogLocator, ScalarFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    else:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None


def markdown(
    meta: Dict[str, Any], sizes: List[dict], latency: List[dict], throughput: List[dict], notes: List[str]
) -> str:
    """The performance section (also the body of performance.md)."""
    import gmacs

    m = meta["machine"]
    lines = [
        "Generated by `python benchmarks/performance.py` "
        f"({meta['date']}; {meta['variant']} {meta['task']}, random weights from seed 0, the same in every form).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (shared with other jobs while measured), "
        f"ONNX Runtime {m['onnxruntime']}, PyTorch {m['torch']}, Python {m['python']}. Each point: "
        f"{meta['warmup']} warm-up run(s) per form, then up to {meta['runs']} runs of the whole `DavidRuntime` "
        "path (preprocess + model + postprocess) on scikit-image's 512x512 astronaut, the three forms taking "
        "turns run by run (so load from other jobs falls on all of them alike); medians reported.",
        "",
        "**Size** (params and MACs at 512x512 against the model cards):",
        "",
        gmacs.table(sizes),
        "",
        "**Latency against resolution** (batch 1; wall ms, model call alone in brackets, and process CPU "
        "ms, all threads; ratios ORT / PyTorch on wall and on CPU time):",
        "",
    ]
    forms = [f for f in FORMS if any(r["form"] == f for r in latency)]
    others = [f for f in forms if f != "torch"] if "torch" in forms else []
    head = (
        "| resolution | "
        + " | ".join(f"{TITLES[f]}: wall (model) / CPU" for f in forms)
        + "".join(f" | {TITLES[f].replace('ONNX Runtime', 'ORT')} / torch: wall, CPU" for f in others)
        + " |"
    )
    lines += [head, "|---:|" + "---:|" * (len(forms) + len(others))]
    ratios = {r["resolution"]: r for r in add_ratios(latency, "resolution")}
    for res in dict.fromkeys(r["resolution"] for r in latency):
        cells = []
        for form in forms:
            row = next((r for r in latency if r["form"] == form and r["resolution"] == res), None)
            cells.append(
                f"{row['latency']['median_ms']:.0f} ({row['stages']['model']['median_ms']:.0f}) / "
                f"{row['cpu']['median_ms']:.0f}"
                if row
                else "-"
            )
        ratio = ratios.get(res, {})
        for form in others:
            key = f"{form}/torch"
            cells.append(f"{ratio[key]:.2f}, {ratio[key + ' cpu']:.2f}" if key in ratio else "-")
        lines.append(f"| {res} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "**Throughput against batch size** (512x512, images/s on the wall clock; CPU seconds per image):",
        "",
        "| batch | " + " | ".join(TITLES[f] for f in forms) + " |",
        "|---:|" + "---:|" * len(forms),
    ]
    for batch in dict.fromkeys(r["batch"] for r in throughput):
        cells = []
        for form in forms:
            row = next((r for r in throughput if r["form"] == form and r["batch"] == batch), None)
            cells.append(f"{row['images_per_s']:.2f} ({row['cpu']['median_ms'] / 1e3 / batch:.2f} s)" if row else "-")
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "![latency against resolution](../benchmarks/results/latency_vs_resolution.png)",
        "![throughput against batch size](../benchmarks/results/throughput_vs_batch.png)",
        "",
    ]
    lines += [f"Note: {n}" for n in notes]
    load = ", ".join(f"{v:.1f}" for v in meta.get("load_average", []))
    lines += [
        "Ratios below 1 mean ONNX Runtime is faster than PyTorch eager. This machine's cores are shared "
        f"with other jobs (1-minute load average at the start and the end of the run: {load}), so wall "
        "times carry noise; CPU time is inflated less by the load, but ONNX Runtime's worker threads "
        "spin while they wait, which counts as CPU time, so its CPU figure overstates the work done. The JSON files beside the plots hold every percentile and the "
        "pre/model/post split. ONNX Runtime's CPU provider has no FP16 kernels for most ops and wraps them "
        "in casts (benchmarks/ort_fp16_kernels.py), so the FP16 graph is for GPUs and TensorRT, not for CPUs."
    ]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------- main


def main(argv: Optional[List[str]] = None) -> int:
    import gmacs

    from david_infer import zoo

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="256 and 512 only, batch 1 and 2, one run each; docs not touched"
    )
    p.add_argument("--variant", default="base", help="model variant (default base)")
    p.add_argument("--task", default="depth", help="model task (default depth)")
    p.add_argument("--resolutions", default="256,384,512,768,1024")
    p.add_argument("--batches", default="1,2,4")
    p.add_argument("--runs", type=int, default=3, help="timed runs per point (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up runs per point and form (default 2)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="stop a point's timed runs after this long")
    p.add_argument("--forms", default=",".join(FORMS), help=f"which of {', '.join(FORMS)}")
    p.add_argument("--cache", type=Path, default=None, help="folder for the exported graphs")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    p.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    p.add_argument(
        "--from-json",
        action="store_true",
        help="measure nothing: redraw the plots, performance.md and the docs table from the JSON in --out",
    )
    args = p.parse_args(argv)
    if args.from_json:
        return report_from_json(args)
    resolutions = [int(v) for v in args.resolutions.split(",")]
    batches = [int(v) for v in args.batches.split(",")]
    if args.quick:
        resolutions, batches, args.runs, args.no_docs = [256, 512], [1, 2], 1, True
    forms = [f for f in args.forms.split(",") if f]
    cache = args.cache or zoo.home() / "bench"
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "variant": args.variant,
        "task": args.task,
        "runs": args.runs,
        "warmup": args.warmup,
        "machine": machine(),
        "load_average": [os.getloadavg()[0]],
    }
    print(f"machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores", flush=True)

    sizes = gmacs.measure([(512, 512)])
    write_json("params_macs.json", {**meta, "records": sizes}, args.out)
    files = {prec: exported(cache, args.variant, args.task, prec) for prec in {FORMS[f][0] for f in forms}}
    image = test_image()

    print("latency against resolution:", flush=True)
    latency = sweep(
        [(r, 1) for r in resolutions],
        forms,
        files,
        args,
        image,
        lambda recs: write_json(
            "latency_vs_resolution.json", {**meta, "records": recs, "ratios": add_ratios(recs, "resolution")}, args.out
        ),
    )
    print("throughput against batch size at 512:", flush=True)
    throughput = sweep(
        [(512, b) for b in batches],
        forms,
        files,
        args,
        image,
        lambda recs: write_json(
            "throughput_vs_batch.json", {**meta, "records": recs, "ratios": add_ratios(recs, "batch")}, args.out
        ),
    )
    meta["load_average"] = [meta["load_average"][0], os.getloadavg()[0]]
    write_json(
        "throughput_vs_batch.json", {**meta, "records": throughput, "ratios": add_ratios(throughput, "batch")}, args.out
    )
    return report(meta, sizes, latency, throughput, args)


def report(
    meta: Dict[str, Any], sizes: List[dict], latency: List[dict], throughput: List[dict], args: argparse.Namespace
) -> int:
    """Plots, performance.md and (unless --no-docs) the table in docs/benchmarks.md."""
    from david_infer.files import atomic_write_bytes

    notes = [
        n
        for n in (
            plot(
                latency,
                "resolution",
                lambda r: r["latency"]["median_ms"],
                "median latency, ms (log)",
                f"DAViD {meta['variant']} {meta['task']}, batch 1, {meta['machine']['cpu'].split(' (')[0]}",
                args.out / "latency_vs_resolution.png",
                log_y=True,
            ),
            plot(
                throughput,
                "batch",
                lambda r: r["images_per_s"],
                "images / s",
                f"DAViD {meta['variant']} {meta['task']} at 512x512",
                args.out / "throughput_vs_batch.png",
            ),
        )
        if n
    ]
    body = markdown(meta, sizes, latency, throughput, notes)
    atomic_write_bytes(args.out / "performance.md", ("# Performance\n\n" + body).encode())
    if not args.no_docs:
        replace_doc_section("performance", body, heading="## Performance")
        print(f"docs/benchmarks.md updated; results in {args.out}", flush=True)
    else:
        print(f"results in {args.out} (docs not touched)", flush=True)
    return 0


def report_from_json(args: argparse.Namespace) -> int:
    """`report` from the JSON files a full run left in --out."""

    def load(name: str) -> Dict[str, Any]:
        try:
            return json.loads((args.out / name).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"--from-json: cannot read {args.out / name} ({exc}); run a measurement first") from None

    sizes, latency, throughput = (
        load(n) for n in ("params_macs.json", "latency_vs_resolution.json", "throughput_vs_batch.json")
    )
    meta = {k: v for k, v in throughput.items() if k not in ("records", "ratios")}
    return report(meta, sizes["records"], latency["records"], throughput["records"], args)


if __name__ == "__main__":
    sys.exit(main())
