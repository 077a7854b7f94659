"""The import contracts of `.importlinter` hold: one stack from the CLI down to config and errors, the
backends apart from each other, video I/O apart from rendering; and every module is placed in the
stack."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO
from tools import check_layers

TOOL = REPO / "tools" / "check_layers.py"


def test_import_contracts_are_kept() -> None:
    pytest.importorskip("importlinter.cli", reason='import-linter is not installed; pip install -e ".[dev]"')
    result = subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_every_module_is_placed(tmp_path: Path) -> None:
    assert check_layers.unplaced() == []
    package = tmp_path / "david_infer"
    shutil.copytree(REPO / "david_infer", package, ignore=shutil.ignore_patterns("__pycache__", "web_static"))
    (package / "brand_new.py").write_text("")
    (package / "backends" / "onnxruntime" / "extra.py").write_text("")  # covered by its layer
    assert check_layers.unplaced(package) == ["david_infer.brand_new"]
