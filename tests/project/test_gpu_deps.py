"""benchmarks/gpu_deps.py: the majors check on pip reports, and the table in docs/gpu.md it guards.

pip itself is not run here (tests stay on loopback); the committed report is what it produced.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict

import pytest

from benchmarks import gpu_deps  # noqa: E402
from david_infer.backends import gpu as _ort  # noqa: E402
from tests.support import REPO as ROOT

ORT_CU13 = ['nvidia-cuda-runtime~=13.0; extra == "cuda"', 'nvidia-cudnn-cu13~=9.0; extra == "cudnn"']


def _resolution(**versions: str) -> Dict[str, Any]:
    """What resolve_extra returns: pip report entries by normalised name."""
    packages = {
        name.replace("_", "-"): {"version": v, "requires_dist": ORT_CU13 if name == "onnxruntime_gpu" else []}
        for name, v in versions.items()
    }
    return {"requirements": [], "joint": True, "packages": packages, "unresolved": []}


GOOD = dict(
    onnxruntime_gpu="1.31.1",
    tensorrt_cu13="10.16.1.11",
    cuda_python="13.4.4",
    cuda_bindings="13.4.4",
    nvidia_cuda_runtime="13.5.37",
    nvidia_cudnn_cu13="9.28.1.4",
    numpy="2.4.6",
)


def test_coherent_set_agrees() -> None:
    result = gpu_deps.analyse("gpu", _resolution(**GOOD))
    assert result["agree"], result["problems"]
    assert "numpy" not in result["versions"] and result["versions"]["tensorrt-cu13"] == "10.16.1.11"


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"tensorrt_cu13": "11.4.0.106"}, "tensorrt: tensorrt-cu13 gives 11, the table says 10"),
        ({"cuda_python": "12.9.10", "cuda_bindings": "12.9.10"}, "cuda: cuda-python gives 12, the table says 13"),
        ({"nvidia_cudnn_cu13": "8.9.7"}, "cudnn: nvidia-cudnn-cu13 gives 8, the table says 9"),
    ],
)
def test_disagreeing_major_is_named(change: Dict[str, str], problem: str) -> None:
    result = gpu_deps.analyse("gpu", _resolution(**{**GOOD, **change}))
    assert not result["agree"] and problem in result["problems"]


def test_cuda12_packages_in_the_cuda13_extra() -> None:
    versions = dict(GOOD)
    versions.pop("tensorrt_cu13")
    versions["tensorrt_cu12"] = "10.16.1.11"
    result = gpu_deps.analyse("gpu", _resolution(**versions))
    assert "cuda: tensorrt-cu12 (name suffix) gives 12, the table says 13" in result["problems"]


def test_missing_package_is_a_problem() -> None:
    versions = dict(GOOD)
    versions.pop("nvidia_cudnn_cu13")
    result = gpu_deps.analyse("gpu", _resolution(**versions))
    assert "cudnn: nvidia-cudnn is missing from the resolution" in result["problems"]


def test_wheel_facts_are_checked() -> None:
    facts = {"tensorrt_provider_links": 11, "cudart_links": 13, "cudnn_links": 9}
    result = gpu_deps.analyse("gpu", _resolution(**GOOD), facts)
    assert result["problems"] == [
        "tensorrt: libnvinfer.so.N of onnxruntime-gpu's TensorRT provider gives 11, the table says 10"
    ]


def test_failing_package_from_pip_output() -> None:
    out = (
        "Collecting tensorrt-cu13<11\n  Downloading tensorrt_cu13-10.16.1.11.tar.gz\nCollecting "
        "tensorrt_cu13_libs==10.16.1.11\n  Preparing metadata (pyproject.toml): finished with status 'error'\n"
    )
    assert gpu_deps.failing_package(out) == "tensorrt_cu13_libs"


def test_docs_table_matches_the_script_and_the_errors() -> None:
    readme = (ROOT / "docs" / "gpu.md").read_text()
    for extra, want in gpu_deps.EXPECTED.items():
        row = re.search(rf"^\| `{re.escape(extra)}` \|.*$", readme, re.M)
        assert row, f"docs/gpu.md has no row for [{extra}]"
        cells = [c.strip() for c in row.group(0).strip("|").split("|")]
        assert cells[3:6] == [
            str(want["cuda"]),
            str(want["cudnn"]),
            f"{want['tensorrt']} (`libnvinfer.so.{want['tensorrt']}`)",
        ]
        assert cells[-1] == want["driver"]
        assert cells[6].startswith(f"`{_ort.TENSORRT_PACKAGE[want['cuda']]}>={want['tensorrt']}")
        assert _ort.GPU_EXTRA[want["cuda"]] == extra
        assert want["driver"] == f">= {_ort.MIN_DRIVER[want['cuda']]}"


def test_committed_report_agrees() -> None:
    report = json.loads((ROOT / "benchmarks" / "results" / "gpu_deps.json").read_text())
    assert report["agree"] and {r["extra"] for r in report["extras"]} == set(gpu_deps.EXPECTED)
    for r in report["extras"]:
        assert r["versions"].get("onnxruntime-gpu") and any(n.startswith("tensorrt") for n in r["versions"])
