"""Checks a VHD (Virtual PC / Hyper-V, qemu's ``vpc``) image's footer, header and BAT (``inspect``).

Runs after ``disk_format``, which detects a VHD (a dynamic one by the footer copy at
offset 0, a fixed one by the footer in the last sector) and records its virtual size.
This plugin parses the structures again, itself, as the VHD specification and qemu's
``vpc`` driver read them:

* the footer in the last sector: cookie, one's-complement checksum, file format
  version 1.0, known feature bits, disk type (2 fixed, 3 dynamic; 4 differencing
  names a parent file and is rejected), size fields and CHS geometry;
* a fixed disk: no data offset, and a file of exactly the current size plus the footer;
* a dynamic disk: a footer copy at offset 0 identical to the one at the end, the
  dynamic disk header (cookie, checksum, version, block size, table offset and size,
  empty parent locators) and every entry of the block allocation table (BAT).

Facts: ``subformat`` (``fixed``/``dynamic``/``differencing``) and ``cluster_size`` (the
dynamic block size). Every read is bounded by a constant below or the
``[plugin.vhd] max_table_entries`` option, and a table is only read once it is known
to lie in the file.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

from importhooks import FindingCode, ImportContext, PluginOption, PluginOptions, Severity, hookimpl

SECTION = "vhd"
SECTOR = 512
FOOTER_SIZE = 512
#: The dynamic disk header, with its parent name and eight parent locator entries.
HEADER_SIZE = 1024
FOOTER_COOKIE = b"conectix"
HEADER_COOKIE = b"cxsparse"
#: File format version (footer) and header version (dynamic header): 1.0.
VERSION_1_0 = 0x00010000
#: The footer's data offset of a fixed disk, and the header's unused data offset.
NO_OFFSET = 0xFFFF_FFFF_FFFF_FFFF
#: Footer feature bits: 1 temporary disk, 2 reserved (always set). Others are unknown.
KNOWN_FEATURES = 0x3
FIXED, DYNAMIC, DIFFERENCING = 2, 3, 4
SUBFORMATS = {FIXED: "fixed", DYNAMIC: "dynamic", DIFFERENCING: "differencing"}
#: Largest VHD: 65535 x 255 x 255 sectors (about 2040 GiB), qemu's limit as well.
MAX_DISK_SIZE = 65535 * 255 * 255 * SECTOR
#: CHS geometry: at most 16 heads; 65535/16/255 is the "too large for CHS" marker with
#: which readers take the footer's current size instead of the geometry.
MAX_HEADS = 16
MAX_GEOMETRY = 65535 * 16 * 255
#: Creator applications whose size qemu takes from the current size, not the geometry.
CURRENT_SIZE_CREATORS = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0")
#: Dynamic block sizes accepted: powers of two from 4 KiB to 256 MiB (2 MiB is usual).
MIN_BLOCK_SIZE = 4 << 10
MAX_BLOCK_SIZE = 256 << 20
#: Default cap on the BAT's entries (16 MiB of table), over a maximal VHD at 512 KiB blocks.
DEFAULT_MAX_TABLE_ENTRIES = 1 << 22
#: A BAT entry of an unallocated block.
UNALLOCATED = 0xFFFF_FFFF
#: BAT bytes read at a time.
BAT_CHUNK = 1 << 20

_FOOTER = struct.Struct(">8sIIQI4sI4sQQHBBII")
_HEADER = struct.Struct(">8sQQIIII16sII512s")
_LOCATORS = slice(_HEADER.size, _HEADER.size + 8 * 24)

FOOTER_INVALID = FindingCode(
    "vhd.footer_invalid",
    "The VHD image's footer is invalid.",
    "The last sector is not a VHD footer with a valid checksum, or the footer has an unknown file format "
    "version or feature bits. A dynamic VHD cut short loses its footer. Re-export the image.",
)
DISK_TYPE = FindingCode(
    "vhd.disk_type",
    "The VHD image has an unknown disk type.",
    "The footer's disk type is none of fixed (2), dynamic (3) or differencing (4).",
)
DIFFERENCING_DISK = FindingCode(
    "vhd.differencing",
    "The VHD image is a differencing disk that refers to a parent file; only self-contained images are accepted.",
    "A differencing VHD names its parent through parent locators (file paths), like a qcow2 backing file: "
    "the hypervisor would open a file on the host. Merge it into a fixed or dynamic VHD first.",
)
FOOTER_MISMATCH = FindingCode(
    "vhd.footer_mismatch",
    "The VHD image's two footers disagree.",
    "A dynamic VHD keeps a copy of its footer at offset 0 that must equal the footer at the end, and a fixed "
    "VHD has none. qemu reads the copy, other readers the end: two different footers let two tools see two "
    "different disks (a polyglot).",
)
SIZE_INVALID = FindingCode(
    "vhd.size_invalid",
    "The VHD image's disk size is invalid.",
    "The footer's current size is not a whole number of sectors or is over the VHD maximum (2040 GiB), or a "
    "dynamic disk's original size differs from its current size (oslo.utils reads the one, qemu the other).",
)
GEOMETRY = FindingCode(
    "vhd.geometry",
    "The VHD image's disk geometry is invalid.",
    "The CHS geometry has more than 16 heads or describes a larger disk than the footer's current size "
    "(readers that go by geometry would see a disk other than the one checked).",
)
GEOMETRY_SIZE = FindingCode(
    "vhd.geometry_size",
    "Some hypervisors will see this VHD disk slightly smaller than its declared size.",
    "The image's creator application is one for which qemu sizes the disk from the CHS geometry, and the "
    "geometry covers less than the footer's current size: qemu shows the smaller size, Glance the footer's.",
    Severity.WARNING,
)
DATA_OFFSET = FindingCode(
    "vhd.data_offset",
    "The VHD image's header location is invalid.",
    "A fixed VHD must have no data offset; a dynamic VHD's header must lie between the footer copy at "
    "offset 0 and the footer at the end.",
)
SIZE_MISMATCH = FindingCode(
    "vhd.size_mismatch",
    "The fixed VHD image's file size does not match its disk size.",
    "A fixed VHD is its disk followed by the 512-byte footer, so the file must be exactly the current size "
    "plus 512 bytes.",
)
HEADER_INVALID = FindingCode(
    "vhd.header_invalid",
    "The dynamic VHD image's header is invalid.",
    "The dynamic disk header has no 'cxsparse' cookie, a wrong checksum, an unknown version or a used data "
    "offset.",
)
BLOCK_SIZE = FindingCode(
    "vhd.block_size",
    "The dynamic VHD image's block size is not supported.",
    "The block size must be a power of two from 4 KiB to 256 MiB (2 MiB is usual).",
)
TABLE = FindingCode(
    "vhd.table",
    "The dynamic VHD image's block allocation table is invalid.",
    "The BAT lies outside the file or over the header, has too few entries for the disk size, or more "
    "entries than [plugin.vhd] max_table_entries allows.",
)
PARENT_LOCATOR = FindingCode(
    "vhd.parent_locator",
    "The VHD image names a parent file although it is not a differencing disk.",
    "The dynamic disk header's parent name or parent locators (file paths) are set in a disk that is not a "
    "differencing disk; a reader that honours them would open a host file.",
)
BLOCK_OFFSET = FindingCode(
    "vhd.block_offset",
    "The dynamic VHD image's block allocation table points outside its data.",
    "A BAT entry places a block past the end of the file, over the footers, header or BAT, or over another "
    "block: writes to one would change another, or the metadata.",
)
CODES = (FOOTER_INVALID, DISK_TYPE, DIFFERENCING_DISK, FOOTER_MISMATCH, SIZE_INVALID, GEOMETRY, GEOMETRY_SIZE,
         DATA_OFFSET, SIZE_MISMATCH, HEADER_INVALID, BLOCK_SIZE, TABLE, PARENT_LOCATOR, BLOCK_OFFSET)


@hookimpl
def importhooks_finding_codes() -> tuple[FindingCode, ...]:
    return CODES


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    return PluginOptions(SECTION, (
        PluginOption("max_table_entries", DEFAULT_MAX_TABLE_ENTRIES,
                     "Most entries a dynamic VHD's block allocation table may have (4 bytes each)."),
    ))


class _Invalid(Exception):
    """A check failed: the finding to reject with."""

    def __init__(self, code: FindingCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def checksum(structure: bytes, field: int) -> int:
    """The VHD checksum: one's complement of the byte sum, the 4-byte field at ``field`` left out."""
    total = sum(structure[:field]) + sum(structure[field + 4 :])
    return ~total & 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class Footer:
    """The fields of a VHD footer this plugin uses."""

    features: int
    version: int
    data_offset: int
    creator_app: bytes
    original_size: int
    current_size: int
    cylinders: int
    heads: int
    sectors: int
    disk_type: int

    @classmethod
    def parse(cls, sector: bytes, where: str) -> Footer:
        """Parse and validate a footer (cookie, checksum, version, features)."""
        if len(sector) != FOOTER_SIZE or not sector.startswith(FOOTER_COOKIE):
            raise _Invalid(FOOTER_INVALID, f"no footer cookie in the {where}")
        (_cookie, features, version, data_offset, _time, app, _cver, _os, original, current,
         cylinders, heads, sectors, disk_type, stored) = _FOOTER.unpack_from(sector)
        if checksum(sector, 64) != stored:
            raise _Invalid(FOOTER_INVALID, f"footer checksum in the {where}: stored {stored:#x}, "
                                           f"computed {checksum(sector, 64):#x}")
        if version != VERSION_1_0:
            raise _Invalid(FOOTER_INVALID, f"file format version {version:#x}, expected {VERSION_1_0:#x}")
        if features & ~KNOWN_FEATURES:
            raise _Invalid(FOOTER_INVALID, f"unknown feature bits {features & ~KNOWN_FEATURES:#x}")
        return cls(features, version, data_offset, app, original, current, cylinders, heads, sectors, disk_type)


