"""Video pipeline speed and memory: decode -> preprocess -> model -> postprocess -> render -> encode.

For a synthesised 720p and 1080p clip (H.264, 30 frames/s, a moving figure over gradients):

(a) the pipeline's own frames/s measured end to end with a zero-cost "echo" model (each output a
    cheap function of the image, so real content is rendered and encoded), then
    the pipeline's own cost, as `david-infer predict CLIP --save depth,vis` runs it
    (outputs/clips.write_clip: two-pass clip range, libx264 --video-preset), with the
    tiny depth model at 512: the measured frames/s (model included) and the time inside the model
    call (the runner, timed around it); per-frame costs of each stage measured one at a time on
    one thread (decode, preprocess, model, postprocess, render+encode), and from them the
    pipeline's CPU time per frame without the model and the frames/s it allows on 2 cores
    (2000 ms / that), the bound any accelerator meets through this path on this machine.
(b) end-to-end with a Base depth model at 512 (random weights, `david-infer export --variant base
    --task depth`) against the model alone on the same frames at the same batch, in turns
    (--rounds), and the model's share of the end-to-end wall time.
(c) peak RSS (VmHWM) of a child process running (a) over a clip and over one 10x longer.

    python benchmarks/video.py --tiny TINY_DEPTH.onnx --base BASE_DEPTH.onnx [--frames 60]
                               [--preset ultrafast] [--json out.json]

Numbers depend on the machine's load; the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from david_infer import DavidRuntime, video  # noqa: E402
from david_infer.backends import register_backend  # noqa: E402
from david_infer.backends.base import Backend, Device, Runner, Workload  # noqa: E402
from david_infer.contract import GraphIO, ModelContract  # noqa: E402
from david_infer.outputs import clips  # noqa: E402

SIZES = {"720p": (720, 1280), "1080p": (1080, 1920)}


class EchoRunner(Runner):
    """A model that costs (almost) nothing: each output is a cheap function of the image (its
    channel mean, the image itself as normals), so the pipeline's own frames/s is measured end to
    end with real, varying content to render and encode."""

    name = "echo"

    def __init__(self, contract: ModelContract) -> None:
        self._io = GraphIO(contract.inputs, contract.outputs)

    @property
    def io(self) -> GraphIO:
        return self._io

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        image = feeds[self._io.inputs[0].name]
        values = {"depth": image.mean(axis=1, keepdims=True), "normal": image - 0.5, "foreground": image[:, 1:2]}
        return {t.name: values[t.task][:, 0] if len(t.shape) == 3 else values[t.task] for t in self._io.outputs}


class EchoBackend(Backend):
    name, title, devices = "echo", "zero-cost echo model (benchmark)", ("cpu",)

    def open(self, contract: ModelContract, device: Device, workload: Workload) -> Runner:
        return EchoRunner(contract)


def synthesise(path: Path, height: int, width: int, frames: int, rate: int = 30) -> Path:
    """An H.264 clip: a light figure moving over colour gradients."""
    import av

    if path.exists():
        return path
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1).astype(np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast", "crf": "23"}
        for i in range(frames):
            img = base.copy()
            cx = (i * 13) % width
            img[height // 5 : 4 * height // 5, max(0, cx - width // 10) : cx + width // 10] = (220, 190, 170)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


class ModelTimer:
    """Sums the time spent inside the runtime's model call (the real runner, timed around)."""

    def __init__(self, rt: DavidRuntime) -> None:
        self.seconds, self._run = 0.0, rt.runner.run
        rt.runner.run = self  # type: ignore[method-assign]

    def __call__(self, feeds: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._run(feeds)
        finally:
            self.seconds += time.perf_counter() - start


def clip_options(preset: str, batch: int, kinds: List[str]) -> clips.ClipOptions:
    return clips.ClipOptions(tuple(kinds), video.FrameSelection(), None, "clip", preset, 18, batch, True, True)


def run_clip(rt: DavidRuntime, clip: Path, opts: clips.ClipOptions, outdir: Path) -> Dict[str, float]:
    """write_clip as the CLI runs it; wall time, model time, frames."""
    timer = ModelTimer(rt)
    info = video.probe(clip)
    start = time.perf_counter()
    frames, stopped = clips.write_clip(rt, info, outdir, clip.stem, opts, opts.write_options({}))
    wall = time.perf_counter() - start
    rt.runner.run = timer._run  # type: ignore[method-assign]
    assert stopped is None, stopped
    return {
        "frames": frames,
        "wall_s": wall,
        "model_s": timer.seconds,
        "fps": frames / wall,
        "fps_excluding_model_time": frames / max(wall - timer.seconds, 1e-9),
    }


def stage_costs(rt: DavidRuntime, clip: Path, opts: clips.ClipOptions, outdir: Path, n: int = 8) -> Dict[str, float]:
    """Milliseconds per frame of each stage, one at a time, on one thread (render+encode over the
    whole clip, the first `n` predictions repeated; opening and finishing the files apart)."""
    info = video.probe(clip)
    t = time.perf_counter()
    every = list(video.read_frames(info))
    ms = {"decode": (time.perf_counter() - t) * 1000 / len(every)}
    frames = every[:n]
    t = time.perf_counter()
    staged = [rt.preprocess(f.image) for f in frames]
    ms["preprocess"] = (time.perf_counter() - t) * 1000 / n
    t = time.perf_counter()
    outs = []
    for i in range(0, n, opts.batch_size):
        outs += rt.infer([p for _, p in staged[i : i + opts.batch_size]])
    ms["model"] = (time.perf_counter() - t) * 1000 / n
    t = time.perf_counter()
    preds = [rt.postprocess(d, p, o) for (d, p), o in zip(staged, outs)]
    ms["postprocess"] = (time.perf_counter() - t) * 1000 / n
    t = time.perf_counter()
    outputs = clips.ClipOutputs(info, outdir, "stages", opts, rt.tasks)
    ms["open files (per clip)"] = (time.perf_counter() - t) * 1000
    try:
        t = time.perf_counter()
        for i, f in enumerate(every):
            outputs.add(f, preds[i % n])
        outputs.finish()
        ms["render+encode"] = (time.perf_counter() - t) * 1000 / len(every)
    finally:
        outputs.abort()
    return {k: round(v, 1) for k, v in ms.items()}


def model_only(rt: DavidRuntime, clip: Path, n: int, batch: int) -> float:
    """Frames/s of the model call alone on the clip's first `n` frames (prepared beforehand)."""
    prepared = [rt.preprocess(f.image)[1] for f in video.read_frames(clip, video.FrameSelection(0, n))]
    rt.infer(prepared[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, n, batch):
        rt.infer(prepared[i : i + batch])
    return n / (time.perf_counter() - start)


def peak_rss_self() -> float:
    """This process's peak RSS in MiB (VmHWM: of this program's own memory; ru_maxrss would also
    count the parent's, inherited through fork and exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_child(args: argparse.Namespace, clip: Path) -> float:
    """Peak RSS (MiB) of a child process running the pipeline over `clip`."""
    cmd = [
        sys.executable,
        __file__,
        "--rss-child",
        str(clip),
        "--tiny",
        args.tiny,
        "--preset",
        args.preset,
        "--workdir",
        args.workdir,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", required=True, help="tiny depth model (.onnx with manifest)")
    p.add_argument("--base", help="Base depth model for (b)")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--base-frames", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2, help="(b): rounds of model-only and end-to-end, in turns")
    p.add_argument("--preset", default="ultrafast")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "david-video-bench"))
    p.add_argument("--json")
    p.add_argument("--rss-child", help=argparse.SUPPRESS)
    p.add_argument(
        "--echo-only",
        action="store_true",
        help="only (a) measured end to end with the zero-cost echo model (the tiny model's contract)",
    )
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    out.mkdir(exist_ok=True)
    kinds = ["depth", "vis"]
    if args.rss_child:
        with DavidRuntime(args.tiny, resolution=512) as rt:
            frames = run_clip(rt, Path(args.rss_child), clip_options(args.preset, args.batch, kinds), out)["frames"]
        print(f"frames {frames}", file=sys.stderr)
        print(peak_rss_self())
        return
    results: Dict[str, Any] = {
        "load_average_start": os.getloadavg(),
        "cpus": os.cpu_count(),
        "preset": args.preset,
        "batch": args.batch,
    }
    opts = clip_options(args.preset, args.batch, kinds)
    register_backend("echo", EchoBackend)
    with DavidRuntime(args.tiny, backend="echo", resolution=512) as rt:
        for label, (h, w) in SIZES.items():
            n = args.frames if label == "720p" else max(8, args.frames // 2)
            clip = synthesise(work / f"clip{label}_{n}.mp4", h, w, n)
            run_clip(rt, clip, opts, out)  # warm-up: the encoders' and resizers' first-use costs
            results[f"a_echo_{label}"] = run_clip(rt, clip, opts, out)
            print(label, "echo", json.dumps(results[f"a_echo_{label}"]), flush=True)
    if args.echo_only:
        print(json.dumps(results, indent=1))
        return
    with DavidRuntime(args.tiny, resolution=512) as rt:
        for label, (h, w) in SIZES.items():
            n = args.frames if label == "720p" else max(8, args.frames // 2)
            clip = synthesise(work / f"clip{label}_{n}.mp4", h, w, n)
            stages = stage_costs(rt, clip, opts, out)
            own = sum(v for k, v in stages.items() if k not in ("model", "open files (per clip)"))
            results[f"a_{label}"] = {
                **run_clip(rt, clip, opts, out),
                "stages_ms": stages,
                "pipeline_cpu_ms_per_frame": round(own, 1),
                "pipeline_fps_bound_2_cores": round(2000 / own, 1),
            }
            print(label, json.dumps(results[f"a_{label}"]), flush=True)
    if args.base:
        clip = synthesise(work / f"clip720p_{args.base_frames}.mp4", 720, 1280, args.base_frames)
        only, e2e = [], []
        with DavidRuntime(args.base, resolution=512) as rt:
            for _ in range(args.rounds):  # taking turns, so the machine's load falls on both alike
                only.append(model_only(rt, clip, args.base_frames, args.batch))
                e2e.append(run_clip(rt, clip, opts, out))
        best_only, best = max(only), max(e2e, key=lambda r: r["fps"])
        results["b_base_720p"] = {
            "model_only_fps": only,
            "end_to_end_fps": [r["fps"] for r in e2e],
            "ratio_of_best": best["fps"] / best_only,
            "model_share_of_end_to_end_wall": [r["model_s"] / r["wall_s"] for r in e2e],
        }
        print("base", json.dumps(results["b_base_720p"]), flush=True)
    short = synthesise(work / "clip720p_30.mp4", 720, 1280, 30)
    long = synthesise(work / "clip720p_300.mp4", 720, 1280, 300)
    results["c_peak_rss_mib"] = {"30 frames": peak_rss_child(args, short), "300 frames": peak_rss_child(args, long)}
    print("rss", json.dumps(results["c_peak_rss_mib"]), flush=True)
    results["load_average_end"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
