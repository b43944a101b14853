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

import logging
import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from importhooks import Pipeline, Settings
from importhooks.errors import BadRequest, ImageGone, ImportHalted, RequestError, StatusConflict
from importhooks.request import Claims, ImportRequest, Requester
from importhooks.server import methods as import_methods
from importhooks.server.runner import INTERRUPTED, ImportJob, ImportOutcome, ImportRunner, recover
from importhooks.server.staging import StagingArea, image_key
from importhooks.server.status import Call, ImageStatus, allowed, check
from importhooks.server.validation import import_claims, parse_import_request

from .auth import require_trusted_upload
from .config import Principal, ServiceConfig
from .db import ImageDB, ImageRecord, now
from .errors import Conflict, Forbidden, NotFound
from .methods import MethodImports
from .store import ImageStore
from .validation import declared_size, validate_new_image

log = logging.getLogger(__name__)

#: Fields of an accepted import's outcome that are image columns; the others are properties.
OUTCOME_COLUMNS = ("size", "virtual_size", "checksum", "os_hash_algo", "os_hash_value", "disk_format",
                   "container_format")


def _statuses(call: Call, method: str | None = None) -> frozenset[str]:
    """The statuses ``call`` may start from, by the kit's status machine."""
    return frozenset(status.value for status in ImageStatus if allowed(call, status, method))


def job_to_json(job: ImportJob) -> dict[str, Any]:
    """What the record keeps of an import job, to run it again after a restart."""
    request = job.request
    claims = request.claims
    return {
        "request_id": request.request_id,
        "requester": {"user": request.requester.user, "project": request.requester.project,
                      "roles": list(request.requester.roles)},
        "claims": {"disk_format": claims.disk_format, "container_format": claims.container_format,
                   "os_type": claims.os_type, "properties": dict(claims.properties)},
    }


def job_from_json(image_id: str, staging: StagingArea, data: Mapping[str, Any]) -> ImportJob | None:
    """The job :func:`job_to_json` saved; ``None`` if the record's copy is unusable."""
    try:
        who, said = data["requester"], data["claims"]
        claims = Claims(disk_format=said["disk_format"], container_format=said["container_format"],
                        os_type=said["os_type"], properties=MappingProxyType(dict(said["properties"])))
        requester = Requester(who["user"], who["project"], tuple(who["roles"]))
        path = staging.claimed_path(image_id)
        return ImportJob(image_id, ImportRequest(path, claims, requester, str(data["request_id"])))
    except (KeyError, TypeError, ValueError):
        return None


