"""Test plugin for the image service tests: an import whose image is named ``slow-<seconds>...`` is slow.

It sleeps that long in the first ``inspect`` pass, in steps of 50 ms, calling
``context.check()`` between steps like any long plugin loop, so the kill switch (and the
stage budgets) stop it. Every other import is untouched. The service passes the image's
name to the pipeline as the ``name`` property of the claims.
"""

from __future__ import annotations

import re
import time

from importhooks import ImportContext, hookimpl

_SLOW = re.compile(r"slow-(\d+(?:\.\d+)?)(?:-|$)")
STEP = 0.05


def delay_of(name: str) -> float:
    """The seconds an image named ``name`` asks to be slowed by (0 for most names)."""
    match = _SLOW.match(name)
    return float(match.group(1)) if match else 0.0


@hookimpl
def importhooks_inspect(context: ImportContext) -> None:
    if len(context.layers) > 1:  # once per import, not on each unpacked layer
        return
    deadline = time.monotonic() + delay_of(context.claims.properties.get("name", ""))
    while time.monotonic() < deadline:
        context.check()
        time.sleep(STEP)
