"""Sends every import event on the cloud's message bus with oslo.messaging, as Glance's notifier does.

Off unless ``[plugin.notify_messaging] transport_url`` is set. Each event
(``image.import.accepted``, ``started``, ``progress``, ``finished``) becomes one
notification in oslo.messaging's format (``messagingv2`` by default), at the
``info`` priority, on ``TOPIC.info`` of the ``glance`` exchange, so the listeners
that follow Glance's own notifications (Ceilometer, a site's auditor) receive
them too. The payload names the request, its owner and user, a Glance-style
status, and for ``finished`` the verdict and the finding codes; nothing in it is
the image's data or any other text a user chose.

Runs never wait for the bus: they queue their events (at most ``max_queued``),
and one thread per configuration sends them in order. A notification the bus
does not take is retried ``retry`` times, then dropped and logged by
oslo.messaging. oslo.messaging is imported on the first event, never when the
pipeline is built.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import queue
import re
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from importhooks import Event, EventType, ImportContext, PluginOption, PluginOptions, hookimpl
from importhooks.pipeline import NOTIFY_OPTIONS

log = logging.getLogger("importhooks.notify_messaging")  # not importhooks.notify: notify_log writes JSON lines there

SECTION = "notify_messaging"
DRIVERS = ("messagingv2", "messaging", "log", "noop")
#: oslo.messaging's drivers for a transport URL's scheme.
SCHEMES = ("rabbit", "amqp", "kafka", "kombu")


def _transport_url(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    if raw:
        parts = urlsplit(raw)
        if parts.scheme.split("+", 1)[0] not in SCHEMES or not parts.netloc:
            # The URL may hold a password: the message never repeats it.
            raise ValueError(f"not an oslo.messaging transport URL (SCHEME://USER:PASSWORD@HOST:PORT/ with "
                             f"SCHEME one of {', '.join(SCHEMES)})")
    return raw


def _driver(raw: object) -> str:
    if raw not in DRIVERS:
        raise ValueError(f"must be one of {', '.join(DRIVERS)}")
    return str(raw)


def _retry(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 100:
        raise ValueError("must be a whole number from 0 to 100")
    return raw


def _max_queued(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 1_000_000:
        raise ValueError("must be a whole number from 1 to 1000000")
    return raw


def _name(raw: object) -> str:
    if not isinstance(raw, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,255}", raw):
        raise ValueError("must be 1 to 255 letters, digits, '_', '.', ':' or '-'")
    return raw


def _topics(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ValueError("must be a non-empty list of topic names")
    return tuple(_name(topic) for topic in raw)


OPTIONS = PluginOptions(SECTION, (
    PluginOption("transport_url", "", "oslo.messaging transport URL of the bus, as in Glance's "
                 "[DEFAULT] transport_url (rabbit://USER:PASSWORD@HOST:5672/); empty: the plugin sends nothing. "
                 "Never logged.", parse=_transport_url),
    PluginOption("driver", "messagingv2", "oslo.messaging notification driver: messagingv2, messaging, log or "
                 "noop.", parse=_driver),
    PluginOption("topics", ("notifications",), "Topics to send each event to; oslo.messaging appends the "
                 "priority (notifications.info).", parse=_topics),
    PluginOption("publisher_id", "image.localhost", "publisher_id of the notifications (Glance's default).",
                 parse=_name),
    PluginOption("exchange", "glance", "Exchange the topics live in (oslo.messaging's control_exchange); "
                 "Glance's, where listeners look for image events.", parse=_name),
    PluginOption("retry", 2, "Reconnection attempts for one notification while the bus is unreachable, "
                 "before it is dropped and logged (0 to 100); imports never wait for them.", parse=_retry),
    PluginOption("max_queued", 10000, "Most notifications waiting to be sent (while the bus is slow or down); "
                 "more are dropped and logged.", parse=_max_queued),
))

#: A Glance-style status for each event (a task's status words); ``finished`` says success or failure.
_STATUS = {EventType.ACCEPTED: "pending", EventType.STARTED: "processing", EventType.PROGRESS: "processing"}
_SAFE = re.compile(r"[A-Za-z0-9_.:@+=-]{1,255}")


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    return OPTIONS


@hookimpl
def importhooks_notify(event: Event, context: ImportContext | None) -> None:
    options = context.options(SECTION) if context is not None else (NOTIFY_OPTIONS.get() or {}).get(SECTION, {})
    if not options.get("transport_url"):
        return
    _bus(options).put(event.type.value, payload(event, context))


def payload(event: Event, context: ImportContext | None) -> dict[str, Any]:
    """The notification's payload: identifiers and the outcome only, every string escaped."""
    requester = context.requester if context is not None else None
    finished = event.type is EventType.FINISHED
    success = finished and event.verdict is not None and event.verdict.value == "accept"
    return {
        "request_id": _safe(event.request_id),
        "owner": _safe(requester.project) if requester else None,
        "user_id": _safe(requester.user) if requester else None,
        "status": ("success" if success else "failure") if finished else _STATUS[event.type],
        "stage": event.stage,
        "progress": event.percent,
        "verdict": event.verdict.value if event.verdict else None,
        "codes": list(event.codes),
        "timestamp": datetime.datetime.fromtimestamp(event.timestamp, datetime.UTC).isoformat(),
    }


