"""Notification events of an import run, delivered through ``importhooks_notify``."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from .findings import Verdict


class EventType(enum.Enum):
    """The four import notifications, named like Glance's ``image.*`` events."""

    ACCEPTED = "image.import.accepted"
    STARTED = "image.import.started"
    PROGRESS = "image.import.progress"
    FINISHED = "image.import.finished"


@dataclass(frozen=True, slots=True)
class Event:
    """One notification. ``percent`` is set on progress, ``verdict`` and ``codes`` on finished."""

    type: EventType
    request_id: str
    stage: str | None = None
    percent: float | None = None
    verdict: Verdict | None = None
    codes: tuple[str, ...] = ()
    timestamp: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_type": self.type.value,
            "request_id": self.request_id,
            "stage": self.stage,
            "percent": self.percent,
            "verdict": self.verdict.value if self.verdict else None,
            "codes": list(self.codes),
            "timestamp": self.timestamp,
        }
