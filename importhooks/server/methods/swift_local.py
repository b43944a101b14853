"""``swift-local``: the service reads an object of the user's own object store, with the user's own token.

The request is ``{"method": {"name": "swift-local", "container": "images", "object": "disk.qcow2"}}``
(the schema part is :data:`importhooks.server.swift.REQUEST_PARAMETERS`). The names are
checked while the request is answered (:func:`precheck`: a bad name is a 400, before any
request to the object store). In the background, :func:`bring` reads the object with
:func:`~importhooks.server.swift.fetch_object` into staging, within ``max_upload_bytes`` and
``max_upload_time``:

* the token is the requester's own (``MethodRequest.credentials["token"]``, the one they
  authenticated the import call with), never the service's: Swift itself decides what the
  user may read, so another project's container is refused (403) whatever its name;
* the storage URL is the operator's ``[swift_local] storage_url`` template filled with the
  requester's project id (:func:`storage_url_for`), never anything from the request: a URL a
  user could choose would make this a web-download without web-download's address checks;
* the kill switch (``MethodRequest.halted``) is asked every :data:`HALT_POLL` seconds while
  the object is read; when it turns true the read is cancelled, nothing stays staged, and the
  failure is :class:`~importhooks.errors.ImportHalted`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

from ... import codes
from ...errors import ImportHalted
from ...method_settings import SwiftLocalSettings
from ...settings import Settings
from .. import swift
from . import ImportMethod, MethodRequest, register

__all__ = ["HALT_POLL", "METHOD", "bring", "precheck", "storage_url_for"]

log = logging.getLogger(__name__)

#: How often, in seconds, the kill switch is asked while an object is read.
HALT_POLL = 0.2


def precheck(parameters: Mapping[str, Any], settings: Settings) -> None:
    """Refuse (400) a container or object name Swift would not take, before any request."""
    swift.check_container(parameters.get("container"))
    swift.check_object(parameters.get("object"))


def storage_url_for(table: SwiftLocalSettings, project: str | None) -> str:
    """The requester's storage URL: ``storage_url`` with ``{project_id}`` filled (quoted); '' if unknown."""
    if not table.storage_url or (not project and "{project_id}" in table.storage_url):
        return ""
    return table.storage_url.format(project_id=quote(project or "", safe=""))


async def _fetch(request: MethodRequest, storage_url: str, token: str) -> int:
    fetch = swift.fetch_object(storage_url, token, str(request.parameters.get("container", "")),
                               str(request.parameters.get("object", "")), request.staging, request.image_id,
                               request.settings)
    halted = request.halted
    if halted is None:
        return await fetch
    return await _unless_halted(asyncio.ensure_future(fetch), halted)


async def _unless_halted(task: asyncio.Future[int], halted: Callable[[], bool]) -> int:
    while True:
        done, _pending = await asyncio.wait({task}, timeout=HALT_POLL)
        if done:
            return task.result()
        if halted():
            task.cancel()  # fetch_object discards what it staged on any exit, cancellation included
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise ImportHalted(codes.HALTED.summary)


def bring(request: MethodRequest) -> int:
    """Read the request's object into staging with the requester's own token; the bytes staged."""
    token = request.credentials.get("token", "")
    project = request.requester.project if request.requester is not None else None
    storage_url = storage_url_for(request.settings.swift_local, project)
    if not storage_url:  # not configured, or no project to fill in: an operator's matter, not the user's
        log.error("swift-local: no storage URL for image %s (set [swift_local] storage_url)", request.image_id)
        raise swift.ObjectStoreUnavailable(swift.UNAVAILABLE)
    if request.halted is not None and request.halted():
        raise ImportHalted(codes.HALTED.summary)
    return asyncio.run(_fetch(request, storage_url, token))


METHOD = register(ImportMethod(
    swift.METHOD, MappingProxyType(swift.REQUEST_PARAMETERS[0]), swift.REQUEST_PARAMETERS[1],
    bring=bring, precheck=precheck,
    description="Import an object of your own object-store container, read with your own credentials.",
))
