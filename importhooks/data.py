"""The data of an import, read within budgets.

:class:`ImageData` is one layer of data (the staged file, or what ``sanitize`` made
of it). Plugins read it only through :meth:`ImageData.open` (random access) and
:meth:`ImageData.stream` (sequential); both count every byte against the layer's
read budget and call the run's ``check`` so a timeout or a halt stops a plugin at
its next read. The first complete sequential pass also computes the checksums, so
``finalize`` does not read the data again.

A layer remembers the file it was made from (device, inode, size, modification
time). Every open checks the opened file against it and :meth:`ImageData.verify`
checks the path again at the end of a run: a file that grew, shrank or was
rewritten raises :class:`~importhooks.errors.DataChanged`, another file renamed
over the path (or the path removed) :class:`~importhooks.errors.DataReplaced`, and
an operating-system error while reading (``EIO``)
:class:`~importhooks.errors.DataReadError`; the pipeline turns each into its
finding and a reject.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataChanged, DataReadError, DataReplaced, ReadBudgetExceeded

CHUNK_SIZE = 1 << 20
_SLACK = 1 << 20  # budget for headers re-read at the edges of small files
_THREAD_MIN = 8 << 20  # below this, hashing md5 in a helper thread costs more than it saves


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
        hash_on_stream: bool = True,
    ) -> None:
        self.path = path
        self.kind = kind
        self.parent = parent
        found = os.stat(path)
        self.size = found.st_size
        self._file = (found.st_dev, found.st_ino)
        self._mtime = found.st_mtime_ns
        #: Facts recorded about this layer by ``inspect`` plugins.
        self.facts: dict[str, Any] = {}
        self._check = check
        self._hash_algo = hash_algo
        self._on_progress = on_progress
        self._budget = max_read_passes * self.size + _SLACK
        self._read = 0
        self._lock = threading.Lock()
        self._checksums: Checksums | None = None
        #: Whether a complete :meth:`stream` computes the checksums on the way (off when nothing will ask for
        #: them, e.g. the ``checksums`` plugin is disabled because the store computes its own, as Glance does).
        self._hash_on_stream = hash_on_stream

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
        """Open the data for random-access reading (a binary file object).

        Raises :class:`DataReplaced` or :class:`DataChanged` if the path no longer opens
        the file this layer was made from, unchanged; its reads raise
        :class:`DataReadError` for an operating-system error.
        """
        try:
            raw = open(self.path, "rb", buffering=0)
        except FileNotFoundError:
            raise DataReplaced("the file was removed") from None
        try:
            self._compare(os.fstat(raw.fileno()))
        except BaseException:
            raw.close()
            raise
        return BudgetedReader(raw, self._charge)

    def verify(self) -> None:
        """Check that the path still names this layer's file, unchanged (at the end of a run)."""
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            raise DataReplaced("the file was removed") from None
        except OSError as exc:
            raise DataReadError(f"stat: {describe_os_error(exc)}") from None
        self._compare(found)

    def _compare(self, found: os.stat_result) -> None:
        if (found.st_dev, found.st_ino) != self._file:
            raise DataReplaced(f"another file (inode {found.st_ino}, was {self._file[1]}) took its name")
        if found.st_size != self.size:
            how = "grew" if found.st_size > self.size else "shrank"
            raise DataChanged(f"{how} from {self.size} to {found.st_size} bytes")
        if found.st_mtime_ns != self._mtime:
            raise DataChanged("rewritten in place: its modification time changed")

    def read_at(self, offset: int, size: int) -> bytes:
        """Read up to ``size`` bytes at ``offset`` (fewer at the end of the data)."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        with self.open() as handle:
            handle.seek(offset)
            return handle.read(size)

    def stream(self, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Yield the data from start to end in chunks.

        A pass that reaches the end computes the checksums on the way (md5 in a
        helper thread, the multihash in this one, so two cores share the work),
        unless the layer was made with ``hash_on_stream=False``.
        Raises :class:`~importhooks.errors.DataChanged` if the file's size changes.
        """
        return self._stream(chunk_size, hashing=self._hash_on_stream)

    def _stream(self, chunk_size: int, *, hashing: bool) -> Iterator[bytes]:
        hashers = None
        if hashing and self._checksums is None:
            hashers = _Hashers(self._hash_algo, threaded=self.size > _THREAD_MIN)
        seen = 0
        try:
            with self.open() as handle:
                while chunk := handle.read(chunk_size):
                    seen += len(chunk)
                    if seen > self.size:
                        raise DataChanged(f"grew past {self.size} bytes while being read")
                    if hashers is not None:
                        hashers.update(chunk)
                    if self._on_progress is not None:
                        self._on_progress(seen, self.size)
                    yield chunk
            if seen != self.size:
                raise DataChanged(f"shrank to {seen} of {self.size} bytes while being read")
            if hashers is not None and self._checksums is None:
                md5, multihash = hashers.digests()
                self._checksums = Checksums(md5, self._hash_algo, multihash, seen)
        finally:
            if hashers is not None:
                hashers.close()

    def checksums(self) -> Checksums:
        """The checksums, from an earlier complete pass or from a pass made now."""
        if self._checksums is None:
            for _chunk in self._stream(CHUNK_SIZE, hashing=True):
                pass
        assert self._checksums is not None
        return self._checksums

    def __repr__(self) -> str:
        return f"<ImageData kind={self.kind!r} size={self.size}>"


