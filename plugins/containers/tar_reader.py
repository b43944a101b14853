"""Reads a tar archive with libarchive, header by header, from a budgeted file object.

Used by the ``ova`` plugin (no hooks of its own). libarchive pulls the bytes through
a read callback over ``context.data.open()``, so every byte is charged to the
layer's read budget and every read checks the stage deadline; an exception raised
there (a timeout, the budget) is kept, libarchive is told the read failed, and the
exception is raised again once libarchive gives up, never lost in a ctypes callback.
Only the ``tar`` format (ustar, pax, GNU, v7) and no decompression filter are
enabled. Anything libarchive reports as an error or a warning (a truncated archive,
a header checksum error, a malformed PAX record, data that is not tar) is an
:class:`ArchiveCorrupt`. Names come as libarchive decoded them, with PAX
``path``/``linkpath`` records and GNU long names applied; nothing is ever written
anywhere by this module.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any, Protocol

import libarchive
from libarchive import ffi
from libarchive.entry import ArchiveEntry

from .tar_rules import Kind, clip

#: Bytes handed to libarchive per read callback, and read per data chunk.
BLOCK_SIZE = 1 << 20
_TYPE_MASK = 0o170000
_FATAL: int = ffi.ARCHIVE_FATAL
_REGULAR, _DIRECTORY, _SYMLINK = 0o100000, 0o040000, 0o120000
_KINDS = frozenset({_REGULAR, _DIRECTORY, _SYMLINK})

_sparse_count = ffi.libarchive.archive_entry_sparse_count
_sparse_count.argtypes = [ctypes.c_void_p]
_sparse_count.restype = ctypes.c_int


class Source(Protocol):
    """What the reader reads from: a binary file object (``context.data.open()``)."""

    def readinto(self, buffer: Any) -> int: ...

    def seek(self, offset: int, whence: int = 0) -> int: ...


class ArchiveCorrupt(Exception):
    """libarchive could not read the archive; ``detail`` has its message (clipped)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


#: One member's header as libarchive decoded it, all untrusted: ``(name, kind, size, mode,
#: link, sparse)``. ``name`` and ``link`` are ``str``, or ``bytes``/``None`` when
#: libarchive could not decode them; ``size`` is what the header declares for a file or
#: hard link (0 for the rest); ``sparse`` is true for a GNU sparse member, whose ``size``
#: is the size it declares, not the bytes it holds. A plain tuple: one is made per member.
Header = tuple[object, Kind, int, int, object, bool]


def _text(raw: bytes | None) -> object:
    """A name libarchive could only give as bytes: ``str`` if it is UTF-8, else the bytes."""
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