@dataclass(frozen=True, slots=True)
class DynamicHeader:
    """The fields of a dynamic disk header this plugin uses."""

    table_offset: int
    max_table_entries: int
    block_size: int
    parent_fields_empty: bool

    @classmethod
    def parse(cls, raw: bytes) -> DynamicHeader:
        """Parse and validate the header (cookie, checksum, version, unused data offset)."""
        if len(raw) != HEADER_SIZE or not raw.startswith(HEADER_COOKIE):
            raise _Invalid(HEADER_INVALID, "no 'cxsparse' cookie at the footer's data offset")
        (_cookie, data_offset, table_offset, version, entries, block_size, stored, _parent_id, _parent_time,
         _reserved, parent_name) = _HEADER.unpack_from(raw)
        if checksum(raw, 36) != stored:
            raise _Invalid(HEADER_INVALID, f"header checksum: stored {stored:#x}, computed {checksum(raw, 36):#x}")
        if version != VERSION_1_0:
            raise _Invalid(HEADER_INVALID, f"header version {version:#x}, expected {VERSION_1_0:#x}")
        if data_offset != NO_OFFSET:
            raise _Invalid(HEADER_INVALID, f"header data offset {data_offset:#x}, expected unused (all ones)")
        parent_empty = not any(parent_name) and not any(raw[_LOCATORS])
        return cls(table_offset, entries, block_size, parent_empty)


