"""Check the import contracts of `.importlinter` over the package as it is installed.

import-linter reads a package from its folder, and `export/` is installed as `david_infer.export`
(setup.py's package_dir), so the folder alone hides it: this copies david_infer/ with export/ at
david_infer/export into a temporary folder and runs lint-imports there. It also fails when a
module of the package is named by no layer of the `stack` contract, so a new module has to be
placed. Exit status 0 when every contract is kept.

    python tools/check_layers.py
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Set

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / ".importlinter"
SKIP = shutil.ignore_patterns("__pycache__", "web_static", "*.pyc")


def installed_tree(into: Path) -> Path:
    """david_infer/ with export/ inside it, as pip installs them, under `into`."""
    package = into / "david_infer"
    shutil.copytree(REPO / "david_infer", package, ignore=SKIP)
    shutil.copytree(REPO / "export", package / "export", ignore=SKIP)
    return package


def stack_layers() -> Set[str]:
    """The module names the `stack` contract places (below its container)."""
    config = configparser.ConfigParser()
    config.read(CONFIG)
    layers = config["importlinter:contract:stack"]["layers"]
    return {name.strip() for line in layers.splitlines() for name in re.split(r"[|:]", line) if name.strip()}


def unplaced(package: Path) -> List[str]:
    """Modules of the package that no layer of `stack` names (a layer covers its submodules)."""
    placed = stack_layers()
    missing = []
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not parts or parts == ["outputs"]:  # the package root and a docstring-only __init__
            continue
        if not any(".".join(parts[:depth]) in placed for depth in range(1, len(parts) + 1)):
            missing.append("david_infer." + ".".join(parts))
    return missing


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="david-layers-") as tmp:
        package = installed_tree(Path(tmp))
        missing = unplaced(package)
        env = dict(os.environ, PYTHONPATH=tmp)  # the copy wins over the editable install
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
                str(CONFIG),
                "--no-cache",
            ],
            cwd=tmp,
            env=env,
        )
    if missing:
        print(f"modules no layer of the stack contract in {CONFIG.name} places: {', '.join(missing)}")
        return 1
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
