"""The runtime's pre/postprocessing (the graph stages) gives the same bits in any environment: BLAS
thread settings (OMP_NUM_THREADS / OPENBLAS_NUM_THREADS, which a Ray worker sets to 1), `threads`
(the stages' ONNX Runtime threads and the finishing pool), batch size. Each configuration runs in
its own process, since a BLAS library reads those variables once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image

# A small photo at a large model resolution: the maps are shrunk from 1024 to 40x30, products big
# enough that a BLAS library would run them on several threads (where its rounding changes).
_SCRIPT = """
import hashlib, json, sys
from david_infer import DavidRuntime
model, threads, batch, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
out = {}
with DavidRuntime(model, resolution=1024, threads=threads, intra_op_threads=1) as runtime:
    for name, pred in runtime.imap(files, batch_size=batch):
        for task in ("depth", "normal", "foreground"):
            out[name + ":" + task] = hashlib.sha256(getattr(pred, task).tobytes()).hexdigest()
print(json.dumps(out))
"""


def _maps(model: Path, files: list, blas_threads: int, threads: int, batch: int) -> Dict[str, str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(blas_threads),
        "OPENBLAS_NUM_THREADS": str(blas_threads),
        "MKL_NUM_THREADS": str(blas_threads),
    }
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(model), str(threads), str(batch), *map(str, files)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    paths = []
    for i, (h, w) in enumerate([(40, 30), (24, 70), (64, 40)]):
        paths.append(folder / f"p{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_maps_are_bit_identical_whatever_the_blas_threads_workers_and_batch(
    tiny_multitask_onnx: Path, photos: list
) -> None:
    one = _maps(tiny_multitask_onnx, photos, blas_threads=1, threads=1, batch=1)
    assert len(one) == 3 * 3
    assert _maps(tiny_multitask_onnx, photos, blas_threads=2, threads=1, batch=1) == one
    assert _maps(tiny_multitask_onnx, photos, blas_threads=2, threads=3, batch=3) == one


@pytest.mark.parametrize("pipeline", ["antialias", "official"])
def test_the_pre_graph_gives_the_same_bits_on_one_thread_or_four(pipeline: str) -> None:
    """The pre graph runs on `threads` ONNX Runtime threads (the post graphs on one each): its
    feeds must not depend on that number, at sizes where ONNX Runtime does split the work."""
    import onnxruntime as ort

    from david_infer.stages.builder import GraphSpec, build_pre

    graph = build_pre(GraphSpec(pipeline, 512, 384), "image", "vit").SerializeToString()

    def session(threads: int) -> "ort.InferenceSession":
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    one, four = session(1), session(4)
    rng = np.random.default_rng(11)
    for h, w in [(720, 1280), (333, 517), (1500, 90), (600, 600)]:
        photo = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        for a, b in zip(one.run(None, {"photo": photo}), four.run(None, {"photo": photo})):
            assert a.shape == b.shape and a.tobytes() == b.tobytes(), (pipeline, h, w)
