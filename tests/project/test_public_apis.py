"""The server stands on its libraries' public API only: no module of the package that imports
MLServer, uvicorn, h11, gRPC, Starlette, FastAPI or prometheus_client names anything those
libraries keep private (a leading underscore, as spelled in their own sources)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Set

import pytest

LIBRARIES = ("mlserver", "uvicorn", "h11", "grpc", "starlette", "fastapi", "prometheus_client")
PACKAGE = Path(__file__).resolve().parents[2] / "david_infer"
PRIVATE = re.compile(r"\b_[a-z][A-Za-z0-9_]*")


def _private_names(library: str) -> Set[str]:
    spec = importlib.util.find_spec(library)
    assert spec is not None and spec.submodule_search_locations
    names: Set[str] = set()
    for folder in spec.submodule_search_locations:
        for source in Path(folder).rglob("*.py"):
            names.update(PRIVATE.findall(source.read_text(errors="replace")))
    return names


def test_no_private_name_of_the_server_libraries() -> None:
    missing = [lib for lib in LIBRARIES if importlib.util.find_spec(lib) is None]
    if missing:
        pytest.skip(f'{missing} not installed: pip install "david-infer[serve]"')
    importer = re.compile(rf"^\s*(import|from)\s+({'|'.join(LIBRARIES)})\b", re.M)
    modules = [p for p in PACKAGE.rglob("*.py") if importer.search(p.read_text())]
    assert any(p.parent.name == "serving" for p in modules), modules  # the check reaches the server
    private = set().union(*(_private_names(lib) for lib in LIBRARIES))
    found = [
        f"{p.relative_to(PACKAGE.parent)}:{n}: {name}"
        for p in modules
        for n, line in enumerate(p.read_text().splitlines(), 1)
        for name in PRIVATE.findall(line)
        if name in private
    ]
    assert not found, "\n".join(found)
