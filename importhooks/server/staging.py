"""The staging writer: a request body streamed to a staging file the library names, within limits.

A server hands :meth:`StagingArea.receive` (ASGI and other ``async`` stacks) or
:meth:`StagingArea.receive_sync` (WSGI) the request body as an iterator of chunks, chunked
or with a ``Content-Length``, never the body itself. The writer:

* names the file from the image id (a UUID, checked) in the staging directory; nothing
  from the request reaches a path;
* refuses a declared size over ``max_upload_bytes`` before reading a byte, and stops an
  undeclared body the moment it passes the limit (:class:`~importhooks.errors.PayloadTooLarge`, 413);
* stops an upload that runs past ``max_upload_time`` from its start, including one that
  trickles bytes or sends none (:class:`~importhooks.errors.RequestTimeout`, 408; the
  ``async`` path is woken by a timer, the sync path relies on the server's socket timeout
  between chunks);
* writes into a private partial file, made with ``O_EXCL`` and mode 0600, and renames it
  over the staged file only when the body is complete: several uploads may be made, the
  last complete one wins, and a reader never sees half an upload;
* on any failure (a limit, a client that disconnects, a short body, a full disk) removes
  the partial file *and* any earlier staged data, so that nothing is left staged and the
  image goes back to ``queued``;
* hands the staged data to an import with :meth:`StagingArea.claim`, which moves it out of
  the way of later uploads.

Holding at most one chunk in memory, its memory use is flat in the upload size.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterable, Callable, Iterable
from pathlib import Path

from ..errors import BadRequest, PayloadTooLarge, RequestTimeout, StatusConflict
from ..settings import Settings

PARTIAL_PREFIX = ".partial-"
CLAIM_PREFIX = ".import-"


def image_key(image_id: str) -> str:
    """The canonical form of an image id, which must be a UUID; :class:`BadRequest` otherwise."""
    try:
        return str(uuid.UUID(image_id))
    except (ValueError, TypeError, AttributeError):
        raise BadRequest("Image ids are UUIDs.", field="image_id") from None


class _Partial:
    """One upload in progress: a private file, the bytes written, the deadline."""

    def __init__(self, area: StagingArea, image_id: str, declared_size: int | None,
                 observe: Callable[[bytes], object] | None) -> None:
        self.area = area
        self.key = image_key(image_id)
        self.limit = area.settings.max_upload_bytes
        if declared_size is not None and declared_size > self.limit:
            area.discard(self.key)  # a refused upload leaves nothing staged, like any other failure
            raise PayloadTooLarge(f"The upload is larger than this cloud accepts ({self.limit} bytes).")
        self.declared = declared_size
        self.observe = observe
        self.deadline = time.monotonic() + area.settings.max_upload_time
        self.path = area.directory / f"{PARTIAL_PREFIX}{self.key}-{uuid.uuid4().hex}"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise PayloadTooLarge(f"The upload is larger than this cloud accepts ({self.limit} bytes).")
        if time.monotonic() > self.deadline:
            raise self.timeout()
        if self.observe is not None:
            self.observe(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.fd, view):]

    def timeout(self) -> RequestTimeout:
        limit = self.area.settings.max_upload_time
        return RequestTimeout(f"The upload took longer than this cloud allows ({limit:g} s).")

    def commit(self) -> int:
        if self.declared is not None and self.size != self.declared:
            raise BadRequest(f"The upload ended after {self.size} of {self.declared} declared bytes.",
                             field="Content-Length")
        os.close(self.fd)
        self.fd = -1
        os.replace(self.path, self.area.path(self.key))
        return self.size

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)
        self.area.discard(self.key)


class StagingArea:
    """Staged uploads, one file per image, in ``directory`` (which the server gives the library alone)."""

    def __init__(self, directory: Path, settings: Settings) -> None:
        self.directory = Path(directory)
        self.settings = settings
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, image_id: str) -> Path:
        """Where the staged data of ``image_id`` is (whether or not there is any)."""
        return self.directory / image_key(image_id)

    def has(self, image_id: str) -> bool:
        """Whether data is staged for ``image_id``."""
        return self.path(image_id).is_file()

    def discard(self, image_id: str) -> None:
        """Remove the staged data of ``image_id``, if any (not the data an import claimed)."""
        self.path(image_id).unlink(missing_ok=True)

    def claimed_path(self, image_id: str) -> Path:
        """Where the data an import of ``image_id`` claimed is (whether or not there is any)."""
        return self.directory / f"{CLAIM_PREFIX}{image_key(image_id)}"

    def claim(self, image_id: str) -> Path:
        """Take the staged data of ``image_id`` for its import: the path the import must read.

        The staged file is renamed to a path of the import's own, so a stage upload that
        completes later cannot change the data under the running import (the status machine
        cannot tell a staged image from one still being staged: both are ``uploading``).
        Claiming again, e.g. when an import is resubmitted after a restart, returns the same
        path. :class:`StatusConflict` (409) if nothing is staged or claimed.
        """
        target = self.claimed_path(image_id)
        try:
            os.replace(self.path(image_id), target)
        except FileNotFoundError:
            if not target.is_file():
                raise StatusConflict("No data is staged for this image; stage it first.") from None
        return target

    def unclaim(self, image_id: str) -> None:
        """Give claimed data back to staging (an import refused after the claim, e.g. by the kill switch)."""
        try:
            os.replace(self.claimed_path(image_id), self.path(image_id))
        except FileNotFoundError:
            pass

    def release(self, image_id: str) -> None:
        """Remove the data an import of ``image_id`` claimed, if any (the runner does, when the import ends)."""
        self.claimed_path(image_id).unlink(missing_ok=True)

    def sweep(self) -> int:
        """Remove partial files a crash left behind (call once at start); how many were removed."""
        removed = 0
        for entry in self.directory.glob(f"{PARTIAL_PREFIX}*"):
            entry.unlink(missing_ok=True)
            removed += 1
        return removed

    async def receive(self, image_id: str, chunks: AsyncIterable[bytes], *, declared_size: int | None = None,
                      observe: Callable[[bytes], object] | None = None) -> int:
        """Stage ``chunks`` as the data of ``image_id``; the bytes staged. See the module doc for the failures.

        ``observe``, if given, sees each chunk before it is written (e.g. ``hashlib`` objects' ``update``).
        """
        upload = _Partial(self, image_id, declared_size, observe)
        try:
            async with asyncio.timeout(max(0.0, upload.deadline - time.monotonic())):
                async for chunk in chunks:
                    upload.write(chunk)
            return upload.commit()
        except TimeoutError:
            upload.abort()
            raise upload.timeout() from None
        except BaseException:
            upload.abort()
            raise

    def receive_sync(self, image_id: str, chunks: Iterable[bytes], *, declared_size: int | None = None,
                     observe: Callable[[bytes], object] | None = None) -> int:
        """:meth:`receive` for a synchronous body (a WSGI input read in chunks)."""
        upload = _Partial(self, image_id, declared_size, observe)
        try:
            for chunk in chunks:
                upload.write(chunk)
            return upload.commit()
        except BaseException:
            upload.abort()
            raise
