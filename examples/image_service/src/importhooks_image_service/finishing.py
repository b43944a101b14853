"""Import outcomes that could not be recorded at once, written again until the records take them.

When an import ends while the image records cannot be written (their filesystem is full, an
I/O error), the service removes any data the import stored (a stored file must always have an
``active`` record) and hands :class:`Retrier` the write of ``killed`` with
:data:`NOT_RECORDED`. The retrier tries it every ``RETRY_INTERVAL`` seconds in one daemon
thread until it succeeds, so the image ends ``killed`` as soon as the records can be written
again. If the service stops first, the next start finds the image ``importing`` with no data
and kills it (:data:`importhooks.server.runner.INTERRUPTED`): nothing stays ``importing`` and
no file is left orphaned.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from .errors import DatabaseUnavailable

log = logging.getLogger(__name__)

#: The message of an import whose outcome could not be recorded.
NOT_RECORDED = ("The import finished but the image service could not record it (its storage was full); "
                "upload the image again.")
#: Seconds between two tries of the writes waiting in a :class:`Retrier`.
RETRY_INTERVAL = 1.0


class Retrier:
    """Runs each submitted write again, every :data:`RETRY_INTERVAL` s, until it stops raising DatabaseUnavailable."""

    def __init__(self, interval: float = RETRY_INTERVAL) -> None:
        self.interval = interval
        self._pending: deque[Callable[[], None]] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def submit(self, write: Callable[[], None]) -> None:
        with self._cond:
            self._pending.append(write)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="image-service-retrier", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopped or bool(self._pending), self.interval)
                if self._stopped:
                    return
                writes = list(self._pending)
                self._pending.clear()
            failed: list[Callable[[], None]] = []
            for write in writes:
                try:
                    write()
                except DatabaseUnavailable:
                    failed.append(write)
                except Exception:
                    log.exception("a deferred image record write failed for good")
            with self._cond:
                self._pending.extendleft(reversed(failed))
                if failed:
                    self._cond.wait(self.interval)