@hookimpl
def importhooks_inspect(context: ImportContext) -> None:
    if context.facts.get("disk_format") != "vhd":
        return
    try:
        _check(context)
    except _Invalid as bad:
        context.reject(bad.code, detail=bad.detail)


def _check(context: ImportContext) -> None:
    data = context.data
    size = data.size
    if size < FOOTER_SIZE:
        raise _Invalid(FOOTER_INVALID, f"file of {size} bytes, shorter than a footer")
    tail = data.read_at(size - FOOTER_SIZE, FOOTER_SIZE)
    head = data.read_at(0, FOOTER_SIZE)
    footer = Footer.parse(tail, "last sector")
    subformat = SUBFORMATS.get(footer.disk_type)
    if subformat is None:
        raise _Invalid(DISK_TYPE, f"disk type {footer.disk_type}")
    context.facts["subformat"] = subformat
    if footer.disk_type == DIFFERENCING:
        raise _Invalid(DIFFERENCING_DISK, "disk type 4 (differencing)")
    if footer.disk_type == FIXED:
        if head.startswith(FOOTER_COOKIE) and size > FOOTER_SIZE:
            raise _Invalid(FOOTER_MISMATCH, "a fixed VHD whose first sector is a VHD footer")
    elif head != tail:
        raise _Invalid(FOOTER_MISMATCH, "the footer copy at offset 0 differs from the footer at the end")
    _check_sizes(context, footer)
    if footer.disk_type == FIXED:
        if footer.data_offset != NO_OFFSET:
            raise _Invalid(DATA_OFFSET, f"fixed disk with data offset {footer.data_offset:#x}")
        if size != footer.current_size + FOOTER_SIZE:
            raise _Invalid(SIZE_MISMATCH, f"file of {size} bytes, current size {footer.current_size} + 512")
        return
    _check_dynamic(context, footer)


