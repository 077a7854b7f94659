"""A full output folder: a small tmpfs mounted by the test in its own user and mount namespaces
(`unshare -rm`: gone with the process, the machine's disks untouched), and a file size limit
(RLIMIT_FSIZE) set in the subprocess alone."""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest
from PIL import Image

KINDS = "depth,normal,foreground"


def _images(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"p{i:02d}.png")


def _predict(inputs: Path, model: Path, out: Path) -> List[str]:
    return [
        *(sys.executable, "-m", "david_infer", "predict", str(inputs), "-m", str(model), "-o", str(out)),
        *("--resolution", "64", "--no-progress", "--save", KINDS),
    ]


def _can_mount_in_a_namespace() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


_SCRIPT = r"""
set -u
mount -t tmpfs -o size=1m tmpfs "$OUT" || exit 99
$PREDICT > "$LOG/first.out" 2> "$LOG/first.err"; echo $? > "$LOG/first.rc"
ls -A "$OUT" > "$LOG/first.ls"
mount -o remount,size=64m "$OUT"  # space freed
$PREDICT > "$LOG/second.out" 2> "$LOG/second.err"; echo $? > "$LOG/second.rc"
ls -A "$OUT" > "$LOG/second.ls"
"$PYTHON" -c "
import sys
from pathlib import Path
from david_infer.outputs.images import IMAGE_KINDS
names = [p.stem for p in Path(sys.argv[1]).iterdir()]
done = [IMAGE_KINDS.set(sys.argv[2], n, sys.argv[3].split(',')).is_complete(verify=True) for n in names]
print(sum(done), len(done))
" "$IN" "$OUT" "$KINDS" > "$LOG/check.out"
"""


@pytest.mark.skipif(
    not _can_mount_in_a_namespace(), reason="unshare -rm (user and mount namespaces) is not allowed here"
)
def test_a_full_file_system_stops_the_run_at_once_and_the_rerun_resumes(
    tiny_multitask_onnx: Path, tmp_path: Path
) -> None:
    inputs, out, log = tmp_path / "in", tmp_path / "out", tmp_path / "log"
    _images(inputs, 12, size=128)
    out.mkdir()
    log.mkdir()
    env = {
        "OUT": str(out),
        "IN": str(inputs),
        "LOG": str(log),
        "KINDS": KINDS,
        "PYTHON": sys.executable,
        "PREDICT": " ".join(_predict(inputs, tiny_multitask_onnx, out)),
    }
    import os

    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", _SCRIPT], env={**os.environ, **env}, capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode()
    first_err = (log / "first.err").read_text()
    # the old code ran every input through the model and listed 12 raw "OSError: [Errno 28]" or
    # "OSError: 442368 requested and 109536 written" failures
    assert (log / "first.rc").read_text().strip() == "1", first_err
    assert f"stopped: the output folder {out} is full: no space is left on its file system" in first_err
    assert "MB per input; free that much for each input left" in first_err
    assert "then run the same command again to resume" in first_err and "nothing partial was left" in first_err
    said = [line for line in first_err.splitlines() if ": warning: " not in line]  # the empty-mask warnings aside
    assert "Traceback" not in first_err and "Errno" not in first_err and len(said) <= 2, first_err
    listed = (log / "first.ls").read_text().split()
    assert not [name for name in listed if name.startswith(".")], listed  # no temporaries, no lock
    complete = [n for n in listed if n.endswith(".done.json")]
    assert 1 <= len(complete) < 12 and f"{len(complete)} of 12 input(s) are complete" in first_err
    # space freed: the same command finishes the rest
    assert (log / "second.rc").read_text().strip() == "0", (log / "second.err").read_text()
    second = (log / "second.out").read_text()
    assert f"{12 - len(complete)} of 12 input(s) written" in second and f"{len(complete)} skipped" in second
    assert (log / "check.out").read_text().split() == ["12", "12"]
    assert not [name for name in (log / "second.ls").read_text().split() if name.startswith(".")]


def test_a_file_size_limit_stops_the_run_with_one_message(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    _images(inputs, 6, size=160)  # normal.npy: 160 x 160 x 3 float32 = 307 kB, over the limit

    def limit() -> None:  # in the child only
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    done = subprocess.run(
        _predict(inputs, tiny_multitask_onnx, out), capture_output=True, timeout=120, preexec_fn=limit
    )
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert f"stopped: the output folder {out} is full: a file reached the file size limit (ulimit -f)" in err
    assert "more than" in err and "0 of 6 input(s) are complete" in err
    assert "Traceback" not in err and err.count("\n") <= 2
    assert sorted(p.name for p in out.iterdir()) == []  # nothing partial, no lock left
