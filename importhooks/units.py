"""Parsing and printing of sizes (``4GiB``) and durations (``90s``, ``5m``)."""

from __future__ import annotations

import re

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
    "p": 1000**5,
    "pb": 1000**5,
    "pib": 1 << 50,
    "eib": 1 << 60,
}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object) -> int:
    """Return a byte count from an int or a string such as ``512MiB``, ``4GiB``, ``1TiB``.

    Raises :class:`ValueError` with a message meant for a person.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4GiB or a number of bytes, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        match = _NUMBER_UNIT.match(value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            number = float(match.group(1))
            return int(number * _SIZE_UNITS[match.group(2).lower()])
    raise ValueError(f"expected a size such as 4GiB, 512MiB or a number of bytes, got {value!r}")


def parse_duration(value: object) -> float:
    """Return seconds from a number or a string such as ``30s``, ``5m``, ``1h``, ``250ms``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s or a number of seconds, got a boolean")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _NUMBER_UNIT.match(value)) and (
        match.group(2).lower() in _DURATION_UNITS
    ):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    else:
        raise ValueError(f"expected a duration such as 30s, 5m or a number of seconds, got {value!r}")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


def format_size(size: int) -> str:
    """Print ``size`` in the largest binary unit that keeps it readable: ``1.5 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
