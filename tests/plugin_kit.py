"""Small test plugins: real plugin objects registered through the pipeline's one registration call."""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from importhooks import Event, FindingCode, ImportContext, hookimpl

STAGES = ("pre_validate", "inspect", "sanitize", "set_protected_properties", "finalize")
NOTE = FindingCode("kit.note", "A note.", "Test finding.", )


class Recorder:
    """Appends (plugin label, stage) for every stage hook it implements."""

    def __init__(self, label: str, log: list[tuple[str, str]]) -> None:
        self.label = label
        self.log = log

    @hookimpl
    def importhooks_pre_validate(self, context: ImportContext) -> None:
        self.log.append((self.label, "pre_validate"))

    @hookimpl
    def importhooks_inspect(self, context: ImportContext) -> None:
        self.log.append((self.label, "inspect"))

    @hookimpl
    def importhooks_sanitize(self, context: ImportContext) -> None:
        self.log.append((self.label, "sanitize"))

    @hookimpl
    def importhooks_set_protected_properties(self, context: ImportContext) -> dict[str, str]:
        self.log.append((self.label, "set_protected_properties"))
        return {}

    @hookimpl
    def importhooks_finalize(self, context: ImportContext) -> None:
        self.log.append((self.label, "finalize"))


class EventLog:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def importhooks_notify(self, event: Event, context: ImportContext) -> None:
        self.events.append(event)


class InspectOrder:
    """One inspect implementation with chosen ordering flags."""

    def __init__(self, label: str, log: list[str], **flags: bool) -> None:
        self.label = label
        self.log = log

        @hookimpl(**flags)
        def importhooks_inspect(context: ImportContext) -> None:
            log.append(label)

        self.importhooks_inspect = importhooks_inspect


class Raiser:
    """Raises in one stage."""

    def __init__(self, stage: str = "inspect", exc: BaseException | None = None) -> None:
        error = exc or RuntimeError("boom /secret/host/path")

        @hookimpl
        def hook(context: ImportContext) -> None:
            raise error

        setattr(self, f"importhooks_{stage}", hook)


class Sleeper:
    def __init__(self, stage: str, seconds: float) -> None:
        @hookimpl
        def hook(context: ImportContext) -> None:
            time.sleep(seconds)

        setattr(self, f"importhooks_{stage}", hook)


class Swallower:
    """A site wrapper around every stage that swallows whatever the inner plugins raise."""

    def __init__(self) -> None:
        self.swallowed: list[BaseException] = []

    def _wrap(self) -> Generator[None, Any, Any]:
        try:
            return (yield)
        except BaseException as exc:
            self.swallowed.append(exc)
            return None

    @hookimpl(wrapper=True, trylast=True)
    def importhooks_inspect(self, context: ImportContext) -> Generator[None, Any, Any]:
        return (yield from self._wrap())

    @hookimpl(wrapper=True, tryfirst=True)
    def importhooks_pre_validate(self, context: ImportContext) -> Generator[None, Any, Any]:
        return (yield from self._wrap())
