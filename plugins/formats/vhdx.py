"""Checks a VHDX image's headers, log, region tables, metadata and BAT (``inspect``).

Runs after ``disk_format``, which detects VHDX (the ``vhdxfile`` identifier, through
oslo.utils) and records the virtual size, and parses the structures again itself, as
the MS-VHDX specification describes them and qemu's ``vhdx`` driver reads them: both
headers (a set log GUID means a log replay that would *write* the image: rejected),
both region tables, the metadata table and its required items (a parent, by flag or
locator, is rejected: it names a host file), and every BAT entry. What each check
is for: docs/formats/vhdx.rst.

Facts: ``subformat`` (``fixed``/``dynamic``/``differencing``, from the file
parameters) and ``cluster_size`` (the block size). Every read is bounded by a
constant below or the ``[plugin.vhdx] max_bat_entries`` option.
"""

from __future__ import annotations

import itertools
import struct
import uuid
from dataclasses import dataclass

from importhooks import FindingCode, ImportContext, PluginOption, PluginOptions, hookimpl

SECTION = "vhdx"
KiB, MiB, TiB = 1 << 10, 1 << 20, 1 << 40
FILE_SIGNATURE = b"vhdxfile"
HEADER_OFFSETS = (64 * KiB, 128 * KiB)
HEADER_SIZE = 4 * KiB
HEADER_SIGNATURE = b"head"
REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)
REGION_TABLE_SIZE = 64 * KiB
REGION_SIGNATURE = b"regi"
#: Entries in a region table and in the metadata table: at most 2047 (the table is 64 KiB).
MAX_TABLE_ENTRIES = 2047
METADATA_SIGNATURE = b"metadata"
METADATA_TABLE_SIZE = 64 * KiB
#: Longest metadata item the specification allows.
MAX_ITEM_LENGTH = 1 * MiB
#: The header section (identifier, headers, region tables); regions and the log come after.
HEADER_SECTION = 1 * MiB
#: Regions, the log and blocks are placed at multiples of 1 MiB.
ALIGNMENT = 1 * MiB
MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 1 * MiB, 256 * MiB
#: Largest virtual disk the specification allows.
MAX_DISK_SIZE = 64 * TiB
SECTOR_SIZES = (512, 4096)
#: Sectors described by one sector bitmap block; a "chunk" of payload blocks.
SECTORS_PER_CHUNK = 1 << 23
#: Default cap on BAT entries (32 MiB of table): 4 TiB in 1 MiB blocks.
DEFAULT_MAX_BAT_ENTRIES = 1 << 22
#: BAT bytes read at a time.
BAT_CHUNK = 1 * MiB
ZERO_GUID = bytes(16)


def _guid(text: str) -> bytes:
    """A GUID as stored on disk (mixed endian)."""
    return uuid.UUID(text).bytes_le


