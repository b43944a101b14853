"""Checks VirtualBox VDI images: header fields in range, no parent, a sound block map (``inspect``).

Runs after ``disk_format`` (which detects VDI and reads its disk size) and only on
data it named ``vdi``. The header is read from its fixed place, every field is
checked against the VDI 1.1 layout, and the block map is scanned (at most
``[plugin.vdi] max_blocks`` entries): every allocated entry must name a distinct
data block that lies wholly inside the file. Differencing images (``undo``,
``diff``, or a parent/link UUID) are rejected: they name another image the
hypervisor would have to find.

Layout (little endian; offsets from the start of the file)::

    0x000  text[64]          free text, ignored
    0x040  u32 signature     0xbeda107f
    0x044  u32 version       0x00010001 (1.1)
    0x048  u32 header_size   0x180 (v1) or 0x190 (v1 + LCHS geometry)
    0x04c  u32 image_type    1 dynamic, 2 static (fixed), 3 undo, 4 diff
    0x154  u32 offset_bmap   block map offset (bytes, sector aligned)
    0x158  u32 offset_data   data area offset (bytes, sector aligned)
    0x168  u32 sector_size   512
    0x170  u64 disk_size     virtual size (bytes)
    0x178  u32 block_size    1 MiB in practice
    0x17c  u32 block_extra   0 (qemu ignores it; VirtualBox would not)
    0x180  u32 blocks_in_image
    0x184  u32 blocks_allocated
    0x1a8  uuid link         parent image (differencing images only)
    0x1b8  uuid parent       parent's modification (differencing images only)

Block map entries are u32: ``0xffffffff`` free, ``0xfffffffe`` zero (discarded),
anything else the index of a data block at ``offset_data + index * block_size``.

Facts recorded: ``subformat`` (``dynamic`` or ``fixed``) and ``cluster_size`` (the
block size).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from importhooks import FindingCode, ImportContext, PluginOption, PluginOptions, hookimpl

from ._tables import TableEnds, table_chunks

#: Bytes read for the header: the pre-header and the v1.1 header fill one sector.
HEADER_BYTES = 512
SIGNATURE = 0xBEDA107F
VERSION_1_1 = 0x00010001
#: Accepted ``header_size`` values: VDIHEADER1 and VDIHEADER1PLUS (with LCHS geometry).
HEADER_SIZES = (0x180, 0x190)
#: Where ``header_size`` counts from (the pre-header: text, signature, version).
PRE_HEADER_BYTES = 0x48
SECTOR = 512
TYPE_NAMES = {1: "dynamic", 2: "fixed", 3: "undo", 4: "diff"}
#: Smallest and largest accepted block size (a power of two); qemu opens 1 MiB only.
MIN_BLOCK_SIZE = 1 << 12
MAX_BLOCK_SIZE = 1 << 26
#: Block map markers: never allocated, and discarded (reads as zeros).
BLOCK_FREE = 0xFFFFFFFF
BLOCK_ZERO = 0xFFFFFFFE
ENTRY_BYTES = 4
#: Block map entries read and checked per read (256 KiB).
MAP_CHUNK_ENTRIES = 1 << 16
#: Default of ``[plugin.vdi] max_blocks``: 4 Mi entries, a 16 MiB map, 4 TiB at 1 MiB blocks.
DEFAULT_MAX_BLOCKS = 1 << 22

_HEADER = struct.Struct("<64sIIIII256sIIIIIIIQIIII16s16s16s16s")

HEADER = FindingCode(
    "vdi.header",
    "The VDI image's header is invalid.",
    "A VDI header field is out of range: version other than 1.1, unknown header size, sector size other "
    "than 512, block size not a power of two in range, block_extra set, block map or data offsets "
    "unaligned, out of order or past the end of the file, more blocks than max_blocks, or a disk size "
    "the block map cannot hold. The detail names the field. Recreate the image with "
    "'qemu-img convert -O vdi' or VirtualBox.",
)
IMAGE_TYPE = FindingCode(
    "vdi.image_type",
    "The VDI image is a differencing or unknown image type; only dynamic and fixed images are accepted.",
    "VDI image types 3 (undo) and 4 (diff) store only changes to a parent image, which the hypervisor "
    "would have to find elsewhere; other values are unknown. Merge the image into a standalone one "
    "(VBoxManage clonemedium) and upload that.",
)
PARENT = FindingCode(
    "vdi.parent",
    "The VDI image refers to a parent image; only self-contained images are accepted.",
    "The header's link or parent UUID is set, which makes the image a child of another image. "
    "Clone it into a standalone image (VBoxManage clonemedium) and upload that.",
)
BLOCK_MAP = FindingCode(
    "vdi.block_map",
    "The VDI image's block map is invalid.",
    "An allocated block map entry names a data block beyond blocks_allocated or past the end of the "
    "file, two entries share one data block, or the number of allocated entries differs from the "
    "header's blocks_allocated. The image is truncated or corrupt.",
)


class VdiHeader(NamedTuple):
    """The fields of a VDI 1.1 header, host byte order."""

    text: bytes
    signature: int
    version: int
    header_size: int
    image_type: int
    image_flags: int
    description: bytes
    offset_bmap: int
    offset_data: int
    cylinders: int
    heads: int
    sectors: int
    sector_size: int
    unused: int
    disk_size: int
    block_size: int
    block_extra: int
    blocks_in_image: int
    blocks_allocated: int
    uuid_image: bytes
    uuid_last_snap: bytes
    uuid_link: bytes
    uuid_parent: bytes


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    """The codes this plugin reports."""
    return [HEADER, IMAGE_TYPE, PARENT, BLOCK_MAP]


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    """The ``[plugin.vdi]`` options."""
    return PluginOptions("vdi", (
        PluginOption("max_blocks", DEFAULT_MAX_BLOCKS,
                     "Largest blocks_in_image accepted: bounds the block map read and scanned "
                     "(4 bytes per block). Larger images are rejected (vdi.header)."),
    ))


def parse_header(raw: bytes) -> VdiHeader | None:
    """The header in the first sector, or None if ``raw`` is shorter than the header."""
    if len(raw) < _HEADER.size:
        return None
    return VdiHeader(*_HEADER.unpack_from(raw))


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def header_problem(header: VdiHeader, file_size: int, max_blocks: int) -> str | None:
    """What is wrong with the header's layout fields (for ``vdi.header``), or None."""
    if header.signature != SIGNATURE:
        return f"signature {header.signature:#x}"
    if header.version != VERSION_1_1:
        return f"version {header.version >> 16}.{header.version & 0xFFFF}, only 1.1 is supported"
    if header.header_size not in HEADER_SIZES:
        return f"header_size {header.header_size:#x}, expected one of {[hex(s) for s in HEADER_SIZES]}"
    if header.sector_size != SECTOR:
        return f"sector_size {header.sector_size}, expected {SECTOR}"
    if not _is_power_of_two(header.block_size) or not MIN_BLOCK_SIZE <= header.block_size <= MAX_BLOCK_SIZE:
        return f"block_size {header.block_size}, expected a power of two in {MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE}"
    if header.block_extra != 0:
        return f"block_extra {header.block_extra}, expected 0"
    if header.blocks_in_image > max_blocks:
        return f"blocks_in_image {header.blocks_in_image} over the limit of {max_blocks} (max_blocks)"
    if header.blocks_allocated > header.blocks_in_image:
        return f"blocks_allocated {header.blocks_allocated} > blocks_in_image {header.blocks_in_image}"
    capacity = header.blocks_in_image * header.block_size
    if header.disk_size > capacity:
        return f"disk_size {header.disk_size} > blocks_in_image * block_size = {capacity}"
    return _offsets_problem(header, file_size)


