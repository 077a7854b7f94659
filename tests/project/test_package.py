"""The package stays light: importing it and asking the CLI for its version pull in no heavy module."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "torch",
    "onnx",
    "onnxruntime",
    "tensorrt",
    "safetensors",
    "mlserver",
    "tritonclient",
    "grpc",
    "ray",
    "pyarrow",
    "pandas",
    "av",
)


def _loaded_after(code: str) -> set:
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_import_pulls_in_no_heavy_module() -> None:
    assert _loaded_after("import david_infer") == set()


def test_distributed_module_pulls_in_no_heavy_module() -> None:
    assert _loaded_after("import david_infer.distributed") == set()


def test_cli_parser_pulls_in_no_heavy_module() -> None:
    assert _loaded_after("from david_infer.cli import build_parser; build_parser()") == set()


def test_cli_version() -> None:
    import david_infer

    out = subprocess.run([sys.executable, "-m", "david_infer", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.strip() == f"david-infer {david_infer.__version__}"


def test_missing_dependency_gives_install_hint() -> None:
    import pytest

    from david_infer._optional import require
    from david_infer.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable, match=r'pip install "david-infer\[gpu\]"'):
        require("tensorrt", "engines")


def test_the_export_stage_is_installed_one_way_in_every_message_and_page() -> None:
    """The export error named PyTorch's CPU index where the README and docs/install.md install the
    local wheel: one command now, in torch's install hint, the zoo's offline hint and both pages,
    which name PyTorch's CPU index for machines without that wheel (a bare torch from PyPI would be
    the CUDA build on Linux)."""
    from david_infer._optional import EXPORT_INSTALL, TORCH_ELSEWHERE, install_hint
    from david_infer.zoo import offline_hint
    from tests.support import REPO

    assert EXPORT_INSTALL == 'pip install torch==2.13.0 && pip install "david-infer[export]"'
    assert "--index-url https://download.pytorch.org/whl/cpu" in TORCH_ELSEWHERE
    assert install_hint("torch") == f"{EXPORT_INSTALL} ({TORCH_ELSEWHERE})"
    hint = offline_hint("multitask")
    assert f"{EXPORT_INSTALL} && david-infer export --variant base --task multitask -o mt-base.onnx" in hint
    for page in ("README.md", "docs/install.md"):
        text = (REPO / page).read_text(encoding="utf-8")
        assert f"{EXPORT_INSTALL} && david-infer export --variant base --task multitask -o mt-base.onnx" in text, page
        assert "--variant large" not in text.split("## Command line")[0], page


def test_export_stage_installs_inside_the_package(tmp_path) -> None:
    """The export stage is the folder david_infer/export/ in the tree and `david_infer.export` once
    installed (no remapped folders), never a top-level `export` that could shadow (or be shadowed
    by) another package of that name. Run outside the repository, whose folder would otherwise be on
    the path as the current directory."""
    import os

    probe = (
        "import importlib.util, david_infer.export as e\n"
        "from david_infer.export.tensorrt import build_engine\n"
        "print(callable(e.export_onnx), callable(build_engine), importlib.util.find_spec('export'))\n"
        "import david_infer, pathlib\n"
        "print(pathlib.Path(e.__file__).parent == pathlib.Path(david_infer.__file__).parent / 'export')"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "None", "True"]
    bare = subprocess.run(
        [sys.executable, "-c", "import export"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert bare.returncode == 1 and "ModuleNotFoundError: No module named 'export'" in bare.stderr
