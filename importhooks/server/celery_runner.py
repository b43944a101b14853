"""The Celery runner (opt-in): imports run on worker processes, on other machines, through RabbitMQ.

The local :class:`~importhooks.server.runner.ImportRunner` stays the default (one machine).
With many machines, the API side builds a :class:`CeleryRunner` and calls its
:meth:`~CeleryRunner.submit` exactly where it would call the local runner's; the job goes
to RabbitMQ as JSON (image id, claims, requester, request id), and a Celery worker that
shares the staging directory runs the pipeline and calls the embedder's ``store`` and
``finish`` callbacks, with the same :class:`~importhooks.server.runner.ImportOutcome` s.

Delivery is *at least once*, finished *once*:

* ``task_acks_late`` and ``task_reject_on_worker_lost``: the message is acknowledged after
  the run; a worker that dies mid-import (SIGKILL, OOM, a lost machine) leaves it
  unacknowledged and RabbitMQ hands it to another worker, which runs the import again
  from the claimed data (still there: only a finished run removes it);
* ``worker_prefetch_multiplier = 1``: a busy worker holds no second message, so a waiting
  job goes to an idle worker and RabbitMQ's ``consumer_timeout`` clock (which starts at
  delivery) only covers the running one;
* a redelivered job whose claimed data is gone was finished by an earlier delivery whose
  acknowledgement was lost: it is dropped without a second ``finish``.

The worker never takes a path from a message: it finds the data under its own staging
directory by the image id (a checked UUID). RabbitMQ's ``consumer_timeout`` is node-wide
(3.10 has no per-queue value): :func:`required_consumer_timeout_ms` says what the broker
needs for the pipeline's ``run_timeout``; brokers with a visibility timeout (Redis, SQS)
get it from the app's transport options.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from celery import Celery  # type: ignore[import-untyped]  # Celery ships no type hints
from kombu.exceptions import OperationalError

from ..errors import BadRequest, ImportHalted
from ..events import Event, EventType
from ..pipeline import Pipeline
from ..request import Claims, ImportRequest, Requester
from ..settings import Settings
from . import runner
from .runner import HALTED, Finish, ImportJob, ImportOutcome, Store
from .staging import StagingArea, image_key

log = logging.getLogger(__name__)

#: The Celery task name the API side sends and the workers run.
TASK_NAME = "importhooks.run_import"
#: The queue imports go through unless the embedder names another.
DEFAULT_QUEUE = "importhooks.imports"
#: Seconds a message may stay unacknowledged beyond the pipeline's ``run_timeout`` (store, finish, start-up).
TIMEOUT_MARGIN = 600.0
UNAVAILABLE = "Imports cannot be queued now; try again later."


def required_consumer_timeout_ms(settings: Settings) -> int:
    """The smallest RabbitMQ ``consumer_timeout`` (ms) under which no import is redelivered for running long."""
    return int((settings.run_timeout + TIMEOUT_MARGIN) * 1000)


def job_to_json(job: ImportJob) -> dict[str, Any]:
    """The message body of ``job``: everything but the data's path (the worker finds the data by the id)."""
    request, claims = job.request, job.request.claims
    return {
        "image_id": job.image_id,
        "request_id": request.request_id,
        "requester": {"user": request.requester.user, "project": request.requester.project,
                      "roles": list(request.requester.roles)},
        "claims": {"disk_format": claims.disk_format, "container_format": claims.container_format,
                   "os_type": claims.os_type, "properties": dict(claims.properties)},
    }


def job_from_json(staging: StagingArea, data: Mapping[str, Any]) -> ImportJob | None:
    """The job of a message, reading the data claimed in ``staging``; ``None`` if the message is malformed."""
    try:
        image_id = image_key(data["image_id"])
        who, said = data["requester"], data["claims"]
        properties = {str(key): str(value) for key, value in dict(said["properties"]).items()}
        claims = Claims(disk_format=_optional_str(said["disk_format"]),
                        container_format=_optional_str(said["container_format"]),
                        os_type=_optional_str(said["os_type"]), properties=MappingProxyType(properties))
        requester = Requester(_optional_str(who["user"]), _optional_str(who["project"]),
                              tuple(str(role) for role in who["roles"]))
        request = ImportRequest(staging.claimed_path(image_id), claims, requester, str(data["request_id"]))
        return ImportJob(image_id, request)
    except (KeyError, TypeError, ValueError, AttributeError, BadRequest):
        return None


def _optional_str(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError("expected a string or null")


def make_app(broker_url: str, settings: Settings, *, queue: str = DEFAULT_QUEUE, name: str = "importhooks") -> Celery:
    """A Celery app for ``broker_url`` with the delivery settings above; the API side and the workers share it."""
    app = Celery(name, broker=broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,  # a lost connection redelivers: do not finish twice
        broker_transport_options={"visibility_timeout": settings.run_timeout + TIMEOUT_MARGIN},
    )
    return app


@dataclass(frozen=True, slots=True)
class WorkerSide:
    """What a worker process needs to run jobs: the pipeline, the shared staging area, the embedder's callbacks."""

    pipeline: Pipeline
    staging: StagingArea
    store: Store
    finish: Finish


def register_worker(app: Celery, worker: WorkerSide) -> None:
    """Give ``app`` the import task (in the worker process, once, at import of the ``-A`` module)."""

    def run_import(data: dict[str, Any]) -> None:
        job = job_from_json(worker.staging, data)
        if job is None:
            log.error("dropped a malformed import message")
            return
        if not job.request.path.is_file():
            log.info("image %s: no claimed data (an earlier delivery finished it); dropped", job.image_id)
            return
        outcome = run_job(worker, job)
        try:
            worker.finish(job, outcome)
        except Exception:
            log.exception("finish callback failed for image %s", job.image_id)

    app.task(name=TASK_NAME, ignore_result=True)(run_import)


def run_job(worker: WorkerSide, job: ImportJob) -> ImportOutcome:
    """Run the pipeline on ``job`` exactly as the local runner does (:func:`.runner.run_job`)."""
    return runner.run_job(worker.pipeline, worker.staging, worker.store, job)


class CeleryRunner:
    """The API side: :meth:`submit` sends the job to the workers; the same surface as the local runner."""

    def __init__(self, pipeline: Pipeline, staging: StagingArea, app: Celery) -> None:
        self.pipeline = pipeline
        self.staging = staging
        self.app = app

    def check_open(self) -> None:
        """Raise :class:`ImportHalted` (503) while the kill switch is set."""
        if self.pipeline.killswitch.is_halted():
            raise ImportHalted(HALTED)

    def submit(self, job: ImportJob) -> None:
        """Send ``job`` to the queue and return; :class:`ImportHalted` while halted or the broker is away."""
        self.check_open()
        if job.request.path != self.staging.claimed_path(job.image_id):
            raise ValueError("a Celery job must read the data claimed in the shared staging area")
        try:
            self.app.send_task(TASK_NAME, args=[job_to_json(job)])
        except OperationalError:
            log.exception("could not queue the import of image %s", job.image_id)
            raise ImportHalted(UNAVAILABLE) from None
        self.pipeline.notify(Event(EventType.ACCEPTED, job.request.request_id))
