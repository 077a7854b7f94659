"""The second pass per person (`refine`): model pixels per person pixel before and after, and the
time of both passes, on two scenes made from real photos (scikit-image's public-domain samples):

  4K, one small person  coffee upscaled to 3840 x 2160, the astronaut (her portrait crop) pasted
                        in 205 x 360 pixels
  group of five         coffee upscaled to 3600 x 1200, five astronauts of 370 x 650 pixels
                        standing apart (their padded boxes do not touch, so none are merged)

The people are given as boxes (where they were pasted: `predict(photo, boxes=...)`): a model with
random weights finds nobody in its mask, and the boxes make the geometry exact. The geometry does
not depend on the weights; the time does not either (a random-weight export of the variant runs
the same network). Per scene:

  model px per person px  pass 1's and pass 2's model pixels per pixel of the person's box
                          (scale squared), mean over the people; and the model pixels each person got
  time                    median of --repeat runs: pass 1 alone (`predict(photo)`) and both passes
                          (`predict(photo, boxes=...)`), and their ratio; model runs in all

It also writes a picture of the regions on the group photo (docs/refine.jpg with --picture; the
regions do not depend on the model either).

    python benchmarks/refine.py [--variant base] [--resolution 512] [--repeat 3] [--json out.json] [--picture docs/refine.jpg]

Numbers depend on the machine's load; the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first
from david_infer import DavidRuntime  # noqa: E402
from david_infer.visualize import draw_regions  # noqa: E402

Box = Tuple[int, int, int, int]


def scenes() -> Dict[str, Tuple[np.ndarray, List[Box]]]:
    """name -> (photo (H, W, 3) uint8, the people's boxes)."""
    from skimage import data

    coffee, astronaut = data.coffee(), data.astronaut()
    person = Image.fromarray(astronaut[16:496, 120:393])  # 480 x 273: her portrait

    def place(size: Tuple[int, int], boxes: List[Box]) -> np.ndarray:
        photo = np.array(Image.fromarray(coffee).resize(size[::-1], Image.Resampling.LANCZOS))
        for x0, y0, x1, y1 in boxes:
            photo[y0:y1, x0:x1] = np.asarray(person.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS))
        return photo

    one = [(2400, 1500, 2605, 1860)]
    group = [(150 + 700 * i, 400 + 40 * (i % 2), 520 + 700 * i, 1050 + 40 * (i % 2)) for i in range(5)]
    return {
        "4K, one small person": (place((2160, 3840), one), one),
        "group of five": (place((1200, 3600), group), group),
    }


def _median_time(run: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(runtime: DavidRuntime, photo: np.ndarray, boxes: List[Box], repeat: int) -> Dict[str, Any]:
    refined = runtime.predict(photo, boxes=boxes)  # also warms the model up at both sizes
    runtime.predict(photo)
    regions = refined.regions or []
    areas = [(r.box[2] - r.box[0]) * (r.box[3] - r.box[1]) for r in regions]
    before = [r.model_pixels[0] / a for r, a in zip(regions, areas)]
    after = [(r.model_pixels[1] or r.model_pixels[0]) / a for r, a in zip(regions, areas)]
    pass1 = _median_time(lambda: runtime.predict(photo), repeat)
    both = _median_time(lambda: runtime.predict(photo, boxes=boxes), repeat)
    run = sum(r.status != "skipped" for r in regions)
    return {
        "size": list(photo.shape[:2]),
        "people": len(boxes),
        "regions_refined": sum(r.status == "refined" for r in regions),
        "model_px_per_person_px": [statistics.mean(before), statistics.mean(after)],
        "model_px_per_person": [
            statistics.mean(r.model_pixels[0] for r in regions),
            statistics.mean(r.model_pixels[1] or 0 for r in regions),
        ],
        "model_runs": 1 + run,
        "seconds_pass1": pass1,
        "seconds_both": both,
        "time_ratio": both / pass1,
        "regions": [r.as_record() for r in regions],
    }


def table(results: Dict[str, Any]) -> str:
    lines = [
        "| scene | size | model px per person px, pass 1 -> 2 | model px per person, pass 1 -> 2 | model runs | pass 1 | both passes | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["scenes"].items():
        (b, a), (pb, pa) = r["model_px_per_person_px"], r["model_px_per_person"]
        lines.append(
            f"| {name} | {r['size'][1]} x {r['size'][0]} | {b:.4f} -> {a:.3f} ({a / b:.0f}x) | {pb:,.0f} -> {pa:,.0f} "
            f"| {r['model_runs']} | {r['seconds_pass1']:.2f} s | {r['seconds_both']:.2f} s | {r['time_ratio']:.2f} |"
        )
    return "\n".join(lines)


def picture(photo: np.ndarray, regions: List[Any], path: Path, width: int = 1200) -> None:
    """The photo at `width` pixels with the regions outlined (docs/refine.jpg; JPEG or PNG by suffix)."""
    scale = width / photo.shape[1]
    small = np.asarray(Image.fromarray(photo).resize((width, round(photo.shape[0] * scale)), Image.Resampling.LANCZOS))
    Image.fromarray(draw_regions(small, regions, scale)).save(path, quality=85, optimize=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a model file (default: a random-weight export of --variant)")
    p.add_argument("--variant", default="base", help="variant exported when no --model (default base)")
    p.add_argument("--resolution", type=int, default=512, help="model resolution (default 512)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (median; default 3)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--picture", help="write the picture of the regions on the group photo here (.jpg or .png)")
    args = p.parse_args()
    results: Dict[str, Any] = {"load_average_start": os.getloadavg(), "resolution": args.resolution}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from david_infer.export import export_onnx

            model = str(Path(tmp) / f"{args.variant}.onnx")
            export_onnx(args.variant, "multitask", model, seed=0)
        results["model"] = args.model or f"{args.variant} multitask, random weights (seed 0)"
        options = {"intra_op_threads": args.threads} if args.threads else {}
        with DavidRuntime(model, resolution=args.resolution, backend_options=options) as runtime:
            results["scenes"] = {}
            for name, (photo, boxes) in scenes().items():
                results["scenes"][name] = measure(runtime, photo, boxes, args.repeat)
                if args.picture and name.startswith("group"):
                    picture(photo, runtime.predict(photo, boxes=boxes).regions or [], Path(args.picture))
    results["load_average_end"] = os.getloadavg()
    print(json.dumps({k: v for k, v in results.items() if k != "scenes"}, indent=1))
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
