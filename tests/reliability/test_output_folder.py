"""One run owns an output folder: real `david-infer predict` processes on one folder, a lock left by
a killed process, and the temporaries such a process leaves behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest
from PIL import Image

from david_infer.jobs import OUTPUT_LOCK
from david_infer.outputs.images import IMAGE_KINDS
from david_infer.outputs.lock import InUse, OwnerLock
from david_infer.outputs.sets import RECORD_SUFFIX, TEMP_SUFFIX
from tests.support import wait_for

KINDS = ["depth", "foreground"]


def _images(folder: Path, count: int, size: int) -> List[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"p{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _command(inputs: Path, model: Path, out: Path) -> List[str]:
    return [
        *(sys.executable, "-m", "david_infer", "predict", str(inputs), "-m", str(model), "-o", str(out)),
        *("--resolution", "64", "--no-progress", "--save", ",".join(KINDS)),
    ]


def _written(stdout: str) -> int:
    match = re.search(r"^(\d+) of \d+ input\(s\) written", stdout, re.M)
    assert match, stdout
    return int(match.group(1))


def _settle(procs: List[subprocess.Popen]) -> List[tuple]:
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            results.append((proc.returncode, out.decode(), err.decode()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    return results


def test_three_runs_started_together_write_each_input_once(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    paths = _images(tmp_path / "in", 12, size=96)
    out = tmp_path / "out"
    cmd = _command(tmp_path / "in", tiny_multitask_onnx, out)
    results = _settle([subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)])
    # the old code: all three wrote (work done two or three times), one run's cleanup deleted
    # another's live temporaries (FileNotFoundError), and "12 of 12 written" with another run's records
    written = 0
    for rc, stdout, stderr in results:
        if rc == 0:
            written += _written(stdout)
        else:  # refused: the folder was owned by a run that was still going
            assert rc == 1 and "is in use by another run: PID" in stderr, stderr
            assert "Traceback" not in stderr
    assert written == len(paths)  # each input written once, by one run
    assert all(IMAGE_KINDS.set(out, p.stem, KINDS).is_complete(verify=True, source=p) for p in paths)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_a_second_run_is_refused_naming_the_owner(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    paths = _images(tmp_path / "in", 24, size=160)
    out = tmp_path / "out"
    cmd = _command(tmp_path / "in", tiny_multitask_onnx, out)
    owner = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: len(list(out.glob(f"*{RECORD_SUFFIX}"))) >= 1, timeout=60), (
            "the first run wrote nothing"
        )
        late = subprocess.run(cmd, capture_output=True, timeout=60)
    finally:
        ((code, stdout, stderr),) = _settle([owner])
    said = late.stderr.decode()
    assert late.returncode == 1, said
    assert f"the output folder {out} is in use by another run: PID {owner.pid} on {socket.gethostname()}" in said
    assert "wait for it to finish, or choose another" in said
    assert code == 0 and _written(stdout) == len(paths), stderr
    assert all(IMAGE_KINDS.set(out, p.stem, KINDS).is_complete(verify=True) for p in paths)
    assert not (out / OUTPUT_LOCK).exists()


_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from david_infer.jobs import output_folder_lock
from david_infer.outputs.images import IMAGE_KINDS
out = Path(sys.argv[1])
lock = output_folder_lock(out)
lock.acquire()
for name in ("p00", "gone"):  # a complete set's name, and an input that is not in the next run
    for final in IMAGE_KINDS.set(out, name, ["depth"]).files:
        IMAGE_KINDS.set(out, name, ["depth"]).temporary(final).write_bytes(b"half a file" * 1000)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_runs_lock_is_taken_over_and_its_temporaries_removed(
    tiny_multitask_onnx: Path, tmp_path: Path
) -> None:
    paths = _images(tmp_path / "in", 3, size=48)
    out = tmp_path / "out"
    cmd = _command(tmp_path / "in", tiny_multitask_onnx, out)
    first = subprocess.run(cmd, capture_output=True, timeout=120)
    assert first.returncode == 0, first.stderr.decode()
    # a run killed with SIGKILL while it held the folder and was writing
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(out)], capture_output=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    left = [p for p in out.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    assert len(left) == 4 and (out / OUTPUT_LOCK).exists()
    again = subprocess.run(cmd, capture_output=True, timeout=120)
    assert again.returncode == 0, again.stderr.decode()
    assert "0 of 3 input(s) written" in again.stdout.decode() and "3 skipped" in again.stdout.decode()
    # nothing to redo, yet what the killed run left is gone (the old code left it, 7 files / 3.5 MB seen)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert all(IMAGE_KINDS.set(out, p.stem, KINDS).is_complete(verify=True) for p in paths)


def test_the_lock_names_its_holder_and_is_released(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    with OwnerLock(path, "the folder x") as held:
        assert held.held and str(os.getpid()) in held.owner()
        other = OwnerLock(path, "the folder x")  # another open file: as another process would see it
        with pytest.raises(InUse, match=rf"the folder x is in use by another run: PID {os.getpid()} on "):
            other.acquire()
        assert not other.held
    assert not path.exists()
    assert OwnerLock(path, "the folder x").acquire()  # free again


def test_a_waiting_lock_is_taken_once_its_holder_lets_go(tmp_path: Path) -> None:
    """What two downloads of one model do (david_infer.zoo): the second waits, then holds the lock."""
    import threading

    path = tmp_path / "m.onnx.lock"
    events: List[str] = []
    holder = OwnerLock(path, "the download of m.onnx", wait=True)
    assert holder.acquire()
    waiter = OwnerLock(path, "the download of m.onnx", wait=True)

    def wait() -> None:
        waiter.acquire()
        events.append("acquired")

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.3)
    events.append("released")
    holder.release()
    thread.join(timeout=10)
    assert events == ["released", "acquired"] and waiter.held
    waiter.release()
    assert not path.exists()
