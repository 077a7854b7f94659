"""Batch prediction on a local Ray cluster (2 CPUs) with the tiny model: the same files as a local
`david-infer predict`, a worker killed mid-task, reruns that skip, and the CLI's --ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

from david_infer.cli import main  # noqa: E402
from david_infer.distributed import predict_dataset  # noqa: E402
from david_infer.errors import BackendUnavailable  # noqa: E402
from tests.support import REPO, ray_faults  # noqa: E402

RES = 64


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A local 2-CPU Ray cluster for this module; its workers load the dying test backend."""
    faults = tmp_path_factory.mktemp("faults")
    marker = faults / "die-once"
    ray_faults.install()  # the driver opens the model once to check it
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        runtime_env=ray_faults.runtime_env(str(marker), 3, str(faults / "calls.log")),
    )
    yield marker
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven images (PNG, JPEG, gray, a .npy array, odd sizes) and one corrupt file."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 30), (32, 48), (50, 50), (24, 70), (64, 40)]):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        img.save(folder / (f"p{i}.png" if i % 2 == 0 else f"p{i}.jpg"))
    Image.fromarray(rng.integers(0, 256, (36, 28), dtype=np.uint8)).save(folder / "gray.png")
    np.save(folder / "arr.npy", rng.random((30, 44, 3), dtype=np.float32))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    return folder


@pytest.fixture(scope="module")
def reference(inputs: Path, tiny_multitask_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a local `david-infer predict` writes for the inputs."""
    out = tmp_path_factory.mktemp("local")
    assert (
        main(
            [
                "predict",
                str(inputs),
                "-m",
                str(tiny_multitask_onnx),
                "-o",
                str(out),
                "--resolution",
                str(RES),
                "--no-progress",
            ]
        )
        == 1
    )  # broken.png fails
    return out


def _contents(folder: Path) -> Dict[str, bytes]:
    """Each file's bytes by name; completion records without their stamps (each file's inode and
    times, which differ between two writes of the same bytes)."""
    return {
        p.name: _unstamped(p) if p.name.endswith(".done.json") else p.read_bytes() for p in sorted(folder.iterdir())
    }


def _unstamped(record: Path) -> bytes:
    doc = json.loads(record.read_text())
    for entry in [*doc["files"].values(), doc["source"] or {}]:
        entry.pop("stamp", None)
    return json.dumps(doc, sort_keys=True).encode()


def _run(inputs: object, model: Path, out: Path, **kwargs: object):
    return predict_dataset(inputs, model, out, resolution=RES, **kwargs)


def test_same_files_as_local_predict_and_rerun_skips(
    cluster: Path, inputs: Path, reference: Path, tiny_multitask_onnx: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ray"
    summary = _run(inputs, tiny_multitask_onnx, out, workers=2, task_size=3, batch_size=2)
    images = sorted(str(p) for p in inputs.iterdir() if p.name != "broken.png")
    assert sorted(summary.written) == images and summary.skipped == []
    assert [name for name, _ in summary.failed] == [str(inputs / "broken.png")]
    assert "not an image format Pillow can read" in summary.failed[0][1]
    expected = _contents(reference)
    # depth, normal (png + npy each), foreground, cutout, vis and the completion record
    assert len(expected) == 7 * 8 and sum(name.endswith(".done.json") for name in expected) == 7
    assert _contents(out) == expected  # same names, byte for byte (.npy, .png, records)

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = _run(inputs, tiny_multitask_onnx, out, workers=2)
    assert again.written == [] and sorted(again.skipped) == images
    assert [name for name, _ in again.failed] == [str(inputs / "broken.png")]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


def test_worker_killed_mid_task_is_replaced_and_nothing_lost(
    cluster: Path, inputs: Path, reference: Path, tiny_multitask_onnx: Path, tmp_path: Path
) -> None:
    cluster.write_text("die on the 3rd model call")  # the first worker to reach it exits, once
    out = tmp_path / "killed"
    files: List[str] = [str(p) for p in sorted(inputs.iterdir()) if p.name != "broken.png"]
    # one task of 4 inputs per worker call, one image per model call: the death comes after the
    # task's first two inputs were written, so its retry must find them complete
    summary = _run(
        files,
        tiny_multitask_onnx,
        out,
        backend="dying-onnxruntime",
        workers=2,
        task_size=4,
        max_restarts=2,
        max_task_retries=2,
    )
    assert not cluster.exists(), "no worker died: the fault was not injected"
    calls = (cluster.parent / "calls.log").read_text().split()
    # 7 inputs plus what the dead process ran without writing: its 3rd call, and its 2nd when that
    # input was not written yet. Its 1st input was written before the 3rd call (imap keeps at most
    # 2 batches in flight), so redoing the task from scratch would make 10 calls.
    assert 8 <= len(calls) <= 9
    assert sorted(summary.written) == sorted(files) and summary.failed == [] and summary.skipped == []
    assert _contents(out) == _contents(reference)  # every input complete; no temporary file left


def _predictor_processes() -> List[int]:
    """Live processes of our Ray actors (their process title names the predictor class)."""
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"DavidPredictor" in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


# a driver connecting to the test cluster with the slow test backend, then running the CLI
_KILLED_DRIVER = """
import sys
sys.path.insert(0, sys.argv[1])
import ray
from tests.support import ray_faults
ray_faults.install()
ray.init(address=sys.argv[2], log_to_driver=False, logging_level="ERROR",
         runtime_env=ray_faults.runtime_env("", 0, sys.argv[3], slow_s=1.0))
