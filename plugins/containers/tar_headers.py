"""A strict second reading of a tar archive's headers, so importhooks never sees less than another tar reader.

Used by the ``ova`` plugin (no hooks of its own). libarchive reads the archive for
the member rules, but GNU tar and CPython's tarfile read some headers differently:
they apply PAX global headers, which libarchive ignores; ``tar -i`` and
``tarfile(ignore_zeros=True)`` carry on after the end-of-archive marker; they
disagree on which of two long names wins, on the ustar prefix field outside ustar
headers, on data after a link or directory header, on numbers written oddly.
:class:`HeaderScan` reads every header itself, in one pass over the headers alone
(member data is passed over, never interpreted; only its padding is checked), and raises
:class:`~.tar_rules.Violation` wherever two of those readers could see
different members. What remains is one list of members every reader agrees on,
which the ``ova`` plugin compares with libarchive's, member by member.

:meth:`HeaderScan.feed` takes the bytes in chunks of any size; :meth:`HeaderScan.skip`
says how many bytes it will ignore next, so :func:`scan` seeks past member data longer
than a chunk. Plain ustar regular files, nearly every member of a real archive, take a
fast path (:meth:`HeaderScan._plain_members`); everything else goes block by block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol
from zlib import adler32

from ._tar_fields import (
    AMBIGUOUS,
    BLOCK,
    CANONICAL,
    CANONICAL_DEVICE,
    DATA_TYPES,
    FAST,
    GLOBAL_FORBIDDEN,
    GLOBAL_HEADER,
    GNU_MAGIC,
    HEADER_TOO_LARGE,
    MEMBER_TYPES,
    PADDING,
    TRAILING_DATA,
    USTAR_MAGIC,
    check_checksum,
    cstring,
    number,
    parse_records,
)
from ._tar_fields import CODES as CODES
from ._tar_fields import HeaderLimits as HeaderLimits
from ._tar_fields import Member as Member
from .tar_rules import CORRUPT, SPARSE, TOO_MANY_MEMBERS, Violation, clip


class Handle(Protocol):
    """What :func:`scan` reads from: a seekable binary file object (``context.data.open()``)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...


