"""The filesystem image store: one file per active image, named by its id, moved in whole.

Data enters the store two ways, and in both a reader never sees half an image:

* an accepted import: :meth:`ImageStore.put` moves the data the pipeline accepted (the
  staged file, or the layer its last ``sanitize`` produced) in with ``os.replace``, or, when
  it is on another filesystem, copies it to a private partial file and renames that;
* the trusted upload path (``PUT /file``): :meth:`ImageStore.receive` streams the body to a
  private partial file, computing ``size``, md5 and the multihash as it goes, and renames it
  when the body is complete.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path

from importhooks import Settings
from importhooks.server.staging import StagingArea

_COPY_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class StoredData:
    """What the trusted upload path computed while it wrote an image."""

    size: int
    checksum: str
    os_hash_algo: str
    os_hash_value: str


class ImageStore:
    """Images at rest in ``directory`` (private to the service).

    Files are named, written and swept by the kit's :class:`~importhooks.server.staging.StagingArea`
    (one file per image id, private partial files renamed when complete), with the trusted
    path's limits: ``max_image_size`` bytes and ``max_upload_time``.
    """

    def __init__(self, directory: Path, settings: Settings) -> None:
        self.directory = Path(directory)
        self._area = StagingArea(self.directory, settings.replace(max_upload_bytes=settings.max_image_size))
        self._hash_algo = settings.hashing_algorithm

    def path(self, image_id: str) -> Path:
        return self._area.path(image_id)

    def has(self, image_id: str) -> bool:
        return self._area.has(image_id)

    def delete(self, image_id: str) -> None:
        self._area.discard(image_id)

    def sweep(self) -> int:
        """Remove partial files a crash left behind; how many were removed."""
        return self._area.sweep()

    def put(self, image_id: str, source: Path) -> None:
        """Move ``source`` in as the data of ``image_id``: a rename, or a copy then a rename across filesystems."""
        try:
            os.replace(source, self.path(image_id))
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            with open(source, "rb") as src:
                self._area.receive_sync(image_id, iter(lambda: src.read(_COPY_CHUNK), b""))

    async def receive(self, image_id: str, chunks: AsyncIterable[bytes], *,
                      declared_size: int | None) -> StoredData:
        """Write ``chunks`` as the data of ``image_id``; its size and checksums, computed on the way.

        The kit's writer enforces the limits (:class:`~importhooks.errors.PayloadTooLarge`,
        :class:`~importhooks.errors.RequestTimeout`, :class:`~importhooks.errors.BadRequest` for a
        short body); on any failure nothing is left in the store.
        """
        md5 = hashlib.md5(usedforsecurity=False)
        multihash = hashlib.new(self._hash_algo)

        def observe(chunk: bytes) -> None:
            md5.update(chunk)
            multihash.update(chunk)

        size = await self._area.receive(image_id, chunks, declared_size=declared_size, observe=observe)
        return StoredData(size, md5.hexdigest(), self._hash_algo, multihash.hexdigest())
