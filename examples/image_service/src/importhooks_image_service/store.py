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
import shutil
import uuid
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path

from importhooks.errors import BadRequest, PayloadTooLarge
from importhooks.staging import image_key

PARTIAL_PREFIX = ".partial-"
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class StoredData:
    """What the trusted upload path computed while it wrote an image."""

    size: int
    checksum: str
    os_hash_algo: str
    os_hash_value: str


class ImageStore:
    """Images at rest in ``directory`` (private to the service)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, image_id: str) -> Path:
        return self.directory / image_key(image_id)

    def has(self, image_id: str) -> bool:
        return self.path(image_id).is_file()

    def delete(self, image_id: str) -> None:
        self.path(image_id).unlink(missing_ok=True)

    def sweep(self) -> int:
        """Remove partial files a crash left behind; how many were removed."""
        removed = 0
        for entry in self.directory.glob(f"{PARTIAL_PREFIX}*"):
            entry.unlink(missing_ok=True)
            removed += 1
        return removed

    def _partial(self, image_id: str) -> Path:
        return self.directory / f"{PARTIAL_PREFIX}{image_key(image_id)}-{uuid.uuid4().hex}"

    def put(self, image_id: str, source: Path) -> None:
        """Move ``source`` in as the data of ``image_id``: a rename, or a copy then a rename across filesystems."""
        target = self.path(image_id)
        try:
            os.replace(source, target)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        partial = self._partial(image_id)
        try:
            with open(source, "rb") as src, open(partial, "xb") as dst:
                os.fchmod(dst.fileno(), 0o600)
                shutil.copyfileobj(src, dst, _COPY_CHUNK)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    async def receive(self, image_id: str, chunks: AsyncIterable[bytes], *, declared_size: int | None,
                      limit: int, hash_algo: str) -> StoredData:
        """Write ``chunks`` as the data of ``image_id``, at most ``limit`` bytes; the sizes and checksums.

        :class:`PayloadTooLarge` past ``limit`` (or when ``declared_size`` is over it),
        :class:`BadRequest` when the body ends before ``declared_size``; on any failure the
        partial file is removed and the store is unchanged.
        """
        if declared_size is not None and declared_size > limit:
            raise PayloadTooLarge(f"The image is larger than this cloud accepts ({limit} bytes).")
        md5 = hashlib.md5(usedforsecurity=False)
        multihash = hashlib.new(hash_algo)
        size = 0
        partial = self._partial(image_id)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"The image is larger than this cloud accepts ({limit} bytes).")
                md5.update(chunk)
                multihash.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            if declared_size is not None and size != declared_size:
                raise BadRequest(f"The upload ended after {size} of {declared_size} declared bytes.",
                                 field="Content-Length")
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(partial, self.path(image_id))
        except BaseException:
            if fd >= 0:
                os.close(fd)
            partial.unlink(missing_ok=True)
            raise
        return StoredData(size, md5.hexdigest(), hash_algo, multihash.hexdigest())
