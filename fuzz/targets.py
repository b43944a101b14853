"""The registry of fuzz targets: each a name, a family and a factory of its one-input function.

A factory is called once per process (it builds the pipeline or whatever the target
needs); the function it returns takes one fuzzed input, drives the real code with it and
raises :class:`~fuzz.harness.FuzzFailure` (or lets a bug's exception out) when an
invariant breaks. The family modules register their targets when imported;
:func:`all_targets` imports them all.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

OneInput = Callable[[bytes], object]
FAMILIES = ("fuzz.formats", "fuzz.containers", "fuzz.guest", "fuzz.server")
DICT_DIR = Path(__file__).resolve().parent / "dicts"


@dataclass(frozen=True)
class Target:
    """One fuzz target. ``dictionary`` names a file in ``fuzz/dicts``; ``max_len`` caps libFuzzer's inputs."""

    name: str
    family: str
    summary: str
    factory: Callable[[], OneInput]
    dictionary: str
    max_len: int = 64 << 10

    @property
    def dict_path(self) -> Path:
        return DICT_DIR / self.dictionary


_TARGETS: dict[str, Target] = {}


def register(target: Target) -> Target:
    if target.name in _TARGETS:
        raise ValueError(f"fuzz target {target.name!r} registered twice")
    _TARGETS[target.name] = target
    return target


def all_targets() -> dict[str, Target]:
    """Every target, by name, in the order the families declare them."""
    for module in FAMILIES:
        importlib.import_module(module)
    return dict(_TARGETS)
