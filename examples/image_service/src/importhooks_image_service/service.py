"""The image service's logic and its glue to the importhooks kit, apart from HTTP.

One :class:`ImageService` owns the records (:mod:`.db`), the staging area and the runner of
the kit, and the image store (:mod:`.store`). Its methods are the API's calls; each raises a
:class:`importhooks.errors.RequestError` (the kit's or :mod:`.errors`'), whose ``status`` is the
HTTP status, for a call it refuses.

The import's life:

1. ``PUT /stage`` (:meth:`ImageService.stage`): kill switch, status machine, ``uploading``;
   the kit's :class:`~importhooks.server.staging.StagingArea` writes the body within the limits;
   on any failure nothing is staged and the image is ``queued`` again.
2. ``POST /import`` (:meth:`ImageService.start_import`): the body is validated by the kit,
   the claims merged with what the image says, the image set ``importing`` (with what is
   needed to run the import again after a restart), and the job handed to the kit's
   :class:`~importhooks.server.runner.ImportRunner`; the call returns at once.
3. The runner runs the pipeline under its caps; :meth:`ImageService._store_accepted` moves
   accepted data into the store, :meth:`ImageService._finish` writes ``active`` (with the
   verified fields and protected properties) or ``killed`` (with a message for the user).
4. At start (:meth:`ImageService.start`), partial uploads are swept and every image left
   ``importing`` is resubmitted or killed (:func:`importhooks.server.runner.recover`).
"""

from __future__ import annotations

import errno
import logging
import shutil
from collections.abc import AsyncIterable, Iterable, Mapping
from pathlib import Path
from typing import Any

from importhooks import Pipeline, Settings
from importhooks.errors import BadRequest, ImageGone, ImportHalted, StatusConflict
from importhooks.request import ImportRequest, Requester
from importhooks.server import methods as import_methods
from importhooks.server.runner import INTERRUPTED, ImportJob, ImportOutcome, ImportRunner, recover
from importhooks.server.staging import StagingArea
from importhooks.server.status import Call, ImageStatus, allowed, check
from importhooks.server.validation import import_claims, parse_import_request

from .auth import require_trusted_upload
from .config import Principal, ServiceConfig
from .db import ImageDB, ImageRecord
from .errors import DatabaseUnavailable, StorageFull, UploadCutOff
from .finishing import NOT_RECORDED, Retrier
from .jobs import job_from_json, job_to_json
from .methods import MethodImports
from .policy import ImagePolicy
from .records import RecordCalls
from .store import ImageStore
from .trusted import TrustedUploads
from .uploads import UploadTracker, run_cancellable
from .validation import declared_size

log = logging.getLogger(__name__)

#: Fields of an accepted import's outcome that are image columns; the others are properties.
OUTCOME_COLUMNS = ("size", "virtual_size", "checksum", "os_hash_algo", "os_hash_value", "disk_format",
                   "container_format")


def _statuses(call: Call, method: str | None = None) -> frozenset[str]:
    """The statuses ``call`` may start from, by the kit's status machine."""
    return frozenset(status.value for status in ImageStatus if allowed(call, status, method))