def _safe(text: str | None) -> str | None:
    """Identifiers pass as they are; anything else is escaped to printable ASCII, at most 255 characters."""
    if text is None or _SAFE.fullmatch(text):
        return text
    return ascii(text)[1:-1][:255]


class _Bus:
    """One oslo.messaging transport and notifier, shared by every run with the same options, and the thread
    that sends through them: runs only queue their events, in order, and never wait for the bus."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        import oslo_messaging  # costs ~1 s and pulls in eventlet: only when notifications are configured
        from oslo_config import cfg
        from oslo_messaging import opts

        conf = cfg.ConfigOpts()  # private: neither the embedder's config files nor its command line
        conf([], project="importhooks", default_config_files=[], default_config_dirs=[])
        for group, group_options in opts.list_opts():
            conf.register_opts(group_options, group=group)
        conf.set_override("control_exchange", options["exchange"])
        self.transport = oslo_messaging.get_notification_transport(conf, url=options["transport_url"])
        self.notifier = oslo_messaging.Notifier(self.transport, publisher_id=options["publisher_id"],
                                                driver=options["driver"], topics=list(options["topics"]),
                                                retry=options["retry"])
        self.dropped = 0
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(maxsize=options["max_queued"])
        self._thread = threading.Thread(target=self._send_all, name="importhooks-notify-messaging", daemon=True)
        self._thread.start()

    def put(self, event_type: str, payload: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait((event_type, payload))
        except queue.Full:
            self.dropped += 1
            log.warning("notify_messaging: %d notifications wait for the bus; dropped %s of request %s",
                        self._queue.maxsize, event_type, payload["request_id"])

    def _send_all(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                # oslo.messaging retries, then drops and logs what it cannot send; this catches the rest.
                self.notifier.info({}, *item)
            except Exception:  # a notification never stops the sender
                log.exception("notify_messaging: could not send %s of request %s", item[0], item[1]["request_id"])
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued notification was sent or dropped; False on timeout."""
        with self._queue.all_tasks_done:
            return self._queue.all_tasks_done.wait_for(lambda: not self._queue.unfinished_tasks, timeout)

    def close(self, timeout: float) -> None:
        self.flush(timeout)
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self.transport.cleanup()


_buses: dict[tuple[Any, ...], _Bus] = {}
_lock = threading.Lock()
_KEY = ("transport_url", "driver", "topics", "publisher_id", "exchange", "retry", "max_queued")


def _bus(options: Mapping[str, Any]) -> _Bus:
    key = tuple(options[name] for name in _KEY)
    with _lock:
        bus = _buses.get(key)
        if bus is None:
            bus = _buses[key] = _Bus(options)
        return bus


def flush(timeout: float = 30.0) -> bool:
    """Wait until every notification queued so far was sent or dropped; False if ``timeout`` ran out."""
    with _lock:
        buses = list(_buses.values())
    deadline = time.monotonic() + timeout
    return all(bus.flush(max(0.0, deadline - time.monotonic())) for bus in buses)


def close(timeout: float = 30.0) -> None:
    """Send what is queued (up to ``timeout``), then close every transport (a service's shutdown, tests)."""
    with _lock:
        buses = list(_buses.values())
        _buses.clear()
    for bus in buses:
        bus.close(timeout)
