"""The local headers of a zip archive against its central directory (``zip``).

Python's zipfile, Info-ZIP's unzip and libarchive's seeking reader start from the
central directory; streaming readers (libarchive reading a pipe, Java's
ZipInputStream, ``bsdtar -xf -``) walk the local headers from the first byte. For
both to see the same files, the entries, in file order, must tile the archive: the
first local header at offset 0, each entry's header, name, extra field, data and
data descriptor ending exactly where the next local header (or, for the last, the
central directory) starts; and each local header must agree with its directory entry
on the name, the method, the encryption and descriptor flags, the CRC and the sizes
(zip64 sizes included). Every read here is bounded (30 bytes, the name, the extra
field up to 64 KiB, a descriptor of at most 24 bytes).
"""

from __future__ import annotations

import struct
import zipfile
from typing import Protocol

LOCAL_HEADER = struct.Struct("<4s5H3L2H")
FLAG_UTF8 = 0x800
FLAG_DESCRIPTOR = 0x08
#: Flags a streaming reader acts on: traditional and strong encryption, the data descriptor.
FLAGS_COMPARED = 0x01 | 0x40 | FLAG_DESCRIPTOR
ZIP64_EXTRA = 0x0001
DESCRIPTOR_SIGNATURE = b"PK\x07\x08"
FULL32 = 0xFFFFFFFF
DETAIL_LIMIT = 200


class Reader(Protocol):
    def seek(self, offset: int, whence: int = 0) -> int: ...

    def read(self, size: int = -1) -> bytes: ...


class LocalProblem(Exception):
    """A local header that does not match the directory: ``kind`` is corrupt, overlap, mismatch or hidden."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


def _zip64_sizes(extra: bytes, usize: int, csize: int) -> tuple[int, int]:
    """The sizes a local header means: its 32-bit fields, or, where they are 0xFFFFFFFF, its zip64 extra field."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, pos)
        if tag == ZIP64_EXTRA:
            body, at = extra[pos + 4:pos + 4 + length], 0
            if usize == FULL32 and len(body) >= at + 8:
                usize, at = int.from_bytes(body[at:at + 8], "little"), at + 8
            if csize == FULL32 and len(body) >= at + 8:
                csize = int.from_bytes(body[at:at + 8], "little")
            break
        pos += 4 + length
    return usize, csize


def _descriptor_end(raw: Reader, info: zipfile.ZipInfo, at: int, bound: int) -> int:
    """Where the data descriptor at ``at`` ends, checked against the directory: 12 to 24 bytes, the one that tiles."""
    raw.seek(at)
    blob = raw.read(min(24, max(0, bound - at)))
    body = blob[4:] if blob.startswith(DESCRIPTOR_SIGNATURE) else blob
    skip = len(blob) - len(body)
    for width in (4, 8):
        size = skip + 4 + 2 * width
        if at + size != bound or len(body) < 4 + 2 * width:
            continue
        crc = int.from_bytes(body[:4], "little")
        csize = int.from_bytes(body[4:4 + width], "little")
        usize = int.from_bytes(body[4 + width:4 + 2 * width], "little")
        if (crc, csize, usize) != (info.CRC, info.compress_size, info.file_size):
            raise LocalProblem("mismatch", f"the data descriptor of the entry at {info.header_offset} says CRC "
                               f"{crc:#010x}, {csize} -> {usize} bytes; the directory {info.CRC:#010x}, "
                               f"{info.compress_size} -> {info.file_size}")
        return bound
    raise LocalProblem("hidden", f"after the data of the entry at {info.header_offset}, {bound - at} bytes up to "
                       f"{bound} are not a data descriptor")


def _check_local(head: tuple[int, ...], extra: bytes, info: zipfile.ZipInfo) -> None:
    """The local header's method, flags, CRC and sizes against the directory entry's."""
    _sig, _version, flags, method, _time, _date, crc, csize, usize, _n, _e = head
    where = f"the local header at {info.header_offset}"
    if method != info.compress_type or (flags ^ info.flag_bits) & FLAGS_COMPARED:
        raise LocalProblem("mismatch", f"{where} says method {method}, flags {flags:#x}; the directory "
                           f"{info.compress_type}, {info.flag_bits:#x}")
    usize, csize = _zip64_sizes(extra, usize, csize)
    if flags & FLAG_DESCRIPTOR and (crc, csize, usize) == (0, 0, 0):
        return  # the sizes come after the data
    if (crc, csize, usize) != (info.CRC, info.compress_size, info.file_size):
        raise LocalProblem("mismatch", f"{where} says CRC {crc:#010x}, {csize} -> {usize} bytes; the directory "
                           f"{info.CRC:#010x}, {info.compress_size} -> {info.file_size}")