class HeaderScan:
    """A push parser of tar headers: :meth:`feed` bytes in order, :meth:`skip` what it ignores, :meth:`finish`."""

    def __init__(self, limits: HeaderLimits) -> None:
        self.limits = limits
        self.members: list[Member] = []
        self.offset = 0  # bytes consumed before the current feed
        self._position = 0  # where the block being handled ends
        self._buffer = bytearray()
        self._want = BLOCK  # bytes to collect before _handle runs
        self._handle: Callable[[bytes], None] = self._header
        self._skip = 0
        self._ended = False  # past the end-of-archive marker: only zeros may follow
        self._trailing = 0
        self._pending: dict[str, bytes] = {}  # long names and PAX records for the next member
        self._extension_type = b""
        self._extension_size = 0
        self._data_after_extension = 0
        self._headers = 0

    @property
    def ended(self) -> bool:
        """True once the end-of-archive marker was read."""
        return self._ended

    def skip(self) -> int:
        """Bytes of member data the scan ignores next: the caller may seek past them and call :meth:`skipped`."""
        return self._skip

    def skipped(self, count: int) -> None:
        self._skip -= count
        self.offset += count

    def feed(self, data: bytes | memoryview) -> None:
        data = data if isinstance(data, bytes) else bytes(data)
        view = memoryview(data)
        position, length = 0, len(view)
        while position < length:
            if (not self._skip and not self._ended and not self._buffer and not self._pending
                    and self._handle == self._header):
                position = self._plain_members(data, view, position)
                if position >= length:
                    break
            if self._skip:
                step = self._skip if self._skip < length - position else length - position
                self._skip -= step
                position += step
                continue
            if self._ended:
                self.offset += position
                self._tail(view[position:])
                return
            want = self._want
            if not self._buffer and length - position >= want:  # a whole header in this chunk: no copying
                collected = view[position: position + want].tobytes()
            else:
                step = min(want - len(self._buffer), length - position)
                self._buffer += view[position: position + step]
                if len(self._buffer) < want:
                    self.offset += length
                    return
                collected = bytes(self._buffer)
                self._buffer.clear()
                position -= want - step
            position += want
            self._want = BLOCK
            self._position = self.offset + position
            self._handle(collected)
        self.offset += length

    def _plain_members(self, data: bytes, view: memoryview, position: int) -> int:
        """Read the plain ustar regular files at ``position`` (the common case, in one loop); return where it stopped.

        Each header must match :data:`FAST`, have a plain name and the right checksum; its
        data and padding, when they are in ``data``, are passed over here, the padding checked.
        Anything else is left to :meth:`_header`, one block at a time.
        """
        members, match, length = self.members, FAST.match, len(data)
        most = self.limits.max_members
        while position + BLOCK <= length and match(data, position + 100) is not None:
            nul, end, half = data.find(0, position, position + 100), position + 100, position + 256
            if nul <= position or data[nul - 1] == 0x2F or data.count(0, nul, end) != end - nul:
                break  # no name, a directory's name, or bytes after the name's NUL: _header says which
            unsigned = ((adler32(view[position:half]) & 0xFFFF) + (adler32(view[half: position + BLOCK]) & 0xFFFF)
                        - 2 - sum(data[position + 148: position + 156]) + 256)  # the sums, as in byte_sum
            if int(data[position + 148: position + 154], 8) != unsigned:
                break
            self._headers += 1
            if len(members) >= most or self._headers > 3 * most + 3:
                raise Violation(TOO_MANY_MEMBERS, f"more than {most} members")
            size = int(data[position + 124: position + 135], 8)
            members.append(Member(data[position:nul], b"0", size, b"", False))
            position += BLOCK
            padded = position + ((size + BLOCK - 1) & -BLOCK)
            if padded > length:
                self._position = self.offset + position
                self._expect_data(size)
                break
            if data.count(0, position + size, padded) != padded - position - size:
                self._position = self.offset + padded
                raise Violation(PADDING, f"bytes other than zeros in the padding before byte {self._position}")
            position = padded
        return position

    def finish(self) -> None:
        """At the end of the data: nothing may be cut short, and no extended header left without its member."""
        if self._ended:
            return
        if self._buffer or self._skip or self._handle != self._header:
            raise Violation(CORRUPT, f"the archive ends inside a member, at byte {self.offset}")
        if self._pending:
            raise Violation(AMBIGUOUS, "an extended header is the last thing in the archive")

    def _tail(self, view: memoryview) -> None:
        self._trailing += len(view)
        if view.tobytes().strip(b"\0"):
            raise Violation(TRAILING_DATA, f"data after the end-of-archive marker at byte {self.offset}")
        self.offset += len(view)
        if self._trailing > self.limits.max_trailing_bytes:
            raise Violation(TRAILING_DATA, f"over {self.limits.max_trailing_bytes} bytes after the end-of-archive "
                                           "marker")

    # -- one header block --------------------------------------------------------------------

    def _header(self, block: bytes) -> None:
        start = self._position - BLOCK
        if not block[0] and block.count(0) == BLOCK:
            if self._pending:
                raise Violation(AMBIGUOUS, f"an extended header without a member, at byte {start}")
            self._ended = True
            self._trailing = BLOCK
            return
        self._headers += 1
        if self._headers > 3 * self.limits.max_members + 3:  # a member has at most 3 extension headers
            raise Violation(TOO_MANY_MEMBERS, f"more than {self._headers} headers")
        check_checksum(block)
        kind = block[156:157]
        magic = block[257:265]
        if CANONICAL.match(block, 100) is not None:  # mode to mtime as tarfile and GNU tar write them
            size = int(block[124:135], 8)
        else:
            size = number(block[124:136], "size")
            for what, low, high in (("mode", 100, 108), ("uid", 108, 116), ("gid", 116, 124), ("mtime", 136, 148)):
                number(block[low:high], what)
        if magic != USTAR_MAGIC and block[345] and kind not in (b"L", b"K", b"S"):
            raise Violation(AMBIGUOUS, f"header at byte {start}: a ustar prefix in a header that is not ustar")
        if CANONICAL_DEVICE.match(block, 329) is None:  # tarfile stops listing at a device field it cannot read
            number(block[329:337], "devmajor")
            number(block[337:345], "devminor")
        if size < 0:
            raise Violation(AMBIGUOUS, f"header at byte {start}: negative size {size}")
        if kind in (b"L", b"K", b"x", b"g"):
            self._extension(kind, size, start)
        elif kind and kind[0] in MEMBER_TYPES:
            self._member(block, kind, size, magic)
        else:
            raise Violation(AMBIGUOUS, f"header at byte {start}: type flag {clip(kind)}")

    def _extension(self, kind: bytes, size: int, start: int) -> None:
        if size > self.limits.max_header_bytes:
            raise Violation(HEADER_TOO_LARGE, f"{kind.decode()} header of {size} bytes at byte {start}, "
                                              f"limit {self.limits.max_header_bytes}")
        self._extension_type = kind
        if size == 0:
            self._extension_data(b"")
            return
        self._want = -(-size // BLOCK) * BLOCK
        self._extension_size = size
        self._handle = self._extension_block

    def _extension_block(self, data: bytes) -> None:
        self._handle = self._header
        if data.count(0, self._extension_size) != len(data) - self._extension_size:
            raise Violation(PADDING, f"bytes other than zeros after an extended header, before byte {self._position}")
        self._extension_data(data[: self._extension_size])

    def _extension_data(self, data: bytes) -> None:
        kind, pending = self._extension_type, self._pending
        if kind == b"g":
            if pending:
                raise Violation(AMBIGUOUS, "a PAX global header between an extended header and its member")
            records = parse_records(data, "PAX global header")
            for key in records:
                if key in GLOBAL_FORBIDDEN or key.startswith("GNU.sparse."):
                    raise Violation(GLOBAL_HEADER, f"PAX global header sets {clip(key)}")
            return
        if kind == b"x":
            if "x" in pending:
                raise Violation(AMBIGUOUS, "two PAX extended headers for one member")
            records = parse_records(data, "PAX extended header")
            pending["x"] = b""
            for key in ("path", "linkpath", "size", "GNU.sparse.name"):
                if key in records:
                    self._set(key, records[key])
            if any(key.startswith("GNU.sparse.") for key in records):
                pending["sparse"] = b""
            return
        what = "name" if kind == b"L" else "link"
        self._set("path" if kind == b"L" else "linkpath", cstring(data, f"GNU long {what}"))

    def _set(self, key: str, value: bytes) -> None:
        slot = "path" if key == "GNU.sparse.name" else key
        if slot in self._pending:
            raise Violation(AMBIGUOUS, f"two sources of one member's {slot}: {clip(value[:120])}")
        if not value or b"\0" in value:
            raise Violation(AMBIGUOUS, f"{key} {clip(value[:120])} is empty or holds a NUL")
        self._pending[slot] = value

    def _member(self, block: bytes, kind: bytes, size: int, magic: bytes) -> None:
        pending, self._pending = self._pending, {}
        name = cstring(block[:100], "a name field") if "path" not in pending else pending["path"]
        if "path" not in pending and magic == USTAR_MAGIC and block[345]:
            name = cstring(block[345:500], "a prefix field") + b"/" + name
        link = pending.get("linkpath") or cstring(block[157:257], "a link name field")
        if "size" in pending:
            declared = pending["size"]
            if not declared.isdigit() or kind == b"S":
                raise Violation(AMBIGUOUS, f"PAX size {clip(declared)} of {clip(name)}")
            if int(declared) != size and int(declared) < 8**11:
                raise Violation(AMBIGUOUS, f"{clip(name)}: PAX size {int(declared)}, header size {size}")
            size = int(declared)
        if kind[0] not in DATA_TYPES and size:
            raise Violation(AMBIGUOUS, f"{clip(name)}: type {clip(kind)} with {size} bytes of data")
        if kind in (b"0", b"\0", b"7") and name.endswith(b"/"):
            raise Violation(AMBIGUOUS, f"{clip(name)}: a regular file whose name ends in '/'")
        sparse = kind == b"S" or "sparse" in pending
        if sparse and not self.limits.allow_sparse:
            raise Violation(SPARSE, f"{clip(name)}: sparse")
        if kind == b"S" and magic != GNU_MAGIC:
            raise Violation(AMBIGUOUS, f"{clip(name)}: an old GNU sparse header without the GNU magic")
        self.members.append(Member(name, kind, size, link, sparse))
        if len(self.members) > self.limits.max_members:
            raise Violation(TOO_MANY_MEMBERS, f"more than {self.limits.max_members} members")
        if kind == b"S" and block[482]:
            self._data_after_extension = size
            self._handle = self._sparse_extension
        else:
            self._expect_data(size)

    def _sparse_extension(self, block: bytes) -> None:
        if not block[504]:
            self._handle = self._header
            self._expect_data(self._data_after_extension)

    def _expect_data(self, size: int) -> None:
        """Member data follows: skip ``size`` bytes, then check the padding to the next block."""
        self._skip = size
        if size % BLOCK:
            self._want, self._handle = BLOCK - size % BLOCK, self._padding

    def _padding(self, data: bytes) -> None:
        self._handle = self._header
        if data.count(0) != len(data):
            raise Violation(PADDING, f"bytes other than zeros in the padding before byte {self._position}")


def scan(handle: Handle, limits: HeaderLimits, check: Callable[[], None] = lambda: None,
         chunk_size: int = 64 << 10) -> list[Member]:
    """Read every header of the archive in ``handle`` and return its members.

    Data shorter than a chunk is read and passed over; longer data is seeked past.
    """
    parser = HeaderScan(limits)
    end = handle.seek(0, 2)
    handle.seek(0)
    while True:
        check()
        if parser.skip() > chunk_size:
            position = handle.tell()
            count = min(parser.skip(), end - position)
            handle.seek(position + count)
            parser.skipped(count)
        data = handle.read(chunk_size)
        if not data:
            break
        parser.feed(data)
    parser.finish()
    return parser.members