def storage_full(exc: OSError) -> StorageFull | None:
    """The 413 of a full filesystem (or quota), as Glance answers ``StorageFull``; ``None`` for other errors."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull("The image storage is full; the upload was not kept. Try again later.")
    return None


def _deleted_during_upload() -> UploadCutOff:
    return UploadCutOff("The image was deleted during its upload.")


class ImageService(RecordCalls):
    """Images, their data and their imports, for the HTTP layer (:mod:`.app`) to call."""

    def __init__(self, config: ServiceConfig, *, extra_plugins: Iterable[tuple[str, object]] = ()) -> None:
        self.config = config
        self.settings: Settings = config.importhooks
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.settings.work_dir is not None:
            self.settings.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Built first: a bad setting or plugin stops the service before it touches any data.
        self.pipeline = Pipeline.from_settings(self.settings, extra_plugins=extra_plugins)
        self.policy = ImagePolicy(config.policy_file)
        self.db = ImageDB(config.database)
        self.staging = StagingArea(config.staging_dir, self.settings)
        self.store = ImageStore(config.store_dir, self.settings)
        self.trusted = (TrustedUploads(config.data_dir / "uploads", self.settings, self.store, extra_plugins)
                        if config.trusted_upload_checks else None)
        self.import_methods = import_methods.enabled_names(self.settings)  # ConfigError for an unknown one
        self.method_imports = MethodImports(self)
        self._runner: ImportRunner | None = None
        #: Uploads in flight, per image (touched only by the event loop's thread); a delete cuts them off.
        self.uploads = UploadTracker()
        #: Outcomes of imports whose record could not be written at once, written again until it works.
        self.retrier = Retrier()

    # -- start and stop ------------------------------------------------------------------

    @property
    def runner(self) -> ImportRunner:
        if self._runner is None:
            raise RuntimeError("the image service is not started")
        return self._runner

    def is_halted(self) -> bool:
        return self.pipeline.killswitch.is_halted()

    def start(self) -> None:
        """Sweep what a crash left half done, start the runner, resubmit or kill interrupted imports."""
        swept = (self.staging.sweep() + self.store.sweep() + self._sweep_work_dir()
                 + (self.trusted.sweep() if self.trusted is not None else 0))
        if swept:
            log.info("removed %d partial upload(s) and run directories left by the last run", swept)
        for record in self.db.with_status(ImageStatus.SAVING.value):  # a trusted upload cut short: no data
            self.db.update(record.id, expect={ImageStatus.SAVING.value}, status=ImageStatus.QUEUED.value)
        for record in self.db.with_status(ImageStatus.UPLOADING.value):
            if not self.staging.has(record.id):  # its only stage upload was cut short
                self.db.update(record.id, expect={ImageStatus.UPLOADING.value}, status=ImageStatus.QUEUED.value)
        self._runner = ImportRunner(self.pipeline, self.staging, store=self._store_accepted, finish=self._finish)
        jobs: list[ImportJob] = []
        for record in self.db.with_status(ImageStatus.IMPORTING.value):
            if self.store.has(record.id):  # stored, but the crash came before the record said so: not kept
                log.warning("image %s: removing stored data its record never listed", record.id)
                self.store.delete(record.id)
            job = job_from_json(record.id, self.staging, record.import_job or {})
            if job is None:
                self.staging.discard(record.id)
                self._finish(ImportJob(record.id, ImportRequest(self.staging.path(record.id))),
                             ImportOutcome(ImageStatus.KILLED, message=INTERRUPTED))
            else:
                jobs.append(job)
        for job, outcome in recover(self.runner, jobs):
            if outcome is None:
                log.info("image %s: import resubmitted after a restart", job.image_id)
            else:
                self._finish(job, outcome)

    def _sweep_work_dir(self) -> int:
        """Remove the temporary directories of runs a crash cut short, when the work_dir is the service's own.

        A run removes its directory when it ends, whatever the verdict; a SIGKILL does not let it.
        A work_dir outside data_dir may be shared with other users of importhooks: left alone.
        """
        work_dir = self.settings.work_dir
        if work_dir is None or not work_dir.resolve().is_relative_to(self.config.data_dir.resolve()):
            return 0
        removed = 0
        for entry in work_dir.glob("importhooks-*"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed

    def stop(self) -> None:
        """Take no new import. Running ones are abandoned: the next start resubmits them."""
        self.method_imports.shutdown()
        if self._runner is not None:
            self._runner.shutdown(wait=False)
        self.retrier.stop()

    # -- data ----------------------------------------------------------------------------

    async def _receive(self, image_id: str, work: Any) -> Any:
        """Await an upload's writer, cut off if the image is deleted meanwhile; a full disk is a 413."""
        with self.uploads.track(image_id) as cancelled:
            try:
                return await run_cancellable(work, cancelled, _deleted_during_upload)
            except ImageGone:  # deleted while the trusted path's checks ran
                raise _deleted_during_upload() from None
            except OSError as exc:
                full = storage_full(exc)
                if full is None:
                    raise
                log.warning("image %s: upload refused, storage full: %s", image_id, exc)
                raise full from None

    async def stage(self, principal: Principal, image_id: str, chunks: AsyncIterable[bytes],
                    headers: Mapping[str, str]) -> int:
        """``PUT /stage``: stage the body for import (refused while halted); the bytes staged."""
        record = self.get_image(principal, image_id, "import_image")
        self.runner.check_open()
        check(Call.STAGE, ImageStatus(record.status))
        declared = declared_size(headers)
        if not self.db.update(record.id, expect=_statuses(Call.STAGE), status=ImageStatus.UPLOADING.value):
            raise self._conflict(record.id, Call.STAGE)
        try:
            size: int = await self._receive(record.id, self.staging.receive(record.id, chunks,
                                                                             declared_size=declared))
        except BaseException:
            # The kit removed the partial file and any earlier staged data: nothing is staged.
            self.db.update(record.id, expect={ImageStatus.UPLOADING.value}, status=ImageStatus.QUEUED.value)
            raise
        if not self.db.update(record.id, expect={ImageStatus.UPLOADING.value}, status=ImageStatus.UPLOADING.value):
            self.staging.discard(record.id)  # deleted while it uploaded
            raise self._conflict(record.id, Call.STAGE)
        return size

    async def upload(self, principal: Principal, image_id: str, chunks: AsyncIterable[bytes],
                     headers: Mapping[str, str]) -> ImageRecord:
        """``PUT /file``, the trusted path: checked (:mod:`.trusted`) unless turned off, stored, ``active``.

        Works while imports are halted."""
        record = self.get_image(principal, image_id, "upload_image")
        require_trusted_upload(principal)
        check(Call.UPLOAD, ImageStatus(record.status))
        for name in ("disk_format", "container_format"):
            if getattr(record, name) is None:
                raise BadRequest(f"Set the image's {name} before uploading its data.", field=name)
        declared = declared_size(headers)
        if not self.db.update(record.id, expect=_statuses(Call.UPLOAD), status=ImageStatus.SAVING.value):
            raise self._conflict(record.id, Call.UPLOAD)
        try:
            if self.trusted is not None:
                checked = await self._receive(record.id, self.trusted.receive_and_check(
                    record, principal, chunks, declared, lambda: self._has_status(record.id, ImageStatus.SAVING)))
                columns, properties = self._split_fields(record, checked.fields)
            else:
                stored = await self._receive(record.id, self.store.receive(record.id, chunks, declared_size=declared))
                columns = {"size": stored.size, "checksum": stored.checksum, "os_hash_algo": stored.os_hash_algo,
                           "os_hash_value": stored.os_hash_value}
                properties = dict(record.properties)
        except BaseException:
            self.store.delete(record.id)
            self.db.update(record.id, expect={ImageStatus.SAVING.value}, status=ImageStatus.QUEUED.value)
            raise
        try:
            written = self.db.update(record.id, expect={ImageStatus.SAVING.value}, status=ImageStatus.ACTIVE.value,
                                     properties=properties, **columns)
        except DatabaseUnavailable:
            written = False
            self.store.delete(record.id)
            self.db.update(record.id, expect={ImageStatus.SAVING.value}, status=ImageStatus.QUEUED.value)
            raise
        if not written:
            self.store.delete(record.id)  # deleted while it uploaded
            raise self._conflict(record.id, Call.UPLOAD)
        return self.get_image(principal, record.id)

    def _has_status(self, image_id: str, status: ImageStatus) -> bool:
        record = self.db.get(image_id)
        return record is not None and record.status == status.value

    def _split_fields(self, record: ImageRecord, fields: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """An accepted run's fields as image columns, and the image's properties with the verified ones."""
        values = dict(fields)
        columns = {name: values.pop(name) for name in OUTCOME_COLUMNS if name in values}
        properties = dict(record.properties)
        properties.update({name: str(value) for name, value in values.items() if value is not None})
        return columns, properties

    # -- import --------------------------------------------------------------------------

    def start_import(self, principal: Principal, image_id: str, body: bytes, content_type: str | None,
                     credentials: Mapping[str, str] | None = None) -> None:
        """``POST /import``: validate, set ``importing``, queue the job; returns at once (202).

        ``credentials``: the caller's own (``{"token": ...}``), for a method that reads their storage.
        """
        record = self.get_image(principal, image_id, "import_image")
        # The method's precheck (web-download resolves the URL's host) ran in a worker thread (app.py).
        request = parse_import_request(body, content_type, self.settings, self.import_methods, precheck=False)
        self.runner.check_open()
        check(Call.IMPORT, ImageStatus(record.status), request.method)
        method = import_methods.get(request.method)
        brings = method is not None and method.bring is not None  # web-download: its data comes later
        if not brings and (self.uploads.count(record.id) or not self.staging.has(record.id)):
            # The status machine cannot tell "staged" from "being staged": both are uploading.
            raise StatusConflict("Cannot import data of this image: its data is still being staged; "
                                 "wait for the upload to finish.")
        user_properties = {name: value for name, value in record.properties.items() if name != "os_type"}
        if record.name is not None:
            user_properties.setdefault("name", record.name)  # policy plugins read the name from here
        image = {"disk_format": record.disk_format, "container_format": record.container_format,
                 "os_type": record.properties.get("os_type")}
        claims = import_claims(request, image, self.settings, user_properties)
        requester = Requester(principal.user, principal.project, principal.roles)
        # The job reads the data the import claims (moved out of the way of later uploads).
        job = ImportJob(record.id, ImportRequest(self.staging.claimed_path(record.id), claims, requester))
        if brings and method is not None:
            if not self.method_imports.start(method, job, dict(request.parameters), job_to_json(job), credentials):
                raise self._conflict(record.id, Call.IMPORT, request.method)
            return
        if not self.db.update(record.id, expect=_statuses(Call.IMPORT, request.method),
                              status=ImageStatus.IMPORTING.value, message=None, import_job=job_to_json(job)):
            raise self._conflict(record.id, Call.IMPORT, request.method)
        try:
            self.staging.claim(record.id)
        except StatusConflict:  # the staged data went away meanwhile (a failed upload, a delete)
            self.db.update(record.id, expect={ImageStatus.IMPORTING.value}, status=ImageStatus.QUEUED.value,
                           import_job=None)
            raise
        try:
            self.runner.submit(job)
        except ImportHalted:
            self.staging.unclaim(record.id)
            self.db.update(record.id, expect={ImageStatus.IMPORTING.value}, status=ImageStatus.UPLOADING.value,
                           import_job=None)
            raise

    def _store_accepted(self, job: ImportJob, path: Path) -> None:
        """The runner's ``store``: move the accepted data in, unless the image was deleted meanwhile."""
        record = self.db.get(job.image_id)
        if record is None or record.status != ImageStatus.IMPORTING.value:
            raise ImageGone(job.image_id)
        self.store.put(job.image_id, path)

    def _finish(self, job: ImportJob, outcome: ImportOutcome) -> None:
        """The runner's ``finish``: record the outcome; if the records cannot be written now, the import ends
        ``killed`` (its stored data removed) as soon as they can (:class:`~.finishing.Retrier`)."""
        try:
            self._record_outcome(job, outcome)
        except DatabaseUnavailable:
            log.error("image %s: its import's outcome (%s) cannot be recorded; killing it once the records can "
                      "be written", job.image_id, outcome.status.value)
            if outcome.status is ImageStatus.ACTIVE:
                self.store.delete(job.image_id)  # never an image in the store that its record does not list
            killed = (outcome if outcome.status is ImageStatus.KILLED
                      else ImportOutcome(ImageStatus.KILLED, message=NOT_RECORDED))
            self.retrier.submit(lambda: self._record_outcome(job, killed))

    def _record_outcome(self, job: ImportJob, outcome: ImportOutcome) -> None:
        """``active`` with the verified fields and properties, or ``killed``; :class:`DatabaseUnavailable` if it
        cannot be written."""
        image_id = job.image_id
        if outcome.result is not None and not outcome.result.accepted:
            found = "; ".join(f"{f.code}: {f.detail or f.message}" for f in outcome.result.findings
                              if f.severity.value == "error")
            log.info("image %s rejected: %s", image_id, found)
        if outcome.status is ImageStatus.DELETED:  # deleted during its import: nothing was stored
            return
        if outcome.status is ImageStatus.ACTIVE:
            record = self.db.get(image_id)
            if record is None:
                self.store.delete(image_id)
                return
            columns, properties = self._split_fields(record, outcome.fields)
            if self.db.update(image_id, expect={ImageStatus.IMPORTING.value}, status=ImageStatus.ACTIVE.value,
                              message=None, import_job=None, properties=properties, **columns):
                log.info("image %s imported: active", image_id)
            else:
                self.store.delete(image_id)  # deleted during its import
            return
        if self.db.update(image_id, expect={ImageStatus.IMPORTING.value}, status=ImageStatus.KILLED.value,
                          message=outcome.message or "The image was rejected.", import_job=None):
            log.info("image %s killed: %s", image_id, outcome.message)
