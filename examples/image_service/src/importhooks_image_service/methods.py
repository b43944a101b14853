"""Imports by methods that bring their own data (web-download, swift-local): the read in the background, then import.

``POST /import`` with such a method is answered 202 once the request is valid (a refused URL
is a 400 there); the image goes ``queued`` -> ``importing`` at once, as in Glance, and one of
:class:`MethodImports`' workers runs the method's ``bring`` (the kit's fetcher, which stages
the data within the upload limits), then claims what it staged and hands the import to the
kit's runner, exactly as for ``glance-direct``.

A download that fails (a redirect to a refused address, too large, too slow, an HTTP error, a
broken connection) or is refused by the kill switch reverts the image to ``queued`` with the
reason in its ``message``, as Glance reverts a failed web-download: nothing is staged, and the
user may import again with another URL. Data the pipeline rejects ends ``killed``, as always.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType
from typing import TYPE_CHECKING

from importhooks.errors import RequestError
from importhooks.server.methods import ImportMethod, MethodRequest
from importhooks.server.runner import ImportJob
from importhooks.server.status import ImageStatus

if TYPE_CHECKING:
    from .service import ImageService

log = logging.getLogger(__name__)

DOWNLOAD_FAILED = "The download failed."


class MethodImports:
    """The background workers of the methods that bring data; as many as ``max_concurrent_imports``."""

    def __init__(self, service: ImageService) -> None:
        self.service = service
        self._pool = ThreadPoolExecutor(max_workers=service.settings.max_concurrent_imports,
                                        thread_name_prefix="import-method")

    def start(self, method: ImportMethod, job: ImportJob, parameters: dict[str, object], record_json: dict[str, object],
              credentials: Mapping[str, str] | None = None) -> bool:
        """Set the image ``importing`` (from ``queued``) and queue the download; False if the image changed.

        ``credentials`` (the caller's token, for swift-local) go to the method only: neither logged nor stored.
        """
        service = self.service
        if not service.db.update(job.image_id, expect={ImageStatus.QUEUED.value}, status=ImageStatus.IMPORTING.value,
                                 message=None, import_job=record_json):
            return False
        self._pool.submit(self._run, method, job, parameters, MappingProxyType(dict(credentials or {})))
        return True

    def _run(self, method: ImportMethod, job: ImportJob, parameters: dict[str, object],
             credentials: Mapping[str, str]) -> None:
        service = self.service
        assert method.bring is not None
        try:
            size = method.bring(MethodRequest(job.image_id, parameters, service.staging, service.settings,
                                              job.request.requester, credentials, halted=service.is_halted))
            record = service.db.get(job.image_id)
            if record is None or record.status != ImageStatus.IMPORTING.value:  # deleted meanwhile
                service.staging.discard(job.image_id)
                return
            log.info("image %s: %s brought %d bytes", job.image_id, method.name, size)
            service.staging.claim(job.image_id)
            service.runner.submit(job)
        except RequestError as exc:
            self._revert(job, exc.message)
        except Exception:
            log.exception("image %s: %s failed", job.image_id, method.name)
            self._revert(job, DOWNLOAD_FAILED)

    def _revert(self, job: ImportJob, message: str) -> None:
        service = self.service
        service.staging.release(job.image_id)
        service.staging.discard(job.image_id)
        if service.db.update(job.image_id, expect={ImageStatus.IMPORTING.value}, status=ImageStatus.QUEUED.value,
                             message=message, import_job=None):
            log.info("image %s: import reverted to queued: %s", job.image_id, message)

    def shutdown(self) -> None:
        """Take no new download; those running are abandoned (their images are recovered at the next start)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
