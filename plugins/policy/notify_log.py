"""Logs every import event to the ``importhooks.notify`` logger, as one JSON object per line."""

from __future__ import annotations

import json
import logging

from importhooks import Event, EventType, ImportContext, hookimpl

log = logging.getLogger("importhooks.notify")


@hookimpl
def importhooks_notify(event: Event, context: ImportContext | None) -> None:
    level = logging.DEBUG if event.type is EventType.PROGRESS else logging.INFO
    if log.isEnabledFor(level):
        # json.dumps escapes every control character: untrusted text cannot forge log lines.
        log.log(level, "%s", json.dumps(event.to_dict(), sort_keys=True))