def _offsets_problem(header: VdiHeader, file_size: int) -> str | None:
    """Block map after the header, data after the block map, both sector aligned, inside the file."""
    bmap, data = header.offset_bmap, header.offset_data
    if bmap % SECTOR or data % SECTOR:
        return f"offset_bmap {bmap:#x} or offset_data {data:#x} not a multiple of {SECTOR}"
    if bmap < PRE_HEADER_BYTES + header.header_size:
        return f"offset_bmap {bmap:#x} overlaps the header"
    bmap_end = bmap + header.blocks_in_image * ENTRY_BYTES
    if bmap_end > data:
        return f"block map ({bmap:#x}..{bmap_end:#x}) overlaps the data area at {data:#x}"
    if data > file_size:
        return f"offset_data {data:#x} past the end of the {file_size}-byte file"
    return None


def block_map_problem(context: ImportContext, header: VdiHeader) -> str | None:
    """Scan the block map in chunks; what is wrong with it (for ``vdi.block_map``), or None."""
    in_file = (context.data.size - header.offset_data) // header.block_size
    bound = min(header.blocks_allocated, in_file)
    seen = bytearray(header.blocks_allocated)
    used = 0
    chunks = table_chunks(context.data, header.offset_bmap, header.blocks_in_image, "I", MAP_CHUNK_ENTRIES)
    try:
        for first, entries in chunks:
            allocated = [entry for entry in entries if entry < BLOCK_ZERO]
            if not allocated:
                continue
            if max(allocated) >= bound:
                index = next(i for i, entry in enumerate(entries) if BLOCK_ZERO > entry >= bound)
                entry = entries[index]
                where = "past the end of the file" if entry >= in_file else f"beyond blocks_allocated {bound}"
                return f"entry {first + index} names data block {entry}, {where}"
            for entry in allocated:
                if seen[entry]:
                    last = first + len(entries) - 1
                    return f"data block {entry} is mapped twice (again among entries {first}..{last})"
                seen[entry] = 1
            used += len(allocated)
    except TableEnds as ends:
        return f"block map ends at entry {ends.entry}, past the end of the file"
    if used != header.blocks_allocated:
        return f"{used} entries allocated, header says blocks_allocated {header.blocks_allocated}"
    return None


@hookimpl
def importhooks_inspect(context: ImportContext) -> None:
    """Check the header, then scan the block map, of data detected as ``vdi``."""
    if context.facts.get("disk_format") != "vdi":
        return
    header = parse_header(context.data.read_at(0, HEADER_BYTES))
    if header is None:
        context.reject(HEADER, detail=f"header truncated: the file has {context.data.size} bytes")
    if header.image_type not in (1, 2):
        name = TYPE_NAMES.get(header.image_type, "unknown")
        context.reject(IMAGE_TYPE, detail=f"image_type {header.image_type} ({name})")
    if any(header.uuid_link) or any(header.uuid_parent):
        context.reject(PARENT, detail=f"link uuid {header.uuid_link.hex()}, parent uuid {header.uuid_parent.hex()}")
    max_blocks = int(context.options("vdi").get("max_blocks", DEFAULT_MAX_BLOCKS))
    problem = header_problem(header, context.data.size, max_blocks)
    if problem is not None:
        context.reject(HEADER, detail=problem)
    context.facts["subformat"] = TYPE_NAMES[header.image_type]
    context.facts["cluster_size"] = header.block_size
    problem = block_map_problem(context, header)
    if problem is not None:
        context.reject(BLOCK_MAP, detail=problem)
