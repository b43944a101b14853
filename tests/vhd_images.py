"""Builders of benign and hostile VHD and VHDX images: qemu-img first, then byte patches
with the checksums fixed (VHD one's complement, VHDX CRC-32C) so an attack reaches the check
it is aimed at instead of failing at the checksum."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import uuid
from pathlib import Path

from importhooks_plugins.formats.vhdx import crc32c

from .images import qemu_img

SECTOR = 512
MIB = 1 << 20

#: VHD footer fields (Virtual Hard Disk Image Format Specification): name -> (offset, struct format).
FOOTER = {
    "cookie": (0, "8s"),
    "features": (8, ">I"),
    "version": (12, ">I"),
    "data_offset": (16, ">Q"),
    "creator_app": (28, "4s"),
    "original_size": (40, ">Q"),
    "current_size": (48, ">Q"),
    "cylinders": (56, ">H"),
    "heads": (58, ">B"),
    "sectors": (59, ">B"),
    "disk_type": (60, ">I"),
}
FOOTER_CHECKSUM = 64
#: Dynamic disk header fields.
DYNAMIC = {
    "cookie": (0, "8s"),
    "data_offset": (8, ">Q"),
    "table_offset": (16, ">Q"),
    "version": (24, ">I"),
    "max_table_entries": (28, ">I"),
    "block_size": (32, ">I"),
    "parent_name": (64, "512s"),
    "locator0": (576, ">4sIIIQ"),
}
HEADER_CHECKSUM = 36
#: VHDX GUIDs as stored (MS-VHDX).
BAT_REGION = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08").bytes_le
METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le
PAGE_83_DATA = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746").bytes_le
LOGICAL_SECTOR_SIZE = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F").bytes_le
PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C").bytes_le
VHDX_HEADERS = (64 << 10, 128 << 10)
VHDX_REGION_TABLES = (192 << 10, 256 << 10)


# -- making images -----------------------------------------------------------------------


def data_raw(path: Path, size: int = 12 * MIB) -> Path:
    """A sparse raw disk with data in a few places, so converted images have allocated blocks."""
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset in (0, 3 * MIB, size - 4096):
            handle.seek(offset)
            handle.write(bytes(range(256)) * 16)
    return path


def vhd(path: Path, subformat: str = "dynamic", size: str = "10M", *, force_size: bool = False,
        raw: Path | None = None) -> Path:
    """A VHD from ``qemu-img create`` (or ``convert`` of ``raw``)."""
    options = f"subformat={subformat},force_size={'on' if force_size else 'off'}"
    if raw is None:
        qemu_img("create", "-f", "vpc", "-o", options, str(path), size)
    else:
        qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", options, str(raw), str(path))
    return path


def vhdx(path: Path, subformat: str = "dynamic", size: str = "10M", *, raw: Path | None = None,
         block_size: str | None = None) -> Path:
    """A VHDX from ``qemu-img create`` (or ``convert`` of ``raw``)."""
    options = f"subformat={subformat}" + (f",block_size={block_size}" if block_size else "")
    if raw is None:
        qemu_img("create", "-f", "vhdx", "-o", options, str(path), size)
    else:
        qemu_img("convert", "-f", "raw", "-O", "vhdx", "-o", options, str(raw), str(path))
    return path


def qemu_info(path: Path, driver: str) -> dict[str, object]:
    """What ``qemu-img info -f DRIVER`` says about the image (``virtual-size``, ``cluster-size`` ...)."""
    out = subprocess.run(["qemu-img", "info", "-f", driver, "--output=json", str(path)], check=True,
                         capture_output=True, text=True).stdout
    info: dict[str, object] = json.loads(out)
    return info


# -- patching bytes ------------------------------------------------------------------------


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(size)


def _pack(fields: dict[str, tuple[int, str]], name: str, value: object) -> tuple[int, bytes]:
    offset, fmt = fields[name]
    values = value if isinstance(value, tuple) else (value,)
    return offset, struct.pack(fmt, *values)


def vhd_checksum(structure: bytes, field: int) -> int:
    """One's complement of the byte sum, the checksum field left out."""
    return ~(sum(structure[:field]) + sum(structure[field + 4 :])) & 0xFFFFFFFF


