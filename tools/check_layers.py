"""Check the import contracts of `.importlinter` over the package, and that every module is placed.

Runs lint-imports on david_infer/ (with the checkout first on the path, so a worktree checks its own
files, not an installed copy) and fails when a module of the package is named by no layer of the
`stack` contract, so a new module has to be placed. Exit status 0 when every contract is kept.

    python tools/check_layers.py
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Set

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / ".importlinter"
PACKAGE = REPO / "david_infer"


def stack_layers() -> Set[str]:
    """The module names the `stack` contract places (below its container)."""
    config = configparser.ConfigParser()
    config.read(CONFIG)
    layers = config["importlinter:contract:stack"]["layers"]
    return {name.strip() for line in layers.splitlines() for name in re.split(r"[|:]", line) if name.strip()}


def unplaced(package: Path = PACKAGE) -> List[str]:
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
    missing = unplaced()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
            str(CONFIG),
            "--no-cache",
        ],
        cwd=REPO,
        env=env,
    )
    if missing:
        print(f"modules no layer of the stack contract in {CONFIG.name} places: {', '.join(missing)}")
        return 1
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