BAT_REGION = _guid("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION = _guid("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS = _guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE = _guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE_83_DATA = _guid("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE = _guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE = _guid("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR = _guid("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
#: The required metadata items and their exact lengths.
REQUIRED_ITEMS = {FILE_PARAMETERS: 8, VIRTUAL_DISK_SIZE: 8, PAGE_83_DATA: 16, LOGICAL_SECTOR_SIZE: 4,
                  PHYSICAL_SECTOR_SIZE: 4}
REGION_REQUIRED = 1
ITEM_IS_USER, ITEM_IS_REQUIRED = 1, 4
PARAM_LEAVE_BLOCKS_ALLOCATED, PARAM_HAS_PARENT = 1, 2
#: BAT entry states. Payload: not present, undefined, zero, unmapped, fully present
#: (partially present belongs to differencing disks). Sector bitmap: not present, present.
STATE_MASK = 0x7
PAYLOAD_ABSENT_STATES = frozenset({0, 1, 2, 3})
PAYLOAD_FULLY_PRESENT = 6
BITMAP_NOT_PRESENT, BITMAP_PRESENT = 0, 6
OFFSET_MASK = ~(MiB - 1) & 0xFFFF_FFFF_FFFF_FFFF

_HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")
_REGION_HEADER = struct.Struct("<4sII")
_REGION_ENTRY = struct.Struct("<16sQII")
_METADATA_HEADER = struct.Struct("<8sHH")
_METADATA_ENTRY = struct.Struct("<16sIII")

HEADER_INVALID = FindingCode(
    "vhdx.header_invalid",
    "The VHDX image's header is invalid.",
    "The file is shorter than the 1 MiB header section, or one of the two headers has a wrong signature, "
    "CRC-32C checksum or version, or both have the same sequence number but differ.",
)
LOG_PENDING = FindingCode(
    "vhdx.log_pending",
    "The VHDX image has unfinished log entries; only cleanly closed images are accepted.",
    "A header's log GUID is set: opening the image replays its log, which writes to the image, and a "
    "crafted log can change any part of it after it was checked. Open and close it cleanly in Hyper-V or "
    "convert it with 'qemu-img convert'.",
)
REGION_INVALID = FindingCode(
    "vhdx.region_invalid",
    "The VHDX image's region table is invalid.",
    "A region table has a wrong signature or checksum or too many entries, the two copies differ, the BAT "
    "or metadata region is missing or repeated, or a region or the log is misaligned, outside the file or "
    "over another.",
)
REGION_UNKNOWN = FindingCode(
    "vhdx.region_unknown",
    "The VHDX image needs a feature this cloud does not support.",
    "The region table has an entry marked required whose GUID is neither the BAT nor the metadata region.",
)
METADATA_INVALID = FindingCode(
    "vhdx.metadata_invalid",
    "The VHDX image's metadata is invalid.",
    "The metadata table has a wrong signature or too many entries, an item outside the region, over another "
    "or repeated, a required item missing or of the wrong size, a sector size other than 512 or 4096, or a "
    "virtual size that is not a multiple of the sector size, over 64 TiB or not the one oslo.utils read.",
)
METADATA_UNKNOWN = FindingCode(
    "vhdx.metadata_unknown",
    "The VHDX image needs a feature this cloud does not support.",
    "The metadata table has an item marked required that this checker does not know.",
)
BLOCK_SIZE = FindingCode(
    "vhdx.block_size",
    "The VHDX image's block size is not supported.",
    "The file parameters' block size must be a power of two from 1 MiB to 256 MiB.",
)
DIFFERENCING_DISK = FindingCode(
    "vhdx.differencing",
    "The VHDX image is a differencing disk that refers to a parent file; only self-contained images are accepted.",
    "The file parameters say 'has parent' or the metadata holds a parent locator (file paths), like a qcow2 "
    "backing file: the hypervisor would open a file on the host. Merge it into its parent first.",
)
BAT_INVALID = FindingCode(
    "vhdx.bat_invalid",
    "The VHDX image's block allocation table is invalid.",
    "The BAT region is too small for the virtual size, has more entries than [plugin.vhdx] max_bat_entries, "
    "or an entry has an unknown state or places a block outside the file, over the metadata or over "
    "another block.",
)
CODES = (HEADER_INVALID, LOG_PENDING, REGION_INVALID, REGION_UNKNOWN, METADATA_INVALID, METADATA_UNKNOWN,
         BLOCK_SIZE, DIFFERENCING_DISK, BAT_INVALID)


@hookimpl
def importhooks_finding_codes() -> tuple[FindingCode, ...]:
    return CODES


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    return PluginOptions(SECTION, (
        PluginOption("max_bat_entries", DEFAULT_MAX_BAT_ENTRIES,
                     "Most entries a VHDX block allocation table may need (8 bytes each)."),
    ))


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        value = byte
        for _bit in range(8):
            value = (value >> 1) ^ (0x82F63B78 if value & 1 else 0)
        table.append(value)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected, as VHDX uses it); the standard library has none."""
    crc, table = 0xFFFF_FFFF, _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFF_FFFF


def checksum_ok(structure: bytes) -> bool:
    """Whether the CRC-32C at offset 4 matches the structure with that field zeroed."""
    stored = int.from_bytes(structure[4:8], "little")
    return crc32c(structure[:4] + bytes(4) + structure[8:]) == stored


class _Invalid(Exception):
    """A check failed: the finding to reject with."""

    def __init__(self, code: FindingCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Region:
    """A region table entry, or the log: ``length`` bytes at ``offset``."""

    name: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Metadata:
    """The metadata items this plugin uses."""

    block_size: int
    flags: int
    disk_size: int
    logical_sector: int
    physical_sector: int


@hookimpl
def importhooks_inspect(context: ImportContext) -> None:
    if context.facts.get("disk_format") != "vhdx":
        return
    try:
        _check(context)
    except _Invalid as bad:
        context.reject(bad.code, detail=bad.detail)


def _check(context: ImportContext) -> None:
    size = context.data.size
    if size < HEADER_SECTION or context.data.read_at(0, 8) != FILE_SIGNATURE:
        raise _Invalid(HEADER_INVALID, f"file of {size} bytes: no complete 1 MiB header section")
    log = _headers(context)
    regions = _region_table(context)
    _check_layout([log, *regions.values()] if log.length else list(regions.values()), size)
    metadata = _metadata(context, regions["metadata"])
    _check_bat(context, metadata, regions, log)


def _headers(context: ImportContext) -> Region:
    """Both headers valid, no pending log; the current header's log area."""
    parsed = []
    for number, offset in enumerate(HEADER_OFFSETS, start=1):
        raw = context.data.read_at(offset, HEADER_SIZE)
        (signature, _crc, sequence, _file_guid, _data_guid, log_guid, log_version, version, log_length,
         log_offset) = _HEADER.unpack_from(raw)
        if signature != HEADER_SIGNATURE or not checksum_ok(raw):
            raise _Invalid(HEADER_INVALID, f"header {number}: bad signature or CRC-32C")
        if version != 1 or log_version != 0:
            raise _Invalid(HEADER_INVALID, f"header {number}: version {version}, log version {log_version}")
        if log_guid != ZERO_GUID:
            raise _Invalid(LOG_PENDING, f"header {number}: log GUID {uuid.UUID(bytes_le=log_guid)}")
        parsed.append((sequence, raw, Region("log", log_offset, log_length)))
    (seq1, raw1, log1), (seq2, raw2, log2) = parsed
    if seq1 == seq2 and raw1 != raw2:
        raise _Invalid(HEADER_INVALID, f"both headers have sequence number {seq1} but differ")
    return log1 if seq1 > seq2 else log2


def _region_table(context: ImportContext) -> dict[str, Region]:
    """Both region tables valid and identical; the BAT and metadata regions."""
    raw, copy = (context.data.read_at(offset, REGION_TABLE_SIZE) for offset in REGION_TABLE_OFFSETS)
    signature, _crc, count = _REGION_HEADER.unpack_from(raw)
    if signature != REGION_SIGNATURE or not checksum_ok(raw):
        raise _Invalid(REGION_INVALID, "region table 1: bad signature or CRC-32C")
    if copy != raw:  # so its signature and CRC-32C are right too
        raise _Invalid(REGION_INVALID, "region table 2 differs from region table 1")
    if count > MAX_TABLE_ENTRIES:
        raise _Invalid(REGION_INVALID, f"{count} region table entries, limit {MAX_TABLE_ENTRIES}")
    found: dict[str, Region] = {}
    seen: set[bytes] = set()
    for index in range(count):
        guid, offset, length, flags = _REGION_ENTRY.unpack_from(raw, 16 + 32 * index)
        if guid in seen:
            raise _Invalid(REGION_INVALID, f"region {uuid.UUID(bytes_le=guid)} listed twice")
        seen.add(guid)
        name = {BAT_REGION: "bat", METADATA_REGION: "metadata"}.get(guid)
        if name is None:
            if flags & REGION_REQUIRED:
                raise _Invalid(REGION_UNKNOWN, f"unknown required region {uuid.UUID(bytes_le=guid)}")
            name = f"region {uuid.UUID(bytes_le=guid)}"
        found[name] = Region(name, offset, length)
    if "bat" not in found or "metadata" not in found:
        raise _Invalid(REGION_INVALID, f"no {'BAT' if 'bat' not in found else 'metadata'} region")
    return found


def _check_layout(areas: list[Region], size: int) -> None:
    """Every region and the log: aligned, after the header section, inside the file, apart."""
    for area in areas:
        if (area.offset % ALIGNMENT or area.length % ALIGNMENT or not area.length or area.offset < HEADER_SECTION
                or area.offset + area.length > size):
            raise _Invalid(REGION_INVALID, f"{area.name}: {area.length} bytes at {area.offset:#x}, file of {size}")
    ordered = sorted(areas, key=lambda area: area.offset)
    for first, second in itertools.pairwise(ordered):
        if second.offset < first.offset + first.length:
            raise _Invalid(REGION_INVALID, f"{first.name} and {second.name} overlap")


def _metadata(context: ImportContext, region: Region) -> Metadata:
    """The metadata table and the required items; sets the facts; rejects differencing disks."""
    raw = context.data.read_at(region.offset, METADATA_TABLE_SIZE)
    signature, _reserved, count = _METADATA_HEADER.unpack_from(raw)
    if signature != METADATA_SIGNATURE or count > MAX_TABLE_ENTRIES:
        raise _Invalid(METADATA_INVALID, f"metadata table: signature {signature!r}, {count} entries")
    items: dict[bytes, tuple[int, int]] = {}
    seen: set[tuple[bytes, int]] = set()
    spans: list[tuple[int, int]] = []
    for index in range(count):
        guid, offset, length, flags = _METADATA_ENTRY.unpack_from(raw, 32 + 32 * index)
        name = uuid.UUID(bytes_le=guid)
        if (guid, flags & ITEM_IS_USER) in seen:
            raise _Invalid(METADATA_INVALID, f"metadata item {name} listed twice")
        seen.add((guid, flags & ITEM_IS_USER))
        if length and (offset < METADATA_TABLE_SIZE or length > MAX_ITEM_LENGTH
                       or offset + length > region.length):
            raise _Invalid(METADATA_INVALID, f"metadata item {name}: {length} bytes at {offset:#x}")
        if not length and offset:
            raise _Invalid(METADATA_INVALID, f"metadata item {name}: empty, at {offset:#x}")
        if length:
            spans.append((offset, offset + length))
        if flags & ITEM_IS_USER:
            known = False
        elif guid == PARENT_LOCATOR:
            raise _Invalid(DIFFERENCING_DISK, "parent locator metadata item")
        else:
            known = guid in REQUIRED_ITEMS
            if known:
                items[guid] = (offset, length)
        if not known and flags & ITEM_IS_REQUIRED:
            raise _Invalid(METADATA_UNKNOWN, f"unknown required metadata item {name}")
    spans.sort()
    for (_start, end), (start, _end) in itertools.pairwise(spans):
        if start < end:
            raise _Invalid(METADATA_INVALID, f"metadata items overlap at {start:#x}")
    values: dict[bytes, bytes] = {}
    for guid, want in REQUIRED_ITEMS.items():
        offset, length = items.get(guid, (0, 0))
        if length != want:
            raise _Invalid(METADATA_INVALID, f"metadata item {uuid.UUID(bytes_le=guid)}: {length} bytes, "
                                             f"expected {want}")
        values[guid] = context.data.read_at(region.offset + offset, length)
    block_size, flags = struct.unpack("<II", values[FILE_PARAMETERS])
    (disk_size,) = struct.unpack("<Q", values[VIRTUAL_DISK_SIZE])
    (logical,) = struct.unpack("<I", values[LOGICAL_SECTOR_SIZE])
    (physical,) = struct.unpack("<I", values[PHYSICAL_SECTOR_SIZE])
    metadata = Metadata(block_size, flags, disk_size, logical, physical)
    _check_parameters(context, metadata)
    return metadata


def _check_parameters(context: ImportContext, metadata: Metadata) -> None:
    if metadata.flags & PARAM_HAS_PARENT:
        context.facts["subformat"] = "differencing"
        raise _Invalid(DIFFERENCING_DISK, "file parameters: has parent")
    context.facts["subformat"] = "fixed" if metadata.flags & PARAM_LEAVE_BLOCKS_ALLOCATED else "dynamic"
    block = metadata.block_size
    if block & (block - 1) or not MIN_BLOCK_SIZE <= block <= MAX_BLOCK_SIZE:
        raise _Invalid(BLOCK_SIZE, f"block size {block}")
    context.facts["cluster_size"] = block
    if metadata.logical_sector not in SECTOR_SIZES or metadata.physical_sector not in SECTOR_SIZES:
        raise _Invalid(METADATA_INVALID, f"sector sizes: logical {metadata.logical_sector}, "
                                         f"physical {metadata.physical_sector}")
    size = metadata.disk_size
    if size % metadata.logical_sector or size > MAX_DISK_SIZE:
        raise _Invalid(METADATA_INVALID, f"virtual disk size {size}: not a multiple of {metadata.logical_sector} "
                                         f"or over {MAX_DISK_SIZE}")
    detected = context.facts.get("virtual_size")
    if size != detected:
        raise _Invalid(METADATA_INVALID, f"virtual disk size {size}, oslo.utils read {detected}")


def _check_bat(context: ImportContext, metadata: Metadata, regions: dict[str, Region], log: Region) -> None:
    """The BAT's size, and the state and place of every entry."""
    block = metadata.block_size
    chunk_ratio = SECTORS_PER_CHUNK * metadata.logical_sector // block
    data_blocks = -(-metadata.disk_size // block)
    entries = data_blocks + (data_blocks - 1) // chunk_ratio if data_blocks else 0
    cap = context.options(SECTION)["max_bat_entries"]
    if entries > cap:
        raise _Invalid(BAT_INVALID, f"{entries} BAT entries needed, limit {cap} ([plugin.vhdx] max_bat_entries)")
    bat = regions["bat"]
    if bat.length < 8 * entries:
        raise _Invalid(BAT_INVALID, f"BAT region of {bat.length} bytes, {entries} entries needed")
    if context.has_errors():
        return  # already rejected: spare the scan
    size = context.data.size
    metadata_areas = [(area.offset, area.offset + area.length) for area in (log, *regions.values()) if area.length]
    blocks: list[tuple[int, int]] = []
    for chunk_at in range(0, 8 * entries, BAT_CHUNK):
        raw = context.data.read_at(bat.offset + chunk_at, min(BAT_CHUNK, 8 * entries - chunk_at))
        for index, (entry,) in enumerate(struct.iter_unpack("<Q", raw), start=chunk_at // 8):
            if not entry:
                continue
            state, offset = entry & STATE_MASK, entry & OFFSET_MASK
            group, position = divmod(index, chunk_ratio + 1)
            if position == chunk_ratio:  # a sector bitmap entry
                if state == BITMAP_NOT_PRESENT:
                    continue
                if state != BITMAP_PRESENT:
                    raise _Invalid(BAT_INVALID, f"BAT entry {index}: sector bitmap state {state}")
                length = MiB
            else:
                if state in PAYLOAD_ABSENT_STATES:
                    continue
                if state != PAYLOAD_FULLY_PRESENT:
                    raise _Invalid(BAT_INVALID, f"BAT entry {index}: payload state {state}")
                number = group * chunk_ratio + position
                length = min(block, metadata.disk_size - number * block)  # the last block may be partial
            end = offset + length
            if offset < HEADER_SECTION or end > size or any(offset < b and a < end for a, b in metadata_areas):
                raise _Invalid(BAT_INVALID, f"BAT entry {index}: block at {offset:#x}..{end:#x}, file of {size}")
            blocks.append((offset, end))
    blocks.sort()
    for (first, first_end), (second, _end) in itertools.pairwise(blocks):
        if second < first_end:
            raise _Invalid(BAT_INVALID, f"blocks at {first:#x} and {second:#x} overlap")