class TarReader:
    """A tar archive opened for one sequential pass; use as a context manager.

    Iterate :meth:`headers`; while a header is current, :meth:`read` or
    :meth:`read_to` may take its data once (otherwise libarchive skips it).
    """

    def __init__(self, handle: Source, block_size: int = BLOCK_SIZE) -> None:
        self._handle = handle
        self._buffer = ctypes.create_string_buffer(block_size)
        self._address = ctypes.cast(self._buffer, ctypes.c_void_p)
        self._chunk = ctypes.create_string_buffer(block_size)
        self._error: BaseException | None = None
        self._stack = ExitStack()
        self._pointer: Any = None

    # -- libarchive callbacks: never raise through ctypes --------------------------------

    def _read_callback(self, _archive: Any, _client: Any, pointer: Any) -> int:
        try:
            count = self._handle.readinto(self._buffer)
        except BaseException as exc:  # noqa: BLE001 - kept, raised again when libarchive returns
            self._error = exc
            return _FATAL
        ctypes.cast(pointer, ctypes.POINTER(ctypes.c_void_p))[0] = self._address
        return int(count or 0)

    def _seek_callback(self, _archive: Any, _client: Any, offset: int, whence: int) -> int:
        try:
            return int(self._handle.seek(offset, whence))
        except BaseException as exc:  # noqa: BLE001 - kept, raised again when libarchive returns
            self._error = exc
            return _FATAL

    def _failure(self, exc: libarchive.ArchiveError) -> BaseException:
        """What to raise for a libarchive error: the read callback's own exception, or :class:`ArchiveCorrupt`."""
        if self._error is not None:
            return self._error
        return ArchiveCorrupt(clip(exc.msg or f"libarchive error {exc.retcode}"))

    def _warning(self) -> ArchiveCorrupt:
        message = ffi.error_string(self._pointer)
        return ArchiveCorrupt(f"libarchive warning: {clip(message)}")

    # -- the archive ---------------------------------------------------------------------

    def __enter__(self) -> TarReader:
        try:
            archive = self._stack.enter_context(libarchive.custom_reader(
                self._read_callback, format_name="tar", filter_name="none", seek_func=self._seek_callback))
        except libarchive.ArchiveError as exc:
            raise self._failure(exc) from None
        self._pointer = archive._pointer
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def headers(self) -> Iterator[Header]:
        """Yield each member's header, in archive order.

        The loop calls libarchive directly (no per-entry object, no property
        lookups): it is most of the cost of scanning an archive of many members.
        """
        entry = ArchiveEntry(self._pointer)
        entry_p, archive_p = entry._entry_p, self._pointer
        read_next, eof = ffi.read_next_header2, ffi.ARCHIVE_EOF
        pathname_w, pathname = ffi.entry_pathname_w, ffi.entry_pathname
        mode_of, size_of = ffi.entry_mode, ffi.entry_size
        hardlink, hardlink_w, symlink, symlink_w = (ffi.entry_hardlink, ffi.entry_hardlink_w, ffi.entry_symlink,
                                                    ffi.entry_symlink_w)
        file, directory, link_kind, hard, special = Kind.FILE, Kind.DIR, Kind.SYMLINK, Kind.HARDLINK, Kind.SPECIAL
        while True:
            try:
                status = read_next(archive_p, entry_p)
            except libarchive.ArchiveError as exc:
                raise self._failure(exc) from None
            if status == eof:
                if self._error is not None:  # libarchive carried on after a failed read: never trust that
                    raise self._error
                return
            if status:
                raise self._warning()
            name = pathname_w(entry_p) or _text(pathname(entry_p))
            mode = mode_of(entry_p)
            filetype = mode & _TYPE_MASK
            link = hardlink(entry_p)
            if link is None and filetype not in _KINDS:
                link = hardlink_w(entry_p)
            if link is not None:
                yield name, hard, size_of(entry_p), mode, _text(link) if isinstance(link, bytes) else link, False
            elif filetype == _REGULAR:
                yield name, file, size_of(entry_p), mode, None, _sparse_count(entry_p) > 0
            elif filetype == _DIRECTORY:
                yield name, directory, 0, mode, None, False
            elif filetype == _SYMLINK:
                yield name, link_kind, 0, mode, symlink_w(entry_p) or _text(symlink(entry_p)), False
            else:
                yield name, special, size_of(entry_p), mode, None, False

    def read_to(self, sink: Callable[[memoryview], object], check: Callable[[], None] = lambda: None) -> int:
        """Pass the current member's data to ``sink`` chunk by chunk; return its length."""
        chunk, view, total = self._chunk, memoryview(self._chunk), 0
        read_data = ffi.read_data
        while True:
            check()
            try:
                count = read_data(self._pointer, chunk, len(chunk))
            except libarchive.ArchiveError as exc:
                raise self._failure(exc) from None
            if count == 0:
                if self._error is not None:
                    raise self._error
                return total
            if count < 0:
                raise self._warning()
            sink(view[:count])
            total += count

    def read(self, limit: int) -> bytes:
        """The current member's data, which its header said is at most ``limit`` bytes."""
        parts: list[bytes] = []
        total = 0

        def keep(data: memoryview) -> None:
            nonlocal total
            total += len(data)
            if total > limit:
                raise ArchiveCorrupt(f"member data longer than its header's {limit} bytes")
            parts.append(bytes(data))

        self.read_to(keep)
        return b"".join(parts)
