"""Builders of benign and hostile zip archives for the ``zip`` plugin's tests.

Benign archives come from :mod:`zipfile` and the Info-ZIP ``zip`` command; hostile
ones (Fifield's overlapping entries, lying central directories) are hand-built or
patched bytes, as an attacker would make them.
"""

from __future__ import annotations

import io
import random
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path

LOCAL = struct.Struct("<4s5H3L2H")  # signature, version, flags, method, time, date, crc, sizes, name/extra lengths
CENTRAL = struct.Struct("<4s6H3L5H2L")
END = struct.Struct("<4s4H2LH")
#: Offsets of fields in a local header and a central directory entry.
LOCAL_FIELDS = {"method": (8, "<H"), "crc": (14, "<L"), "usize": (22, "<L")}
CENTRAL_FIELDS = {"flags": (8, "<H"), "method": (10, "<H"), "crc": (16, "<L"), "usize": (24, "<L")}
DOS_DATE = 0x21  # 1980-01-01


def disk_bytes(size: int = 1 << 20, seed: int = 0) -> bytes:
    """A raw disk: random 4 KiB blocks among zero blocks, ending in zeros (so sparse output is exercised)."""
    rng = random.Random(seed)
    blocks = [rng.randbytes(4096) if i % 5 == 1 else bytes(4096) for i in range(size // 4096)]
    blocks[-1] = bytes(4096)
    return b"".join(blocks)


def zip_bytes(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED, *, force_zip64: bool = False) -> bytes:
    """A zip made by :mod:`zipfile` (a name ending in '/' is a directory)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            with archive.open(info, "w", force_zip64=force_zip64) as member:
                member.write(data)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def zip_command(path: Path, *files: Path, store: bool = False, password: str | None = None) -> Path:
    """Archive ``files`` (without their directories) with Info-ZIP's ``zip``."""
    args = ["zip", "-q", "-j", *(["-0"] if store else []), *(["-P", password] if password else []), str(path)]
    subprocess.run([*args, *map(str, files)], check=True, capture_output=True)
    return path


def zip_streamed(path: Path, data: bytes) -> Path:
    """``zip`` reading stdin and writing to a pipe: a member named '-' with a data descriptor."""
    zipped = subprocess.run(["sh", "-c", "zip -q | cat"], input=data, check=True, capture_output=True).stdout
    return write(path, zipped)


def _directory(data: bytes) -> tuple[int, int, int]:
    """(central directory offset, its size, entry count) from the end record of a small zip."""
    end = data.rfind(b"PK\x05\x06")
    _sig, _disk, _cd_disk, _here, count, size, offset, _comment = END.unpack_from(data, end)
    return offset, size, count


def patch_entry(data: bytes, **fields: int) -> bytes:
    """Change fields (``method``, ``crc``, ``usize``, ``flags``) of the first entry, in both its headers."""
    patched = bytearray(data)
    cd_offset, _size, _count = _directory(data)
    local_offset = struct.unpack_from("<L", data, cd_offset + 42)[0]
    for name, value in fields.items():
        position, fmt = CENTRAL_FIELDS[name]
        struct.pack_into(fmt, patched, cd_offset + position, value)
        if name in LOCAL_FIELDS:
            position, fmt = LOCAL_FIELDS[name]
            struct.pack_into(fmt, patched, local_offset + position, value)
    return bytes(patched)


def shared_header_zip(data: bytes, copies: int) -> bytes:
    """One member, and ``copies`` more directory entries pointing at its local header (renamed)."""
    cd_offset, cd_size, count = _directory(data)
    assert count == 1
    entry = data[cd_offset:cd_offset + cd_size]
    name_length = struct.unpack_from("<H", entry, 28)[0]
    extra = [entry[:46] + f"copy{i:0{name_length - 4}d}".encode() + entry[46 + name_length:] for i in range(copies)]
    directory = entry + b"".join(extra)
    end = END.pack(b"PK\x05\x06", 0, 0, count + copies, count + copies, len(directory), cd_offset, 0)
    return data[:cd_offset] + directory + end


def _local(name: bytes, crc: int, csize: int, usize: int) -> bytes:
    return LOCAL.pack(b"PK\x03\x04", 20, 0, zipfile.ZIP_DEFLATED, 0, DOS_DATE, crc, csize, usize, len(name), 0) + name


def fifield_zip(files: int, kernel: bytes) -> bytes:
    """David Fifield's overlapping zip bomb, full-overlap quoted construction, at a small scale.

    Every file's deflate data is a stored (non-compressed) block quoting the next
    file's local header, followed by the next file's data; the last file's data is
    the kernel. One kernel, compressed once, is the tail of every file.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    packed = compressor.compress(kernel) + compressor.flush()
    names = [f"{i:08d}".encode() for i in range(files)]
    headers: list[bytes] = [b""] * files
    csize, usize, crc = len(packed), len(kernel), zlib.crc32(kernel)
    output = kernel
    headers[-1] = _local(names[-1], crc, csize, usize)
    for i in range(files - 2, -1, -1):
        quoted = headers[i + 1]
        output = quoted + output
        csize += 5 + len(quoted)
        headers[i] = _local(names[i], zlib.crc32(output), csize, len(output))
    body = bytearray()
    offsets = []
    for i, header in enumerate(headers):
        offsets.append(len(body))
        body += header
        if i < files - 1:  # a non-final stored block's header; its content is the next local header
            body += struct.pack("<BHH", 0, len(headers[i + 1]), 0xFFFF ^ len(headers[i + 1]))
    body += packed
    directory = bytearray()
    for name, header, offset in zip(names, headers, offsets, strict=True):
        _sig, _ver, _flags, _method, _time, _date, crc, csize, usize, _n, _e = LOCAL.unpack_from(header)
        directory += CENTRAL.pack(b"PK\x01\x02", 20, 20, 0, zipfile.ZIP_DEFLATED, 0, DOS_DATE, crc, csize, usize,
                                  len(name), 0, 0, 0, 0, 0, offset) + name
    end = END.pack(b"PK\x05\x06", 0, 0, files, files, len(directory), len(body), 0)
    return bytes(body + directory + end)


def single_entry_zip(name: bytes, packed: bytes, crc: int, usize: int) -> bytes:
    """A hand-built zip of one deflate entry whose data is ``packed``, declaring ``crc`` and ``usize``."""
    header = _local(name, crc, len(packed), usize)
    directory = CENTRAL.pack(b"PK\x01\x02", 20, 20, 0, zipfile.ZIP_DEFLATED, 0, DOS_DATE, crc, len(packed), usize,
                             len(name), 0, 0, 0, 0, 0, 0) + name
    body = header + packed
    return body + directory + END.pack(b"PK\x05\x06", 0, 0, 1, 1, len(directory), len(body), 0)


def patch_local(data: bytes, offset: int, value: bytes) -> bytes:
    """``data`` with ``value`` written at ``offset`` of the first local header (only there)."""
    return data[:offset] + value + data[offset + len(value):]


def zip64_local_sizes(data: bytes) -> tuple[int, int]:
    """Where the first local header's zip64 extra field keeps its (uncompressed, compressed) sizes."""
    _sig, _v, _f, _m, _t, _d, _crc, csize, usize, name_length, _e = LOCAL.unpack_from(data, 0)
    assert (csize, usize) == (0xFFFFFFFF, 0xFFFFFFFF)
    at = LOCAL.size + name_length
    assert struct.unpack_from("<H", data, at)[0] == 1  # the zip64 extra field comes first
    return at + 4, at + 12


def with_gap_before_directory(data: bytes, gap: bytes) -> bytes:
    """``gap`` inserted before the central directory, the end record moved to match."""
    cd_offset, cd_size, count = _directory(data)
    end = END.pack(b"PK\x05\x06", 0, 0, count, count, cd_size, cd_offset + len(gap), 0)
    return data[:cd_offset] + gap + data[cd_offset:cd_offset + cd_size] + end


def descriptor_at(data: bytes) -> tuple[int, int]:
    """Where the signed data descriptor of a one-entry streamed zip starts, and its size fields' width."""
    cd_offset, _size, _count = _directory(data)
    for width in (8, 4):
        if data[cd_offset - 8 - 2 * width:cd_offset - 4 - 2 * width] == b"PK\x07\x08":
            return cd_offset - 8 - 2 * width, width
    raise AssertionError("no data descriptor")
