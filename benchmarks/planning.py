"""What a rerun costs before the model: collecting, naming and planning N inputs that are all complete.

Writes N small photos into one folder with their complete output sets beside them (the output
folder is the input folder, so collection also leaves every output out), then times
`jobs.gather_inputs` + `jobs.plan` over several rounds, and reports the median per input, twice:

- `untouched`: every input and file as written (each set's record read, the input's and each
  file's stamp compared: no file is read);
- `touched`: every input and output file touched (`os.utime`, as a copy without -p would), so no
  stamp matches and every input and file is re-hashed (SHA-256) before it counts as complete.

No model is involved: the sets are written from synthetic maps with
`outputs.images.write_outputs`, as `predict` writes them.

    python benchmarks/planning.py --inputs 2000 --rounds 5
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

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from benchmarks.prologue import RESULTS
from david_infer.files import atomic_write_bytes
from david_infer.jobs import Tally, gather_inputs, plan
from david_infer.outputs.images import write_outputs
from david_infer.outputs.sets import WriteOptions
from david_infer.prediction import Prediction

KINDS = ["depth", "foreground", "vis"]


def make_folder(folder: Path, count: int, options: WriteOptions) -> None:
    """`count` 32x32 photos, each with its complete set of KINDS."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    pred = Prediction(
        photo, depth=rng.random((32, 32), dtype=np.float32), foreground=rng.random((32, 32), dtype=np.float32)
    )
    for i in range(count):
        path = folder / f"img{i:05d}.png"
        Image.fromarray(photo).save(path)
        write_outputs(pred, folder, path.stem, KINDS, options, source=path)


def time_planning(folder: Path, options: WriteOptions) -> tuple:
    """Seconds for one rerun's planning, and the tally (every input must be skipped)."""
    start = time.perf_counter()
    jobs, _ = gather_inputs([str(folder)], False, folder, lambda text: None)
    tally = Tally()
    todo = plan(jobs, folder, KINDS, options, overwrite=False, tally=tally)
    return time.perf_counter() - start, len(jobs), todo, tally


def _rounds(folder: Path, options: WriteOptions, args: argparse.Namespace) -> list:
    """Seconds of each round's planning (every input must be skipped)."""
    times = []
    for _ in range(args.rounds):
        seconds, count, todo, tally = time_planning(folder, options)
        assert count == args.inputs and not todo and tally.skipped == args.inputs and not tally.failures
        times.append(seconds)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=RESULTS / "planning.json")
    args = parser.parse_args()
    options = WriteOptions(extra={"model": "synthetic"})
    with tempfile.TemporaryDirectory(prefix="david-planning-") as tmp:
        folder = Path(tmp)
        make_folder(folder, args.inputs, options)
        files = sum(1 for _ in folder.iterdir())
        untouched = _rounds(folder, options, args)
        for path in folder.iterdir():  # a new modification time: no stamp matches any more
            os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1000))
        touched = _rounds(folder, options, args)
    result = {"inputs": args.inputs, "files_in_folder": files, "rounds": args.rounds, "kinds": KINDS}
    for label, times in (("untouched", untouched), ("touched", touched)):
        median = statistics.median(times)
        result[label] = {
            "median_s": round(median, 4),
            "per_input_us": round(median / args.inputs * 1e6, 1),
            "all_s": [round(t, 4) for t in times],
        }
        print(
            f"{args.inputs} complete inputs ({files} files in the folder), {label}: planning a rerun took "
            f"{median:.3f} s (median of {args.rounds}), {result[label]['per_input_us']} us per input"
        )
    atomic_write_bytes(args.json, (json.dumps(result, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