def _patched(structure: bytes, fields: dict[str, tuple[int, str]], changes: dict[str, object],
             checksum_at: int, fix: bool) -> bytes:
    buffer = bytearray(structure)
    for name, value in changes.items():
        offset, packed = _pack(fields, name, value)
        buffer[offset : offset + len(packed)] = packed
    if fix:
        buffer[checksum_at : checksum_at + 4] = struct.pack(">I", vhd_checksum(bytes(buffer), checksum_at))
    return bytes(buffer)


def patch_vhd_footer(path: Path, *, copies: str = "both", fix: bool = True, **changes: object) -> None:
    """Change footer fields; ``copies``: ``both`` (end, and offset 0 if it holds a copy), ``end`` or ``head``."""
    size = path.stat().st_size
    tail = read_at(path, size - SECTOR, SECTOR)
    if copies in ("both", "end"):
        write_at(path, size - SECTOR, _patched(tail, FOOTER, changes, FOOTER_CHECKSUM, fix))
    head = read_at(path, 0, SECTOR)
    if copies == "head" or (copies == "both" and head.startswith(b"conectix")):
        write_at(path, 0, _patched(head, FOOTER, changes, FOOTER_CHECKSUM, fix))


def patch_vhd_header(path: Path, *, fix: bool = True, **changes: object) -> None:
    """Change dynamic disk header fields (the header at the footer's data offset)."""
    (offset,) = struct.unpack(">Q", read_at(path, 16, 8))
    header = read_at(path, offset, 1024)
    write_at(path, offset, _patched(header, DYNAMIC, changes, HEADER_CHECKSUM, fix))


def vhd_header_field(path: Path, name: str) -> int:
    (offset,) = struct.unpack(">Q", read_at(path, 16, 8))
    at, fmt = DYNAMIC[name]
    (value,) = struct.unpack(fmt, read_at(path, offset + at, struct.calcsize(fmt)))
    return int(value)


def vhd_bat(path: Path) -> list[int]:
    table, entries = vhd_header_field(path, "table_offset"), vhd_header_field(path, "max_table_entries")
    return list(struct.unpack(f">{entries}I", read_at(path, table, 4 * entries)))


def set_vhd_bat_entry(path: Path, index: int, sector: int) -> None:
    write_at(path, vhd_header_field(path, "table_offset") + 4 * index, struct.pack(">I", sector))


def fix_vhdx_crc(path: Path, offset: int, size: int) -> None:
    """Recompute the CRC-32C at ``offset + 4`` of the ``size``-byte structure at ``offset``."""
    structure = bytearray(read_at(path, offset, size))
    structure[4:8] = bytes(4)
    structure[4:8] = struct.pack("<I", crc32c(bytes(structure)))
    write_at(path, offset, bytes(structure))


def patch_vhdx_header(path: Path, number: int, at: int, data: bytes, *, fix: bool = True) -> None:
    """Write ``data`` at ``at`` in header 1 or 2 and fix its CRC."""
    base = VHDX_HEADERS[number - 1]
    write_at(path, base + at, data)
    if fix:
        fix_vhdx_crc(path, base, 4096)


def patch_vhdx_regions(path: Path, at: int, data: bytes, *, tables: tuple[int, ...] = (1, 2),
                       fix: bool = True) -> None:
    """Write ``data`` at ``at`` in the region tables named and fix their CRCs."""
    for number in tables:
        base = VHDX_REGION_TABLES[number - 1]
        write_at(path, base + at, data)
        if fix:
            fix_vhdx_crc(path, base, 64 << 10)


def vhdx_regions(path: Path) -> dict[bytes, tuple[int, int, int, int]]:
    """Region GUID -> (entry offset in the table, file offset, length, flags)."""
    table = read_at(path, VHDX_REGION_TABLES[0], 64 << 10)
    (count,) = struct.unpack_from("<I", table, 8)
    found = {}
    for index in range(count):
        guid, offset, length, flags = struct.unpack_from("<16sQII", table, 16 + 32 * index)
        found[guid] = (16 + 32 * index, offset, length, flags)
    return found


