"""The import contracts of `.importlinter` hold over the package as installed (export/ placed as
david_infer.export): one stack from the CLI down to config and errors, the backends apart from
each other, video I/O apart from rendering; and every module is placed in the stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "tools" / "check_layers.py"


def _check() -> subprocess.CompletedProcess:
    pytest.importorskip("importlinter.cli", reason='import-linter is not installed; pip install -e ".[dev]"')
    return subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept() -> None:
    result = _check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_every_module_is_placed_and_export_is_seen(tmp_path: Path) -> None:
    sys.path.insert(0, str(TOOL.parent))
    try:
        import check_layers
    finally:
        sys.path.remove(str(TOOL.parent))
    package = check_layers.installed_tree(tmp_path)
    assert (package / "export" / "prepost.py").is_file()  # export/ sits where pip installs it
    assert check_layers.unplaced(package) == []
    (package / "brand_new.py").write_text("")
    (package / "backends" / "onnxruntime" / "extra.py").write_text("")  # covered by its layer
    assert check_layers.unplaced(package) == ["david_infer.brand_new"]