class ImageService:
    """Images, their data and their imports, for the HTTP layer (:mod:`.app`) to call."""

    def __init__(self, config: ServiceConfig, *, extra_plugins: Iterable[tuple[str, object]] = ()) -> None:
        self.config = config
        self.settings: Settings = config.importhooks
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.settings.work_dir is not None:
            self.settings.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Built first: a bad setting or plugin stops the service before it touches any data.
        self.pipeline = Pipeline.from_settings(self.settings, extra_plugins=extra_plugins)
        self.db = ImageDB(config.database)
        self.staging = StagingArea(config.staging_dir, self.settings)
        self.store = ImageStore(config.store_dir, self.settings)
        self.import_methods = import_methods.enabled_names(self.settings)  # ConfigError for an unknown one
        self.method_imports = MethodImports(self)
        self._runner: ImportRunner | None = None
        #: Stage uploads in flight, per image (touched only by the event loop's thread).
        self._uploads: Counter[str] = Counter()

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
        swept = self.staging.sweep() + self.store.sweep() + self._sweep_work_dir()
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

    # -- records -------------------------------------------------------------------------

    def create_image(self, principal: Principal, body: object) -> ImageRecord:
        """``POST /v2/images``: a new ``queued`` image of the caller's project."""
        fields, properties = validate_new_image(body, self.settings, admin=principal.has_role("admin"))
        stamp = now()
        record = ImageRecord(id=str(uuid.uuid4()), owner=principal.project, status=ImageStatus.QUEUED.value,
                             created_at=stamp, updated_at=stamp, properties=MappingProxyType(properties), **fields)
        self.db.insert(record)
        return record

    def get_image(self, principal: Principal, image_id: str) -> ImageRecord:
        """The caller's image; :class:`NotFound` for a bad id, a deleted image or another project's."""
        try:
            key = image_key(image_id)
        except BadRequest:
            raise NotFound("No image found with this ID.") from None
        record = self.db.get(key)
        if record is None or record.owner != principal.project or record.status == ImageStatus.DELETED.value:
            raise NotFound("No image found with this ID.")
        return record

    def list_images(self, principal: Principal, name: str | None = None, status: str | None = None,
                    hidden: bool = False) -> list[ImageRecord]:
        """``GET /v2/images``: the caller's project's images (``hidden``: only the ``os_hidden`` ones)."""
        return self.db.by_owner(principal.project, name=name, status=status, hidden=hidden)

    def delete_image(self, principal: Principal, image_id: str) -> None:
        """``DELETE``: the record is marked deleted, its staged and stored data removed.

        An import still running is not interrupted; its outcome finds the image deleted and is
        dropped, and the data it may have stored is removed (:meth:`_finish`)."""
        record = self.get_image(principal, image_id)
        if record.protected:
            raise Forbidden("The image is protected and cannot be deleted.")
        live = [status.value for status in ImageStatus if status is not ImageStatus.DELETED]
        if not self.db.update(record.id, expect=live, status=ImageStatus.DELETED.value, import_job=None):
            raise NotFound("No image found with this ID.")
        self.staging.discard(record.id)
        self.store.delete(record.id)

    def _conflict(self, image_id: str, call: Call, method: str | None = None) -> RequestError:
        """Why a conditional status change lost its race, as the error to answer with."""
        record = self.db.get(image_id)
        if record is None or record.status == ImageStatus.DELETED.value:
            return NotFound("No image found with this ID.")
        try:
            check(call, ImageStatus(record.status), method)
        except StatusConflict as exc:
            return exc
        return Conflict("The image changed while this request ran; try again.")

    # -- data ----------------------------------------------------------------------------

    async def stage(self, principal: Principal, image_id: str, chunks: AsyncIterable[bytes],
                    headers: Mapping[str, str]) -> int:
        """``PUT /stage``: stage the body for import (refused while halted); the bytes staged."""
        record = self.get_image(principal, image_id)
        self.runner.check_open()
        check(Call.STAGE, ImageStatus(record.status))
        declared = declared_size(headers)
        if not self.db.update(record.id, expect=_statuses(Call.STAGE), status=ImageStatus.UPLOADING.value):
            raise self._conflict(record.id, Call.STAGE)
        self._uploads[record.id] += 1
        try:
            size = await self.staging.receive(record.id, chunks, declared_size=declared)
        except BaseException:
            # The kit removed the partial file and any earlier staged data: nothing is staged.
            self.db.update(record.id, expect={ImageStatus.UPLOADING.value}, status=ImageStatus.QUEUED.value)
            raise
        finally:
            self._uploads[record.id] -= 1
            if self._uploads[record.id] <= 0:
                del self._uploads[record.id]
        if not self.db.update(record.id, expect={ImageStatus.UPLOADING.value}, status=ImageStatus.UPLOADING.value):
            self.staging.discard(record.id)  # deleted while it uploaded
            raise self._conflict(record.id, Call.STAGE)
        return size

    async def upload(self, principal: Principal, image_id: str, chunks: AsyncIterable[bytes],
                     headers: Mapping[str, str]) -> ImageRecord:
        """``PUT /file``, the trusted path: store the body as is, ``active``; works while imports are halted."""
        require_trusted_upload(principal)
        record = self.get_image(principal, image_id)
        check(Call.UPLOAD, ImageStatus(record.status))
        for name in ("disk_format", "container_format"):
            if getattr(record, name) is None:
                raise BadRequest(f"Set the image's {name} before uploading its data.", field=name)
        declared = declared_size(headers)
        if not self.db.update(record.id, expect=_statuses(Call.UPLOAD), status=ImageStatus.SAVING.value):
            raise self._conflict(record.id, Call.UPLOAD)
        try:
            stored = await self.store.receive(record.id, chunks, declared_size=declared)
        except BaseException:
            self.db.update(record.id, expect={ImageStatus.SAVING.value}, status=ImageStatus.QUEUED.value)
            raise
        if not self.db.update(record.id, expect={ImageStatus.SAVING.value}, status=ImageStatus.ACTIVE.value,
                              size=stored.size, checksum=stored.checksum, os_hash_algo=stored.os_hash_algo,
                              os_hash_value=stored.os_hash_value):
            self.store.delete(record.id)  # deleted while it uploaded
            raise self._conflict(record.id, Call.UPLOAD)
        return self.get_image(principal, record.id)

    # -- import --------------------------------------------------------------------------

    def start_import(self, principal: Principal, image_id: str, body: bytes, content_type: str | None) -> None:
        """``POST /import``: validate, set ``importing``, queue the job; returns at once (202)."""
        record = self.get_image(principal, image_id)
        # The method's precheck (web-download resolves the URL's host) ran in a worker thread (app.py).
        request = parse_import_request(body, content_type, self.settings, self.import_methods, precheck=False)
        self.runner.check_open()
        check(Call.IMPORT, ImageStatus(record.status), request.method)
        method = import_methods.get(request.method)
        brings = method is not None and method.bring is not None  # web-download: its data comes later
        if not brings and (self._uploads.get(record.id) or not self.staging.has(record.id)):
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
            if not self.method_imports.start(method, job, dict(request.parameters), job_to_json(job)):
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
        """The runner's ``finish``: ``active`` with the verified fields and properties, or ``killed``."""
        image_id = job.image_id
        if outcome.result is not None and not outcome.result.accepted:
            found = "; ".join(f"{f.code}: {f.detail or f.message}" for f in outcome.result.findings
                              if f.severity.value == "error")
            log.info("image %s rejected: %s", image_id, found)
        if outcome.status is ImageStatus.DELETED:  # deleted during its import: nothing was stored
            return
        if outcome.status is ImageStatus.ACTIVE:
            fields = dict(outcome.fields)
            columns = {name: fields.pop(name) for name in OUTCOME_COLUMNS if name in fields}
            record = self.db.get(image_id)
            properties = dict(record.properties) if record is not None else {}
            properties.update({name: str(value) for name, value in fields.items() if value is not None})
            if self.db.update(image_id, expect={ImageStatus.IMPORTING.value}, status=ImageStatus.ACTIVE.value,
                              message=None, import_job=None, properties=properties, **columns):
                log.info("image %s imported: active", image_id)
            else:
                self.store.delete(image_id)  # deleted during its import
            return
        if self.db.update(image_id, expect={ImageStatus.IMPORTING.value}, status=ImageStatus.KILLED.value,
                          message=outcome.message or "The image was rejected.", import_job=None):
            log.info("image %s killed: %s", image_id, outcome.message)