from david_infer.cli import main
sys.exit(main(["predict", *sys.argv[4:]]))
"""


def test_rerun_after_the_whole_job_was_killed(
    cluster: Path, inputs: Path, reference: Path, tiny_multitask_onnx: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    files = [str(p) for p in sorted(inputs.iterdir()) if p.name != "broken.png"]
    argv = [
        sys.executable,
        "-c",
        _KILLED_DRIVER,
        str(REPO),
        ray.get_runtime_context().gcs_address,
        str(tmp_path / "calls.log"),
        *files,
        "-m",
        str(tiny_multitask_onnx),
        "-o",
        str(out),
        "--resolution",
        str(RES),
        "--backend",
        "dying-onnxruntime",
        "--ray",
        "--workers",
        "2",
        "--no-progress",
    ]
    driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*.done.json")) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert driver.poll() is None, f"the job ended before it could be killed: {driver.stderr.read().decode()}"
    finally:
        driver.kill()  # SIGKILL: no cleanup in the driver; Ray ends the job's workers
        driver.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _predictor_processes() and time.monotonic() < deadline:
        time.sleep(0.1)  # Ray ends the dead driver's actors shortly after
    assert not _predictor_processes()
    done_before = {p.name for p in out.glob("*.done.json")}
    assert 1 <= len(done_before) < len(files)

    summary = _run(files, tiny_multitask_onnx, out, workers=2)
    assert len(summary.skipped) >= len(done_before) and not summary.failed
    assert sorted(summary.written + summary.skipped) == sorted(files)
    assert _contents(out) == _contents(reference)  # complete, identical, no temporary left


def test_dataset_input_and_cli(
    cluster: Path,
    inputs: Path,
    reference: Path,
    tiny_multitask_onnx: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    images = [str(p) for p in sorted(inputs.iterdir()) if p.name != "broken.png"]
    dataset = ray.data.read_binary_files(images, include_paths=True)
    summary = _run(dataset, tiny_multitask_onnx, tmp_path / "ds", save=["depth"], workers=1)
    assert sorted(summary.written) == images and not summary.failed
    written = _contents(tmp_path / "ds")
    assert {k: v for k, v in written.items() if ".depth." in k} == {
        k: v for k, v in _contents(reference).items() if ".depth." in k
    }
    assert sorted(written) == sorted(
        [f"{Path(p).stem}{s}" for p in images for s in (".depth.png", ".depth.npy", ".done.json")]
    )

    out = tmp_path / "cli"
    argv = [
        "predict",
        str(inputs),
        "-m",
        str(tiny_multitask_onnx),
        "-o",
        str(out),
        "--resolution",
        str(RES),
        "--no-progress",
        "--save",
        "normal",
        "--ray",
        "--workers",
        "2",
    ]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert f"7 of 8 input(s) written to {out}" in captured.out
    assert f"1 input(s) failed:\n  {inputs / 'broken.png'}: not an image format" in captured.err
    assert {k: v for k, v in _contents(out).items() if not k.endswith(".done.json")} == {
        k: v for k, v in _contents(reference).items() if ".normal." in k
    }


# a driver on the test cluster predicting a Dataset with the default workers (one per CPU)
_DATASET_DRIVER = """
import sys
import ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
from david_infer.distributed import predict_dataset
dataset = ray.data.read_binary_files(sys.argv[4:], include_paths=True)
summary = predict_dataset(dataset, sys.argv[2], sys.argv[3], resolution=64, save=["depth"])
print(len(summary.written), len(summary.failed))
"""


def test_dataset_input_with_default_workers_finishes(
    cluster: Path, inputs: Path, tiny_multitask_onnx: Path, tmp_path: Path
) -> None:
    """A pool of one actor per CPU left the Dataset's read tasks (1 CPU each) no CPU: it never ended."""
    images = [str(p) for p in sorted(inputs.iterdir()) if p.name != "broken.png"]
    argv = [sys.executable, "-c", _DATASET_DRIVER, ray.get_runtime_context().gcs_address]
    done = subprocess.run(
        [*argv, str(tiny_multitask_onnx), str(tmp_path / "out"), *images], capture_output=True, timeout=180
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().split() == [str(len(images)), "0"]


def test_bad_ray_address_and_options(
    cluster: Path, inputs: Path, tiny_multitask_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["predict", str(inputs), "-m", str(tiny_multitask_onnx), "-o", str(tmp_path / "x")]
    assert main([*base, "--ray", "photos"]) == 1
    assert "--ray: expected no address, 'auto', 'local', HOST:PORT" in capsys.readouterr().err
    assert main([*base, "--workers", "2"]) == 1
    assert "--workers applies to --ray runs only" in capsys.readouterr().err
    assert main([*base, "--ray", "--save", "ply,bogus"]) == 1
    assert "unknown kind(s) bogus" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before any output or work


def test_missing_ray_names_the_extra(
    inputs: Path, tiny_multitask_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if not installed
    with pytest.raises(BackendUnavailable, match=r'pip install "david-infer\[ray\]"'):
        predict_dataset(inputs, tiny_multitask_onnx, tmp_path / "out")


def test_video_inputs_are_refused_before_the_cluster(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    """Clips are decoded frame by frame on one machine: a --ray run lists them as failed with the
    way to run them, before any cluster or model is touched."""
    pytest.importorskip("av")
    from tests.support.video_clips import make_clip

    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=3)
    summary = _run([str(clip)], tiny_multitask_onnx, tmp_path / "out")
    assert summary.written == [] and [name for name, _ in summary.failed] == [str(clip)]
    assert "predicted locally (david-infer predict without --ray)" in summary.failed[0][1]
    assert not (tmp_path / "out").exists()


def test_the_local_cluster_stays_on_loopback(cluster: Path) -> None:
    """The test cluster talks over 127.0.0.1 only (tests/conftest.py sets Ray's one-machine mode)."""
    assert {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]} == {"127.0.0.1"}
