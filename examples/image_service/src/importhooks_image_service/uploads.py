"""Uploads in flight (``PUT /stage``, ``PUT /file``), so that deleting an image cuts its upload off.

Each upload runs under :meth:`UploadTracker.track`; :meth:`UploadTracker.cancel` (called by
the delete) wakes :func:`run_cancellable`, which cancels the upload's writer at once, whether
it is writing a chunk or waiting for the next one. The writer then removes its partial file
(the kit's :class:`~importhooks.server.staging.StagingArea` does on any exception, cancellation
included) and the request ends with the error ``on_cancel`` gives. Everything here runs on the
event loop's thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TypeVar

T = TypeVar("T")


class UploadTracker:
    """The cancellation events of the uploads in flight, per image."""

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = {}

    def count(self, image_id: str) -> int:
        return len(self._events.get(image_id, ()))

    @contextmanager
    def track(self, image_id: str) -> Iterator[asyncio.Event]:
        """Register one upload of ``image_id``; the event is set when it must stop."""
        event = asyncio.Event()
        self._events.setdefault(image_id, set()).add(event)
        try:
            yield event
        finally:
            events = self._events.get(image_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[image_id]

    def cancel(self, image_id: str) -> int:
        """Stop every upload of ``image_id``; how many there were."""
        events = self._events.get(image_id, set())
        for event in events:
            event.set()
        return len(events)


async def run_cancellable(work: Awaitable[T], cancelled: asyncio.Event, on_cancel: Callable[[], Exception]) -> T:
    """Await ``work`` unless ``cancelled`` is set first: then cancel it, wait for its cleanup, raise ``on_cancel()``."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(cancelled.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with suppress(asyncio.CancelledError, Exception):
            await task
        raise on_cancel()
    finally:
        waiter.cancel()
        if not task.done():  # the request itself was cancelled (the client went away)
            task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await task
