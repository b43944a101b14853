"""The import runner: the 202 returns at once, the pipeline runs in a bounded pool of workers.

A server builds one :class:`ImportRunner` with its pipeline, its :class:`StagingArea` and
two callbacks, then calls :meth:`ImportRunner.submit` from ``POST /import`` after it set
the image ``importing``. The runner:

* refuses new imports while the kill switch is set (:class:`~importhooks.errors.ImportHalted`);
* sends ``image.import.accepted`` and queues the job; at most ``max_concurrent_imports`` run at
  once, and at most ``max_imports_per_project`` of one project; the others wait, in order;
* runs the pipeline (whose ``run_timeout`` is the wall-time budget of one import), and on
  ``accept`` calls ``store(job, path)`` with the data to keep, which moves it into the image
  store atomically (``os.replace`` into the store's directory, or a copy and a rename);
* always deletes the import's data afterwards, and calls ``finish(job, outcome)`` with the
  image's new status and fields: ``active`` with ``size``, ``virtual_size``, ``checksum``,
  ``os_hash_algo``, ``os_hash_value``, ``disk_format``, ``container_format`` and the
  protected properties; or ``killed`` with a user-safe ``message``.

Nothing a job does can kill a worker: a ``store`` that raises kills the image
(``"The image could not be stored."``), except with :class:`~importhooks.errors.ImageGone`
(the image was deleted meanwhile: the outcome is ``deleted``), and a ``finish`` that raises
is logged. At start, a
server calls :func:`recover` to resubmit (or kill) images a restart left ``importing``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .. import codes
from ..errors import ImageGone, ImportHalted
from ..events import Event, EventType
from ..pipeline import Pipeline
from ..request import Claims, ImportRequest, Requester
from ..result import ImportResult
from .staging import StagingArea
from .status import ImageStatus

log = logging.getLogger(__name__)

STORE_FAILED = "The image could not be stored."
INTERRUPTED = "The import was interrupted and its data is gone; upload it again to a new image."
HALTED = codes.HALTED.summary  # one message for refused calls and for killed imports


@dataclass(frozen=True, slots=True)
class ImportJob:
    """One import to run: the image, and the request whose ``path`` is the image's data.

    Build it with :meth:`claim`, which takes the staged data for the import
    (:meth:`StagingArea.claim`).
    """

    image_id: str
    request: ImportRequest

    @classmethod
    def claim(cls, staging: StagingArea, image_id: str, claims: Claims, requester: Requester,
              request_id: str | None = None) -> ImportJob:
        """The job of importing the data staged for ``image_id``; :class:`StatusConflict` if there is none."""
        path = staging.claim(image_id)
        extra = {"request_id": request_id} if request_id else {}
        return cls(image_id, ImportRequest(path, claims, requester, **extra))


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    """How a job ended: the image's new ``status`` and ``fields``, or a ``message`` when ``killed``."""

    status: ImageStatus
    fields: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    message: str | None = None
    result: ImportResult | None = None


def image_fields(result: ImportResult) -> dict[str, Any]:
    """Glance image fields and properties of an accepted result."""
    detected = result.detected
    unpacked = len(result.layers) > 1
    container = "bare" if unpacked else detected.get("container_format", "bare")
    fields: dict[str, Any] = {
        "disk_format": detected.get("disk_format"),
        "container_format": container,
        "virtual_size": detected.get("virtual_size"),
    }
    if result.checksums is not None:
        fields.update(result.checksums.to_dict())
    fields.update(result.properties)
    return fields


Store = Callable[[ImportJob, Path], None]
Finish = Callable[[ImportJob, ImportOutcome], None]


