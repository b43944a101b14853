"""What a gzip member's header and the file's last trailer say, read with bounded reads (``compression``).

zlib parses the header itself, whatever its length; this module only measures it,
so that a header of megabytes (FEXTRA, FNAME, FCOMMENT) is flagged, and reads the
ISIZE of the last trailer, a lower bound of the output (it is the last member's size
modulo 4 GiB).
"""

from __future__ import annotations

from collections.abc import Callable

GZIP_MAGIC = b"\x1f\x8b"
FHCRC, FEXTRA, FNAME, FCOMMENT = 0x02, 0x04, 0x08, 0x10
#: Deflate's most output per input byte: a 258-byte match in 2 bits.
DEFLATE_MAX_RATIO = 1032
FIXED = 10  # magic, method, flags, mtime, extra flags, OS


def header_size(peek: Callable[[int], bytes], cap: int) -> int | None:
    """The length of the gzip header at the start of ``peek``, or None when it is over ``cap`` bytes.

    ``peek(n)`` returns up to ``n`` bytes from the member's start; it is never asked
    for more than ``cap + 1``. A header cut short by the end of the data gives its
    length so far (zlib then reports the truncation).
    """
    fixed = peek(FIXED)
    if len(fixed) < FIXED:
        return len(fixed)
    flags, pos = fixed[3], FIXED
    if flags & FEXTRA:
        extra = peek(pos + 2)[pos:]
        pos += 2 + (int.from_bytes(extra, "little") if len(extra) == 2 else 0)
    for flag in (FNAME, FCOMMENT):
        if not flags & flag:
            continue
        if pos > cap:
            return None
        head = peek(cap + 1)
        end = head.find(b"\0", pos)
        if end < 0:
            return len(head) if len(head) <= cap else None
        pos = end + 1
    if flags & FHCRC:
        pos += 2
    return pos if pos <= cap else None


def isize_lower_bound(tail: bytes, size: int) -> int | None:
    """The least output a gzip file of ``size`` bytes ending in ``tail`` (its last 4 bytes) can have, if known.

    Those bytes are the last member's ISIZE: its size modulo 2**32, so the output is
    at least that. Zero padding after the trailer shifts it right, to a smaller
    number, so the bound holds for padded files too. A value deflate could not reach
    from the whole file (over 1032:1) is no trailer but other data, left to the
    decoder (trailing data), and gives None.
    """
    value = int.from_bytes(tail[-4:], "little") if len(tail) >= 4 else 0
    return value if value <= DEFLATE_MAX_RATIO * size else None
