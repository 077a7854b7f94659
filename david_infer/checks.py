"""Value checks shared by every layer that takes options (runtime options, backends, serving, Ray):
one module at the bottom of the package, so a backend checks its options without importing the
runtime options above it."""

from __future__ import annotations

from typing import Any, Literal, Optional, overload

from .errors import InputError


@overload
def positive_int(name: str, value: Any, *, allow_none: Literal[False] = False, owner: str = "") -> int: ...


@overload
def positive_int(name: str, value: Any, *, allow_none: bool, owner: str = "") -> Optional[int]: ...


def positive_int(name: str, value: Any, *, allow_none: bool = False, owner: str = "") -> Optional[int]:
    """`value` when it is a positive int (or None with `allow_none`), else an InputError that names
    `name` (prefixed by `owner`, e.g. "serve: ") and the value given. The package's one such check."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{owner}{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")
    return value