class ImportRunner:
    """Runs :class:`ImportJob` s in worker threads under a global and a per-project cap."""

    def __init__(self, pipeline: Pipeline, staging: StagingArea, *, store: Store, finish: Finish,
                 max_concurrent: int | None = None, max_per_project: int | None = None) -> None:
        settings = pipeline.settings
        self.pipeline = pipeline
        self.staging = staging
        self._store = store
        self._finish = finish
        self.max_concurrent = max_concurrent or settings.max_concurrent_imports
        self.max_per_project = max_per_project or settings.max_imports_per_project
        self._pending: deque[ImportJob] = deque()
        self._running: dict[str, int] = {}  # project -> running jobs
        self._active = 0
        self._closed = False
        self._cond = threading.Condition()
        self._workers = [threading.Thread(target=self._work, name=f"importhooks-runner-{n}", daemon=True)
                         for n in range(self.max_concurrent)]
        for worker in self._workers:
            worker.start()

    # -- the server's side ----------------------------------------------------------------

    def check_open(self) -> None:
        """Raise :class:`ImportHalted` (503) while the kill switch is set."""
        if self.pipeline.killswitch.is_halted():
            raise ImportHalted(HALTED)

    def submit(self, job: ImportJob) -> None:
        """Queue ``job`` and return at once; :class:`ImportHalted` while halted."""
        self.check_open()
        self.pipeline.notify(Event(EventType.ACCEPTED, job.request.request_id))
        with self._cond:
            if self._closed:
                raise ImportHalted("The image service is shutting down; try again later.")
            self._pending.append(job)
            self._cond.notify_all()

    def counts(self) -> tuple[int, int]:
        """``(running, waiting)`` jobs now."""
        with self._cond:
            return self._active, len(self._pending)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job runs or waits (tests, shutdown); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._active and not self._pending, timeout)

    def shutdown(self, *, wait: bool = True) -> None:
        """Take no new job; with ``wait``, let the running and waiting ones finish."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait:
            for worker in self._workers:
                worker.join()

    # -- the workers -----------------------------------------------------------------------

    def _next(self) -> ImportJob | None:
        """The first waiting job whose project is under its cap (the caller holds the lock)."""
        for job in self._pending:
            if self._running.get(_project(job), 0) < self.max_per_project:
                self._pending.remove(job)
                return job
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                job = None
                while job is None:
                    job = self._next()
                    if job is None:
                        if self._closed and not self._pending:
                            return
                        self._cond.wait()
                project = _project(job)
                self._running[project] = self._running.get(project, 0) + 1
                self._active += 1
            try:
                outcome = self._run(job)
                try:
                    self._finish(job, outcome)
                except Exception:
                    log.exception("finish callback failed for image %s", job.image_id)
            finally:
                with self._cond:
                    self._running[project] -= 1
                    self._active -= 1
                    self._cond.notify_all()

    def _run(self, job: ImportJob) -> ImportOutcome:
        return run_job(self.pipeline, self.staging, self._store, job)


def run_job(pipeline: Pipeline, staging: StagingArea, store: Store, job: ImportJob) -> ImportOutcome:
    """Run the pipeline on ``job``, store accepted data through ``store``, release (and, when the server did not
    claim it, discard) the staged data, and say how the job ended. Shared by every runner (local, Celery)."""
    try:
        result = pipeline.run(job.request, store=lambda path: store(job, path))
    except ImageGone:
        log.info("image %s was deleted during its import; its data is dropped", job.image_id)
        return ImportOutcome(ImageStatus.DELETED)
    except Exception:
        log.exception("storing image %s failed", job.image_id)
        return ImportOutcome(ImageStatus.KILLED, message=STORE_FAILED)
    finally:
        staging.release(job.image_id)
        if job.request.path == staging.path(job.image_id):  # the server did not claim it
            staging.discard(job.image_id)
    if result.accepted:
        return ImportOutcome(ImageStatus.ACTIVE, MappingProxyType(image_fields(result)), result=result)
    return ImportOutcome(ImageStatus.KILLED, message=result.user_message or "The image was rejected.",
                         result=result)


def _project(job: ImportJob) -> str:
    return job.request.requester.project or ""


def recover(runner: ImportRunner, importing: Iterable[ImportJob]) -> list[tuple[ImportJob, ImportOutcome | None]]:
    """At start: resubmit each job of an image a restart left ``importing`` whose data is still there.

    Returns each job with ``None`` when it was resubmitted, or the ``killed`` outcome the
    server must record when its data is gone (or imports are halted): no image stays
    ``importing`` after a restart.
    """
    decided: list[tuple[ImportJob, ImportOutcome | None]] = []
    staging = runner.staging
    for job in importing:
        staged = staging.has(job.image_id) or staging.claimed_path(job.image_id).is_file()
        if staged and not runner.pipeline.killswitch.is_halted():
            job = ImportJob(job.image_id, dataclasses.replace(job.request, path=staging.claim(job.image_id)))
            runner.submit(job)
            decided.append((job, None))
        else:
            staging.discard(job.image_id)
            staging.release(job.image_id)
            decided.append((job, ImportOutcome(ImageStatus.KILLED, message=HALTED if staged else INTERRUPTED)))
    return decided
