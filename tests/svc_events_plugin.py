"""Test plugin for the image service tests: appends every import event to the file named by ``$IMPORTHOOKS_SVC_EVENTS``.

One JSON object per line: ``t`` (the event's timestamp), ``event`` (e.g. ``image.import.started``),
``request_id``, ``verdict`` and ``codes`` (on ``finished``), and, when the event has a run context
(every event but ``accepted``, which the runner sends before the run exists), the requester's
``project`` and the image ``name``. The tests read it to see how many imports ran at once, and
when a run started or ended.
"""

from __future__ import annotations

import json
import os
import threading

from importhooks import Event, ImportContext, hookimpl

EVENTS_ENV = "IMPORTHOOKS_SVC_EVENTS"
_lock = threading.Lock()


@hookimpl
def importhooks_notify(event: Event, context: ImportContext | None) -> None:
    path = os.environ.get(EVENTS_ENV)
    if not path:
        return
    record = {
        "t": event.timestamp,
        "event": event.type.value,
        "request_id": event.request_id,
        "project": context.requester.project if context is not None else None,
        "name": context.claims.properties.get("name") if context is not None else None,
        "verdict": event.verdict.value if event.verdict is not None else None,
        "codes": list(event.codes),
    }
    with _lock, open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