def data_starts(raw: Reader, ordered: list[tuple[zipfile.ZipInfo, int]]) -> dict[int, int]:
    """Each entry's data offset, by header offset; raises :class:`LocalProblem` unless the entries tile the archive.

    ``ordered``: the entries in file order, each with where it must end (the next
    local header, or the central directory).
    """
    starts: dict[int, int] = {}
    if ordered and ordered[0][0].header_offset != 0:
        raise LocalProblem("hidden", f"{ordered[0][0].header_offset} bytes before the first local header")
    for this, bound in ordered:
        raw.seek(this.header_offset)
        blob = raw.read(LOCAL_HEADER.size)
        if len(blob) < LOCAL_HEADER.size or not blob.startswith(b"PK\x03\x04"):
            raise LocalProblem("corrupt", f"no local header at {this.header_offset}")
        head = LOCAL_HEADER.unpack(blob)
        name_length, extra_length = head[-2:]
        name = raw.read(name_length)
        if name != this.orig_filename.encode("utf-8" if this.flag_bits & FLAG_UTF8 else "cp437"):
            raise LocalProblem("overlap", f"the local header at {this.header_offset} names "
                               f"{name[:DETAIL_LIMIT]!r}, its directory entry {this.orig_filename[:DETAIL_LIMIT]!r}")
        extra = raw.read(extra_length)
        start = this.header_offset + LOCAL_HEADER.size + name_length + extra_length
        end = start + this.compress_size
        if end > bound:
            raise LocalProblem("overlap", f"the data of the entry at {this.header_offset} ends at {end}, past {bound}")
        _check_local(head, extra, this)
        if this.flag_bits & FLAG_DESCRIPTOR:
            _descriptor_end(raw, this, end, bound)
        elif end < bound:
            raise LocalProblem("hidden", f"{bound - end} bytes between the data of the entry at "
                               f"{this.header_offset} and {bound}")
        starts[this.header_offset] = start
    return starts


def check_tail(raw: Reader, size: int, cd_start: int) -> None:
    """The central directory must end at the (zip64) end records, and the end record's comment at the file's end.

    Found as zipfile finds it (the last end-record signature within the last 64 KiB +
    22 bytes); bytes between the directory and the end records, or after the comment,
    are outside every reader's view but a scanner's: raises :class:`LocalProblem`.
    """
    span = min(size, (1 << 16) + 22)
    raw.seek(size - span)
    tail = raw.read(span)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        raise LocalProblem("corrupt", "no end record")
    end_record = size - span + at
    after = size - (end_record + 22 + int.from_bytes(tail[at + 20:at + 22], "little"))
    if after:
        raise LocalProblem("hidden" if after > 0 else "corrupt", f"the end record's comment ends {-after} bytes "
                           "past the end of the file" if after < 0 else f"{after} bytes after the end record's comment")
    cd_size, cd_end = int.from_bytes(tail[at + 12:at + 16], "little"), end_record
    locator = tail[at - 20:at] if at >= 20 else b""
    if locator.startswith(b"PK\x06\x07"):
        cd_end = int.from_bytes(locator[8:16], "little")
        raw.seek(cd_end)
        record = raw.read(56)
        if len(record) < 56 or not record.startswith(b"PK\x06\x06"):
            raise LocalProblem("corrupt", f"no zip64 end record at {cd_end}")
        cd_size = int.from_bytes(record[40:48], "little")
        if cd_end + 12 + int.from_bytes(record[4:12], "little") != end_record - 20:
            raise LocalProblem("hidden", f"bytes between the zip64 end record at {cd_end} and its locator")
    if cd_start + cd_size != cd_end:
        raise LocalProblem("hidden", f"the central directory at {cd_start} of {cd_size} bytes does not end at "
                           f"the end records ({cd_end})")
