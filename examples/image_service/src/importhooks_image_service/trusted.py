"""The trusted upload path's checks: ``PUT /file`` data goes through the import's checks before it is stored.

Glance (2024 and later) inspects uploaded data too: the format must match the image's
``disk_format`` and the safety checks must pass. This service runs the whole importhooks
pipeline over the uploaded data (the disk-format, safety, container and size checks among
them), with two differences from an import: the image need not claim an ``os_type`` (an
administrator's upload often has none) and the kill switch does not stop it (the trusted path
keeps working while imports are halted). ``trusted_upload_checks = false`` in the service's
configuration turns this off: the data is then stored as sent.

The upload is written to ``DATA_DIR/uploads`` first (the kit's staging writer, within
``max_image_size`` and ``max_upload_time``), checked there in a worker thread, and moved into
the store only when accepted; it is removed in every case.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from importhooks import Pipeline, Settings
from importhooks.errors import BadRequest, ImageGone
from importhooks.request import Claims, ImportRequest, Requester
from importhooks.result import ImportResult
from importhooks.server.runner import image_fields
from importhooks.server.staging import StagingArea

from .config import Principal
from .db import ImageRecord
from .store import ImageStore


class UploadRejected(BadRequest):
    """The uploaded data failed the checks (400, the pipeline's user-safe message); nothing was stored."""


@dataclass(frozen=True, slots=True)
class CheckedUpload:
    """What an accepted upload's run found: the image's columns and its protected properties."""

    fields: dict[str, Any]


class TrustedUploads:
    """Receives trusted uploads, runs the checks, moves accepted data into the store."""

    def __init__(self, directory: Path, settings: Settings, store: ImageStore,
                 extra_plugins: Iterable[tuple[str, object]] = ()) -> None:
        checked = settings.replace(require_os_type=False, halt=False, halt_file=None)
        self.pipeline = Pipeline.from_settings(checked, extra_plugins=extra_plugins)
        self.area = StagingArea(directory, settings.replace(max_upload_bytes=settings.max_image_size))
        self.store = store

    def sweep(self) -> int:
        """Remove what a crash left behind (partial and complete uploads alike)."""
        removed = self.area.sweep()
        for entry in self.area.directory.iterdir():
            if entry.is_file():
                entry.unlink(missing_ok=True)
                removed += 1
        return removed

    def _store(self, image_id: str, path: Path, wanted: Callable[[], bool]) -> None:
        """Move accepted data in, unless the image went away meanwhile (checked before and after the move,
        so a delete racing the run's thread never leaves a stored file behind)."""
        if not wanted():
            raise ImageGone(image_id)
        self.store.put(image_id, path)
        if not wanted():
            self.store.delete(image_id)
            raise ImageGone(image_id)

    def _check(self, request: ImportRequest, image_id: str, wanted: Callable[[], bool]) -> ImportResult:
        try:
            return self.pipeline.run(request, store=lambda path: self._store(image_id, path, wanted))
        finally:
            self.area.discard(image_id)

    async def receive_and_check(self, record: ImageRecord, principal: Principal, chunks: AsyncIterable[bytes],
                                declared_size: int | None, wanted: Callable[[], bool]) -> CheckedUpload:
        """Write, check and store the data of ``record``; :class:`UploadRejected` when the checks refuse it.

        ``wanted`` tells whether the image still waits for this data (the run goes on in its thread
        if the request is cut off)."""
        try:
            await self.area.receive(record.id, chunks, declared_size=declared_size)
        except BaseException:
            self.area.discard(record.id)
            raise
        claims = Claims(disk_format=record.disk_format, container_format=record.container_format,
                        os_type=record.properties.get("os_type"),
                        properties=MappingProxyType({"name": record.name or ""}))
        request = ImportRequest(self.area.path(record.id), claims,
                                Requester(principal.user, principal.project, principal.roles))
        # The thread removes the data when its run ends, also when this request is cut off meanwhile.
        result = await asyncio.to_thread(self._check, request, record.id, wanted)
        if not result.accepted:
            raise UploadRejected(result.user_message or "The image data was rejected.", field="data")
        return CheckedUpload(image_fields(result))
