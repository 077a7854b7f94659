"""The import contracts of `.importlinter` hold: the manifest below the contract, the output
package's layers, video I/O apart from rendering, library code (the job layer, runtime
options, Ray, serving) below the CLI and its commands, runtime options below the jobs."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    cli = pytest.importorskip("importlinter.cli", reason='import-linter is not installed; pip install -e ".[dev]"')
    monkeypatch.chdir(REPO)
    code = cli.lint_imports(config_filename=str(REPO / ".importlinter"), no_cache=True)
    report = capsys.readouterr().out
    assert code == 0, report
    assert "6 kept, 0 broken" in report