class _Hashers:
    """md5 and the multihash of one pass; md5 in a helper thread when the data is large.

    hashlib releases the GIL on large buffers, so the two digests run on two cores
    and a pass costs about one multihash, not the sum of both.
    """

    def __init__(self, algo: str, *, threaded: bool) -> None:
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._multihash = hashlib.new(algo)
        self._queue: queue.Queue[bytes | None] | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._queue = queue.Queue(maxsize=4)  # bounds memory to a few chunks
            self._thread = threading.Thread(target=self._drain, name="importhooks-md5", daemon=True)
            self._thread.start()

    def _drain(self) -> None:
        assert self._queue is not None
        while (chunk := self._queue.get()) is not None:
            self._md5.update(chunk)

    def update(self, chunk: bytes) -> None:
        if self._queue is not None:
            self._queue.put(chunk)
        else:
            self._md5.update(chunk)
        self._multihash.update(chunk)

    def digests(self) -> tuple[str, str]:
        self.close()
        return self._md5.hexdigest(), self._multihash.hexdigest()

    def close(self) -> None:
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


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

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._raw.read(size) or b""  # FileIO.read: no copy through a bytearray
        except OSError as exc:
            raise DataReadError(f"read at {self._where()}: {describe_os_error(exc)}") from None
        self._charge(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        try:
            count = self._raw.readinto(buffer) or 0
        except OSError as exc:
            raise DataReadError(f"read at {self._where()}: {describe_os_error(exc)}") from None
        self._charge(count)
        return count

    def _where(self) -> str:
        try:
            return f"byte {self._raw.tell()}"
        except OSError:
            return "an unknown offset"

    def close(self) -> None:
        self._raw.close()
        super().close()


def describe_os_error(exc: OSError) -> str:
    """``EIO (Input/output error)``: the error's symbolic name and text, never a file name."""
    if exc.errno is None:
        return type(exc).__name__
    return f"{errno.errorcode.get(exc.errno, f'errno {exc.errno}')} ({exc.strerror or 'no message'})"


#: glibc's mallopt() parameter for the mmap threshold, and the value pinned: glibc's own initial one.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 << 10


@functools.cache
def _libc() -> Any:
    """The C library (a ``ctypes.CDLL``) if it has ``mallopt`` and ``malloc_trim`` (glibc); else ``None``."""
    import ctypes  # only here: most imports of importhooks never build a Pipeline

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (AttributeError, OSError):
        return None
    return libc


@functools.cache
def pin_mmap_threshold() -> bool:
    """Keep glibc's mmap threshold at 128 KiB for the process (once; not if the environment sets it).

    A run reads, hashes and unpacks its data in pieces of about 1 MiB, in its worker
    and helper threads. glibc serves such a piece with ``mmap`` and gives it back on
    ``free``; but the first time it frees one it raises its threshold above that size
    (up to 32 MiB), and from then on serves every piece from the threads' malloc
    arenas, between longer-lived small objects: freed pieces leave holes the arenas
    keep. A long-lived process's RSS climbed run after run while Python held nothing
    more (issue 17: 50 to 160 MiB over 3,000 runs; here 70 to 88 MiB over runs 1,000
    to 3,000). Pinning the threshold (``mallopt(M_MMAP_THRESHOLD)``, which also turns
    off glibc's raising of it) keeps large pieces out of the arenas. An operator's
    ``MALLOC_MMAP_THRESHOLD_`` wins. Returns whether the threshold was pinned.
    """
    libc = _libc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``); at the end of every run.

    It takes well under a millisecond, and returns what a run's unpacking and reading
    left free in the arenas before the next run fragments it further.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