def _check_sizes(context: ImportContext, footer: Footer) -> None:
    """Size fields and CHS geometry: every reader must see the same disk, the one checked."""
    current = footer.current_size
    if current % SECTOR or current > MAX_DISK_SIZE:
        raise _Invalid(SIZE_INVALID, f"current size {current}: not a multiple of 512 or over {MAX_DISK_SIZE}")
    if footer.disk_type != FIXED and footer.original_size != current:
        raise _Invalid(SIZE_INVALID, f"original size {footer.original_size} differs from current size {current}")
    if footer.heads > MAX_HEADS:
        raise _Invalid(GEOMETRY, f"{footer.heads} heads")
    chs = footer.cylinders * footer.heads * footer.sectors
    if chs == MAX_GEOMETRY:
        return  # "too large for CHS": every reader takes the current size
    if chs * SECTOR > current:
        raise _Invalid(GEOMETRY, f"geometry {footer.cylinders}/{footer.heads}/{footer.sectors} covers "
                                 f"{chs * SECTOR} bytes, current size {current}")
    if chs * SECTOR < current and footer.creator_app not in CURRENT_SIZE_CREATORS:
        context.report(GEOMETRY_SIZE, detail=f"creator {footer.creator_app!r}: geometry {footer.cylinders}/"
                                             f"{footer.heads}/{footer.sectors} covers {chs * SECTOR} bytes, "
                                             f"current size {current}")


def _overlaps(start: int, end: int, areas: list[tuple[int, int]]) -> bool:
    return any(start < area_end and area_start < end for area_start, area_end in areas)


def _check_dynamic(context: ImportContext, footer: Footer) -> None:
    """The dynamic disk header, its parent fields, the BAT's place and every BAT entry."""
    size = context.data.size
    data_end = size - FOOTER_SIZE  # where the footer at the end starts
    offset = footer.data_offset
    if offset < FOOTER_SIZE or offset > data_end - HEADER_SIZE:
        last = data_end - HEADER_SIZE
        raise _Invalid(DATA_OFFSET, f"header offset {offset:#x} outside [{FOOTER_SIZE:#x}, {last:#x}]")
    header = DynamicHeader.parse(context.data.read_at(offset, HEADER_SIZE))
    block = header.block_size
    if block & (block - 1) or not MIN_BLOCK_SIZE <= block <= MAX_BLOCK_SIZE:
        raise _Invalid(BLOCK_SIZE, f"block size {block}")
    context.facts["cluster_size"] = block
    if not header.parent_fields_empty:
        raise _Invalid(PARENT_LOCATOR, "parent name or parent locator entries set in a dynamic disk")
    entries, cap = header.max_table_entries, context.options(SECTION)["max_table_entries"]
    if entries > cap:
        raise _Invalid(TABLE, f"{entries} BAT entries, limit {cap} ([plugin.vhd] max_table_entries)")
    if entries * block < footer.current_size:
        raise _Invalid(TABLE, f"{entries} BAT entries of {block} bytes cover less than {footer.current_size}")
    table, table_end = header.table_offset, header.table_offset + 4 * entries
    metadata = [(0, FOOTER_SIZE), (offset, offset + HEADER_SIZE)]
    if table < FOOTER_SIZE or table_end > data_end or _overlaps(table, table_end, metadata):
        raise _Invalid(TABLE, f"BAT at {table:#x}..{table_end:#x} outside the data area or over the header")
    if context.has_errors():
        return  # already rejected: spare the scan
    metadata.append((table, table_end))
    _check_bat(context, header, metadata, data_end)


def _check_bat(context: ImportContext, header: DynamicHeader, metadata: list[tuple[int, int]],
               data_end: int) -> None:
    """Every allocated block (bitmap + data) lies in the file, off the metadata, apart from the others."""
    bitmap = (-(-header.block_size // (8 * SECTOR)) + SECTOR - 1) & ~(SECTOR - 1)  # one bit a sector, whole sectors
    span = bitmap + header.block_size
    starts: list[int] = []
    length = 4 * header.max_table_entries
    for chunk_at in range(0, length, BAT_CHUNK):
        want = min(BAT_CHUNK, length - chunk_at)
        raw = context.data.read_at(header.table_offset + chunk_at, want)
        if len(raw) != want:
            raise _Invalid(TABLE, "BAT cut short by the end of the file")
        for index, (sector,) in enumerate(struct.iter_unpack(">I", raw), start=chunk_at // 4):
            if sector == UNALLOCATED:
                continue
            start = sector * SECTOR
            if start + span > data_end or _overlaps(start, start + span, metadata):
                raise _Invalid(BLOCK_OFFSET, f"BAT entry {index}: block at {start:#x}..{start + span:#x}, "
                                             f"data area ends at {data_end:#x}")
            starts.append(start)
    starts.sort()
    for first, second in itertools.pairwise(starts):
        if second < first + span:
            raise _Invalid(BLOCK_OFFSET, f"blocks at {first:#x} and {second:#x} overlap")
