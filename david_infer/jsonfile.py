"""Small JSON files beside models (manifests, engine manifests, download records): read and write.

One reader so every such file fails the same way: a ModelError naming the file and what it should
have been, never a JSONDecodeError from deep inside the standard library.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Union

from .errors import ModelError
from .files import atomic_write_bytes


def read_json_object(path: Union[str, Path], what: str = "JSON file", expect_object: bool = True) -> Any:
    """The JSON object stored in `path`.

    ModelError naming `path` and `what` it should be when the file is missing, unreadable, not
    JSON, or (with `expect_object`) holds something other than an object; callers that validate
    the document themselves pass expect_object=False.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from None
    if expect_object and not isinstance(data, dict):
        raise ModelError(f"{path}: not a {what} (a JSON object was expected, found {type(data).__name__})")
    return data


def write_json(path: Union[str, Path], data: Mapping[str, Any], indent: int = 2) -> None:
    """Write `data` as JSON through a temporary file and an atomic rename."""
    atomic_write_bytes(path, (json.dumps(data, indent=indent) + "\n").encode())