def vhdx_metadata_items(path: Path) -> dict[bytes, tuple[int, int, int]]:
    """Metadata item GUID -> (entry's file offset, item's file offset, length)."""
    _at, base, _length, _flags = vhdx_regions(path)[METADATA_REGION]
    table = read_at(path, base, 64 << 10)
    (count,) = struct.unpack_from("<H", table, 10)
    found = {}
    for index in range(count):
        guid, offset, length, _flags = struct.unpack_from("<16sIII", table, 32 + 32 * index)
        found[guid] = (base + 32 + 32 * index, base + offset, length)
    return found


def add_vhdx_metadata_item(path: Path, guid: bytes, payload: bytes, flags: int) -> None:
    """Append a metadata table entry whose item (``payload``) lies after the existing ones."""
    _at, base, _length, _flags = vhdx_regions(path)[METADATA_REGION]
    (count,) = struct.unpack("<H", read_at(path, base + 10, 2))
    end = max(item - base + length for _entry, item, length in vhdx_metadata_items(path).values())
    offset = -(-end // 4096) * 4096
    write_at(path, base + 32 + 32 * count, struct.pack("<16sIII4x", guid, offset, len(payload), flags))
    write_at(path, base + 10, struct.pack("<H", count + 1))
    write_at(path, base + offset, payload)


def vhdx_bat_offset(path: Path) -> int:
    return vhdx_regions(path)[BAT_REGION][1]


# -- random damage, checksums fixed ----------------------------------------------------------------


def _damage(data: bytearray, offsets: list[range], rng: random.Random) -> None:
    for _ in range(rng.randint(1, 4)):
        offset = rng.choice(rng.choice(offsets))
        data[offset] = rng.randrange(256) if rng.random() < 0.7 else rng.choice((0, 1, 6, 7, 0x80, 0xFF))


def damaged_vhd(image: bytes, rng: random.Random) -> bytes:
    """A dynamic VHD with random bytes changed in its footer, header and BAT, checksums fixed, the
    footer copy at offset 0 kept equal to the footer at the end."""
    data = bytearray(image)
    (header,) = struct.unpack_from(">Q", data, 16)
    (table,) = struct.unpack_from(">Q", data, header + 16)
    _damage(data, [range(len(data) - SECTOR, len(data) - SECTOR + 86), range(header, header + 1024),
                   range(table, table + 64)], rng)
    footer = bytearray(data[-SECTOR:])
    footer[64:68] = struct.pack(">I", vhd_checksum(bytes(footer), FOOTER_CHECKSUM))
    data[-SECTOR:] = data[:SECTOR] = footer
    block = bytearray(data[header : header + 1024])
    block[36:40] = struct.pack(">I", vhd_checksum(bytes(block), HEADER_CHECKSUM))
    data[header : header + 1024] = block
    return bytes(data)


def damaged_vhdx(image: bytes, rng: random.Random) -> bytes:
    """A VHDX with random bytes changed in its header, region table, metadata and BAT; both headers
    and both region tables kept alike, CRC-32C fixed."""
    data = bytearray(image)
    table = bytes(data[VHDX_REGION_TABLES[0] : VHDX_REGION_TABLES[0] + 64 * 1024])
    places = dict(struct.unpack_from("<16sQ", table, 16 + 32 * index) for index in range(2))
    metadata, bat = places[METADATA_REGION], places[BAT_REGION]
    _damage(data, [range(VHDX_HEADERS[0], VHDX_HEADERS[0] + 80), range(VHDX_REGION_TABLES[0],
                   VHDX_REGION_TABLES[0] + 80), range(metadata, metadata + 192),
                   range(metadata + 65536, metadata + 65576), range(bat, bat + 96)], rng)
    for first, second, size in ((*VHDX_HEADERS, 4096), (*VHDX_REGION_TABLES, 65536)):
        data[second : second + size] = data[first : first + size]
        for base in (first, second):
            structure = bytearray(data[base : base + size])
            structure[4:8] = bytes(4)
            structure[4:8] = struct.pack("<I", crc32c(bytes(structure)))
            data[base : base + size] = structure
    return bytes(data)
