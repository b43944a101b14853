"""The data of an import, read within budgets.

:class:`ImageData` is one layer of data (the staged file, or what ``sanitize`` made
of it). Plugins read it only through :meth:`ImageData.open` (random access) and
:meth:`ImageData.stream` (sequential); both count every byte against the layer's
read budget and call the run's ``check`` so a timeout or a halt stops a plugin at
its next read. The first complete sequential pass also computes the checksums, so
``finalize`` does not read the data again.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataChanged, ReadBudgetExceeded

CHUNK_SIZE = 1 << 20
_SLACK = 1 << 20  # budget for headers re-read at the edges of small files


@dataclass(frozen=True, slots=True)
class Checksums:
    """Glance's ``checksum`` (md5) and multihash of one data layer."""

    md5: str
    hash_algo: str
    hash_value: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "checksum": self.md5,
            "os_hash_algo": self.hash_algo,
            "os_hash_value": self.hash_value,
            "size": self.size,
        }


class ImageData:
    """One layer of an import's data: a file the pipeline controls, opened read-only."""

    def __init__(
        self,
        path: Path,
        *,
        kind: str,
        check: Callable[[], None],
        max_read_passes: int,
        hash_algo: str = "sha512",
        on_progress: Callable[[int, int], None] | None = None,
        parent: ImageData | None = None,
    ) -> None:
        self.path = path
        self.kind = kind
        self.parent = parent
        self.size = os.stat(path).st_size
        #: Facts recorded about this layer by ``inspect`` plugins.
        self.facts: dict[str, Any] = {}
        self._check = check
        self._hash_algo = hash_algo
        self._on_progress = on_progress
        self._budget = max_read_passes * self.size + _SLACK
        self._read = 0
        self._lock = threading.Lock()
        self._checksums: Checksums | None = None

    @property
    def bytes_read(self) -> int:
        """How many bytes plugins have read from this layer so far."""
        return self._read

    def _charge(self, nbytes: int) -> None:
        self._check()
        with self._lock:
            self._read += nbytes
            over = self._read > self._budget
        if over:
            raise ReadBudgetExceeded(f"read {self._read} bytes of a {self.size}-byte layer")

    def open(self) -> BudgetedReader:
        """Open the data for random-access reading (a binary file object)."""
        return BudgetedReader(open(self.path, "rb", buffering=0), self._charge)

    def stream(self, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Yield the data from start to end in chunks.

        A pass that reaches the end computes the checksums on the way. Raises
        :class:`~importhooks.errors.DataChanged` if the file's size changes.
        """
        hashers = None
        if self._checksums is None:
            hashers = (hashlib.md5(usedforsecurity=False), hashlib.new(self._hash_algo))
        seen = 0
        with self.open() as handle:
            while chunk := handle.read(chunk_size):
                seen += len(chunk)
                if seen > self.size:
                    raise DataChanged(f"grew past {self.size} bytes while being read")
                if hashers is not None:
                    hashers[0].update(chunk)
                    hashers[1].update(chunk)
                if self._on_progress is not None:
                    self._on_progress(seen, self.size)
                yield chunk
        if seen != self.size:
            raise DataChanged(f"shrank to {seen} of {self.size} bytes while being read")
        if hashers is not None and self._checksums is None:
            self._checksums = Checksums(hashers[0].hexdigest(), self._hash_algo, hashers[1].hexdigest(), seen)

    def checksums(self) -> Checksums:
        """The checksums, from an earlier complete pass or from a pass made now."""
        if self._checksums is None:
            for _chunk in self.stream():
                pass
        assert self._checksums is not None
        return self._checksums

    def __repr__(self) -> str:
        return f"<ImageData kind={self.kind!r} size={self.size}>"


class BudgetedReader(io.RawIOBase):
    """A read-only raw file whose reads are charged to a budget."""

    def __init__(self, raw: io.FileIO, charge: Callable[[int], None]) -> None:
        super().__init__()
        self._raw = raw
        self._charge = charge

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def readinto(self, buffer: Any) -> int:
        count = self._raw.readinto(buffer) or 0
        self._charge(count)
        return count

    def close(self) -> None:
        self._raw.close()
        super().close()
