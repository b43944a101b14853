"""The fields of a tar header as every reader must agree on them: the codes, numbers, checksums, PAX records.

Pure functions and constants of :mod:`.tar_headers` (the strict header reading of the
``ova`` plugin), kept apart so each module stays short. Each helper raises
:class:`~.tar_rules.Violation` where GNU tar, CPython tarfile and libarchive could
read the field differently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple
from zlib import adler32

from importhooks import FindingCode, Severity

from .tar_rules import CORRUPT, Violation, clip


def _code(name: str, summary: str, help_text: str) -> FindingCode:
    return FindingCode(f"tar.{name}", summary, help_text, Severity.ERROR)


AMBIGUOUS = _code(
    "ambiguous_header", "The archive holds a header that tar programs read in different ways.",
    "GNU tar, CPython tarfile and libarchive would list different members: two GNU long names, or a long "
    "name and a PAX 'path' (or 'linkpath', or 'GNU.sparse.name') for one member; a PAX 'size' that differs "
    "from the header's; data after a link, directory or device header; a type flag one of them does not "
    "know; a ustar prefix in a header that is not ustar; a regular file whose name ends in '/'; a numeric "
    "field that is not plain octal or base-256; a malformed or repeated PAX record; an extended header with "
    "no member after it; or libarchive's member list differs from importhooks' own reading.")
GLOBAL_HEADER = _code(
    "global_header", "The archive holds a global header that changes its files.",
    "A PAX global header ('g') sets 'path', 'linkpath', 'size', a GNU sparse record or a non-UTF-8 "
    "'hdrcharset' for the members after it. GNU tar and CPython tarfile apply it, libarchive ignores it: an "
    "extractor could take another file, under another name, than the one checked.")
TRAILING_DATA = _code(
    "trailing_data", "The archive has data after its end.",
    "Bytes other than zeros follow the end-of-archive marker (the first zero block), or more zeros than the "
    "ova plugin's max_trailing_bytes. 'tar -i' and tarfile(ignore_zeros=True) read members there, and a zip "
    "or another container appended to the archive is found by other tools.")
PADDING = _code(
    "padding_data", "The archive holds data in the gaps between its files.",
    "The padding after a member's data or an extended header, up to the next 512-byte block, holds bytes "
    "other than zeros. No tar reader reads them, but other readers can: a zip directory hidden there makes "
    "the archive a zip file too.")
HEADER_TOO_LARGE = _code(
    "header_too_large", "The archive holds an extended header that is too large.",
    "A PAX extended header or a GNU long name holds more bytes than the ova plugin's max_header_bytes.")
CODES = (AMBIGUOUS, GLOBAL_HEADER, TRAILING_DATA, PADDING, HEADER_TOO_LARGE)

BLOCK = 512
_OCTAL = re.compile(rb" *[0-7]+[ \0]*")
#: The mode, uid, gid, size and mtime fields in the form tarfile and GNU tar write them.
CANONICAL = re.compile(rb"[0-7]{7}\0[0-7]{7}\0[0-7]{7}\0[0-7]{11}\0[0-7]{11}\0")
#: The fast path, from byte 100 of a header: a ustar regular file as every writer makes it (numeric
#: fields, checksum, type '0', any link name, the ustar magic, any owner names, device numbers,
#: an empty prefix), in one match.
FAST = re.compile(rb"[0-7]{7}\0[0-7]{7}\0[0-7]{7}\0[0-7]{11}\0[0-7]{11}\0[0-7]{6}\0 0.{100}ustar\x0000.{64}"
                   rb"(?:[0-7]{7}\0|\0{8}){2}\0", re.DOTALL)
CANONICAL_DEVICE = re.compile(rb"(?:[0-7]{7}\0|\0{8}){2}")
_RECORD = re.compile(rb"([1-9][0-9]{0,8}) ")
#: Regular files, links, special files (the rules judge those), old GNU sparse files.
MEMBER_TYPES = frozenset(b"01234567\0S")
DATA_TYPES = frozenset(b"0\x007S")
USTAR_MAGIC, GNU_MAGIC = b"ustar\x0000", b"ustar  \x00"
#: Records a PAX global header may not set: they change what a member is, or its name.
GLOBAL_FORBIDDEN = ("path", "linkpath", "size")
_UTF8_CHARSET = "ISO-IR 10646 2000 UTF-8"
_REPEATABLE = frozenset({"GNU.sparse.offset", "GNU.sparse.numbytes"})  # PAX 0.0 sparse maps repeat these


class Member(NamedTuple):
    """One member as every reader sees it: name and link as bytes, type flag, bytes of data in the archive."""

    name: bytes
    type: bytes
    size: int
    link: bytes
    sparse: bool


def number(field: bytes, what: str) -> int:
    """A numeric header field: octal (digits, then only NULs or spaces), base-256, or all NULs (0).

    Base-256 starts with byte 0x80 (0xFF: negative); other first bytes with the high bit set
    are base-256 to libarchive but an error to tarfile, and fail the octal test here.
    """
    if field[0] == 0x80 or field[0] == 0xFF:
        value = int.from_bytes(field[1:], "big")
        return value - (256 ** (len(field) - 1)) if field[0] == 0xFF else value
    if not field.strip(b"\0"):
        return 0
    if _OCTAL.fullmatch(field) is None:
        raise Violation(AMBIGUOUS, f"{what} field {clip(field)} is not plain octal")
    return int(field.strip(b" \0"), 8)


def byte_sum(data: bytes) -> int:
    """The sum of the bytes of a 512-byte block, from two Adler-32 sums (exact: no half can exceed the modulus)."""
    return (adler32(data[:256]) & 0xFFFF) + (adler32(data[256:]) & 0xFFFF) - 2


def check_checksum(block: bytes) -> None:
    """The checksum field must be the unsigned or the signed sum (both are accepted by every reader)."""
    field = block[148:156]
    if _OCTAL.fullmatch(field) is None:
        raise Violation(CORRUPT, f"header checksum field {clip(field)}")
    stored = int(field.strip(b" \0"), 8)
    unsigned = byte_sum(block) - sum(field) + 8 * 32
    if stored != unsigned:
        blanked = block[:148] + b" " * 8 + block[156:]
        if stored != unsigned - 256 * sum(byte > 127 for byte in blanked):
            raise Violation(CORRUPT, f"header checksum {stored}, computed {unsigned}")


def cstring(data: bytes, what: str) -> bytes:
    """Text up to the first NUL; anything but NULs after it is read by some tools only."""
    text, _, rest = data.partition(b"\0")
    if rest.strip(b"\0"):
        raise Violation(AMBIGUOUS, f"{what} has bytes after its end: {clip(data[:120])}")
    return text


def parse_records(data: bytes, what: str) -> dict[str, bytes]:
    """The ``length key=value\\n`` records of a PAX header; any malformed or repeated record is a violation."""
    records: dict[str, bytes] = {}
    position = 0
    while position < len(data):
        match = _RECORD.match(data, position)
        end = position + int(match[1]) if match else 0
        if match is None or end > len(data) or data[end - 1:end] != b"\n":
            if not data[position:].strip(b"\0"):
                break  # NUL padding after the last record
            raise Violation(AMBIGUOUS, f"{what}: malformed record at byte {position}")
        key_bytes, equals, value = data[match.end(): end - 1].partition(b"=")
        try:
            key = key_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise Violation(AMBIGUOUS, f"{what}: record key {clip(key_bytes)} is not UTF-8") from None
        if not equals or not key:
            raise Violation(AMBIGUOUS, f"{what}: record {clip(key)} has no '='")
        if key in records and key not in _REPEATABLE:
            raise Violation(AMBIGUOUS, f"{what}: record {clip(key)} twice")
        records[key] = value
        position = end
    charset = records.get("hdrcharset")
    if charset is not None and charset.decode("utf-8", "replace") != _UTF8_CHARSET:
        raise Violation(AMBIGUOUS, f"{what}: hdrcharset {clip(charset)}")
    if data.count(b" hdrcharset=") > (charset is not None):  # tarfile searches the whole header for one
        raise Violation(AMBIGUOUS, f"{what}: 'hdrcharset=' inside another record")
    return records


@dataclass(frozen=True, slots=True)
class HeaderLimits:
    """The limits of the header reading (the ova plugin's options)."""

    max_members: int = 256
    max_header_bytes: int = 64 << 10
    max_trailing_bytes: int = 1 << 20
    allow_sparse: bool = False
