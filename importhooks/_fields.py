"""The parsers and the field maker of the settings tables (:mod:`importhooks.settings`,
:mod:`importhooks.method_settings`): each parser takes a raw TOML value and returns the value
to keep, or raises :class:`ValueError` with a message for a person."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from typing import Any


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number of zero or more, got {value!r}")
    return value


def _positive_int(value: object) -> int:
    number = _int(value)
    if number == 0:
        raise ValueError("expected a whole number above zero")
    return number


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _str_tuple(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return tuple(value)


def _setting(default: Any, doc: str, parse: Callable[[object], Any]) -> Any:
    return field(default=default, metadata={"doc": doc, "parse": parse})
