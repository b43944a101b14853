"""Checks VMDK images: one self-contained sparse file that refers to nothing outside it (``inspect``).

Accepted: a hosted sparse extent (``KDMV``) whose embedded descriptor says
``monolithicSparse`` or ``streamOptimized`` and lists one ``SPARSE`` extent, itself.
Rejected: descriptor-only files (``monolithicFlat``, ``twoGbMaxExtent*``, ``vmfs*``),
extra or non-sparse extents (``FLAT "/etc/passwd"``), extent names that are paths,
parent links, a zero capacity (qemu then follows the embedded descriptor's extents),
and header fields or tables out of range. Runs after ``disk_format``, only on data it
detected as ``vmdk``. Every limit is a constant below (sizes in 512-byte sectors).
Facts: ``subformat`` (the createType), ``format_version``, ``cluster_size`` and
``compressed_clusters``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from importhooks import FindingCode, ImportContext, hookimpl

SECTOR = 512
MAGIC = b"KDMV"
#: The hosted sparse extent header after the magic (VMware's ``SparseExtentHeader``).
HEADER = struct.Struct("<IIQQQQIQQQB4sH")
GD_AT_END = 0xFFFFFFFFFFFFFFFF  # stream-optimized: the grain directory is found through the footer
FLAG_NL_DETECT, FLAG_RGD, FLAG_ZERO_GRAIN = 1 << 0, 1 << 1, 1 << 2
FLAG_COMPRESSED, FLAG_MARKERS = 1 << 16, 1 << 17
KNOWN_FLAGS = FLAG_NL_DETECT | FLAG_RGD | FLAG_ZERO_GRAIN | FLAG_COMPRESSED | FLAG_MARKERS
NEWLINE_CHECK = b"\n \r\n"  # damaged by a text-mode transfer if FLAG_NL_DETECT is set and these differ
COMPRESS_NONE, COMPRESS_DEFLATE = 0, 1
MARKER_EOS, MARKER_FOOTER = 0, 3
VERSIONS = (1, 2, 3)
DESCRIPTOR_SECTOR = 1  # where qemu and oslo.utils look for the embedded descriptor, whatever the header says
#: Largest embedded descriptor, just under qemu's 1 MiB cap (qemu writes 20 sectors).
DESCRIPTOR_MAX_SECTORS = 2047
#: Most lines, and longest line in characters, of a descriptor (real ones: about 20 lines of < 80).
DESCRIPTOR_MAX_LINES, DESCRIPTOR_MAX_LINE_LENGTH = 1000, 1024
#: Grain size range, a power of two: 4 KiB to 1 MiB (qemu, VMware and VirtualBox write 128: 64 KiB).
GRAIN_MIN_SECTORS, GRAIN_MAX_SECTORS = 8, 2048
#: Grain table entries per table: the only value any writer uses.
NUM_GTES_PER_GT = 512
#: Longest extent file name, in characters.
EXTENT_NAME_MAX = 255
#: Bytes of a descriptor-only file read to name, in the detail, what it refers to.
DESCRIPTOR_ONLY_PEEK = 64 << 10
#: createType values accepted, lower case, with their usual spelling (the ``subformat`` fact).
CREATE_TYPES = {"monolithicsparse": "monolithicSparse", "streamoptimized": "streamOptimized"}
HEADER_KEYS = ("version", "encoding", "cid", "parentcid", "isnativesnapshot", "createtype")
ACCESS_MODES = ("RW", "RDONLY", "NOACCESS")
NO_PARENT_CID = "ffffffff"
_EXTENT = re.compile(r'(\S+)\s+(\S+)\s+(\S+)(?:\s+"([^"]*)")?(?:\s+(\S+))?')
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.]*")
_NAME_CHARS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9 ._+()\[\]{}~,@#!&'=%-]*")
_OTHER_FILE_KIND = re.compile(r"-(flat|delta|ctk|s[0-9]{3}|f[0-9]{3})\.vmdk$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _code(name: str, summary: str, help_text: str) -> FindingCode:
    return FindingCode(f"vmdk.{name}", summary, help_text)


DESCRIPTOR_ONLY = _code(
    "descriptor_only", "The VMDK file is only a descriptor; its data is in other files.",
    "Descriptor-only VMDKs (monolithicFlat, twoGbMaxExtent*, vmfs*) name extent files that the hypervisor "
    "would open on the host. Upload one monolithicSparse or streamOptimized file ('qemu-img convert -O vmdk "
    "-o subformat=streamOptimized').")
TRUNCATED = _code(
    "truncated", "The VMDK image is truncated.",
    "The file ends before its header, descriptor, grain directory or grain data (as the header places "
    "them); the upload is incomplete or the header damaged.")
HEADER_INVALID = _code(
    "header", "The VMDK image's header is invalid.",
    "A sparse extent header field is out of range: version, flags, newline check bytes, capacity (zero makes "
    "qemu follow the embedded descriptor's extents), grain size or grain table size. The detail names it.")
DESCRIPTOR_LOCATION = _code(
    "descriptor_location", "The VMDK image's descriptor is missing or not where it must be.",
    "The embedded descriptor must start at sector 1 and not be empty; a sparse extent without one is a "
    "piece of a multi-file disk (twoGbMaxExtentSparse).")
DESCRIPTOR_SIZE = _code(
    "descriptor_size", "The VMDK image's descriptor is too large.",
    f"The header declares an embedded descriptor of more than {DESCRIPTOR_MAX_SECTORS} sectors (about 1 MiB, "
    "qemu's cap); real ones use 20.")
TABLE_LOCATION = _code(
    "table_location", "The VMDK image's grain directory is misplaced.",
    "The grain directory (or its redundant copy) overlaps the header or descriptor, or is marked 'at end' "
    "in an image that is not stream-optimized.")
FOOTER_MISMATCH = _code(
    "footer_mismatch", "The VMDK image's footer does not match its header.",
    "A stream-optimized VMDK with its grain directory at the end has a footer header that qemu uses instead "
    "of the first one; it must be present, well-formed and describe the same disk (capacity, grain size ...).")
DESCRIPTOR_SYNTAX = _code(
    "descriptor_syntax", "The VMDK image's descriptor could not be parsed safely.",
    "The embedded descriptor is not plain ASCII text of known lines: unknown or repeated keys, a keyword "
    "hidden in a comment or value, control characters, too many or too long lines, or data after its end.")
CREATE_TYPE = _code(
    "create_type", "The VMDK subformat is not accepted; use monolithicSparse or streamOptimized.",
    "The descriptor's createType is missing or names a multi-file or host-device layout (monolithicFlat, "
    "twoGbMaxExtent*, vmfs*, partitionedDevice, custom ...).")
EXTENTS = _code(
    "extents", "The VMDK image must have exactly one data extent, in the image itself.",
    "The descriptor lists no extent, several, or one that is not readable. A second extent smuggled into the "
    "embedded descriptor of a sparse VMDK is how host files get attached to the disk.")
EXTENT_TYPE = _code(
    "extent_type", "The VMDK image has an extent type that is not accepted.",
    "Only SPARSE extents are accepted; FLAT, VMFS, VMFSSPARSE, VMFSRDM, VMFSRAW, ZERO, SESPARSE and others "
    "map other files or devices into the disk.")
FILE_REFERENCE = _code(
    "file_reference", "The VMDK image refers to another file.",
    "An extent file name is a path, a protocol (json:, nbd:), names a flat, split or change-tracking file, "
    "or the descriptor has a changeTrackPath. The image must name only itself.")
CAPACITY_MISMATCH = _code(
    "capacity_mismatch", "The VMDK image's descriptor and header disagree on the disk size.",
    "The sizes of the descriptor's extents do not add up to the header's capacity.")
PARENT = _code(
    "parent", "The VMDK image is a linked clone; only self-contained images are accepted.",
    "The descriptor has a parentFileNameHint (qemu opens it as a backing file, even from a comment) or a "
    "parentCID other than ffffffff. Consolidate the disk first.")
SUBFORMAT_MISMATCH = _code(
    "subformat_mismatch", "The VMDK image's subformat does not match its header.",
    "streamOptimized requires deflate-compressed grains; monolithicSparse requires uncompressed grains and "
    "its grain directory in the header.")
CODES = (DESCRIPTOR_ONLY, TRUNCATED, HEADER_INVALID, DESCRIPTOR_LOCATION, DESCRIPTOR_SIZE, TABLE_LOCATION,
         FOOTER_MISMATCH, DESCRIPTOR_SYNTAX, CREATE_TYPE, EXTENTS, EXTENT_TYPE, FILE_REFERENCE, CAPACITY_MISMATCH,
         PARENT, SUBFORMAT_MISMATCH)


@hookimpl
def importhooks_finding_codes() -> tuple[FindingCode, ...]:
    """The ``vmdk.*`` codes (``vmdk.descriptor`` and ``vmdk.footer`` are ``disk_format``'s)."""
    return CODES


class Problem(Exception):
    """A finding that ends the parse: later structures cannot be trusted."""

    def __init__(self, code: FindingCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class SparseHeader:
    """The fields of a hosted sparse extent header; offsets and sizes in sectors."""

    version: int
    flags: int
    capacity: int
    grain_size: int
    descriptor_offset: int
    descriptor_size: int
    num_gtes_per_gt: int
    rgd_offset: int
    gd_offset: int
    overhead: int
    newline_check: bytes
    compress_algorithm: int

    @classmethod
    def parse(cls, sector: bytes) -> SparseHeader:
        """Parse one 512-byte header sector (``KDMV`` first)."""
        if len(sector) < SECTOR:
            raise Problem(TRUNCATED, f"header: {len(sector)} of {SECTOR} bytes")
        (version, flags, capacity, grain, desc_off, desc_size, gtes, rgd, gd, overhead, _unclean, newline,
         compress) = HEADER.unpack_from(sector, len(MAGIC))
        return cls(version, flags, capacity, grain, desc_off, desc_size, gtes, rgd, gd, overhead, newline, compress)

    def gd_sectors(self) -> int:
        """Sectors of one grain directory (4-byte entries, one per grain table)."""
        tables = -(-self.capacity // (self.num_gtes_per_gt * self.grain_size))
        return -(-tables * 4 // SECTOR)


def check_header(header: SparseHeader, file_sectors: int) -> None:
    """Raise :class:`Problem` for the first header field that is out of range."""
    if header.version not in VERSIONS:
        raise Problem(HEADER_INVALID, f"version {header.version}")
    if header.flags & ~KNOWN_FLAGS:
        raise Problem(HEADER_INVALID, f"unknown flags {header.flags & ~KNOWN_FLAGS:#x}")
    if header.flags & FLAG_NL_DETECT and header.newline_check != NEWLINE_CHECK:
        raise Problem(HEADER_INVALID, f"newline check bytes {header.newline_check!r} (text-mode transfer?)")
    if header.compress_algorithm not in (COMPRESS_NONE, COMPRESS_DEFLATE):
        raise Problem(HEADER_INVALID, f"compressAlgorithm {header.compress_algorithm}")
    if header.capacity == 0:
        raise Problem(HEADER_INVALID, "capacity 0: qemu would open the embedded descriptor's extents")
    grain = header.grain_size
    if not GRAIN_MIN_SECTORS <= grain <= GRAIN_MAX_SECTORS or grain & (grain - 1):
        raise Problem(HEADER_INVALID, f"grainSize {grain} sectors")
    if header.num_gtes_per_gt != NUM_GTES_PER_GT:
        raise Problem(HEADER_INVALID, f"numGTEsPerGT {header.num_gtes_per_gt}")
    if header.descriptor_offset == 0 or header.descriptor_size == 0:
        raise Problem(DESCRIPTOR_LOCATION, "no embedded descriptor (an extent of a multi-file disk?)")
    if header.descriptor_size > DESCRIPTOR_MAX_SECTORS:
        raise Problem(DESCRIPTOR_SIZE, f"descriptorSize {header.descriptor_size} sectors")
    if header.descriptor_offset != DESCRIPTOR_SECTOR:
        raise Problem(DESCRIPTOR_LOCATION, f"descriptorOffset {header.descriptor_offset}")
    if header.descriptor_offset + header.descriptor_size > file_sectors:
        raise Problem(TRUNCATED, f"descriptor ends at sector {header.descriptor_offset + header.descriptor_size}, "
                                 f"file has {file_sectors}")
    if header.overhead > file_sectors:
        raise Problem(TRUNCATED, f"grain data starts at sector {header.overhead}, file has {file_sectors}")


def check_tables(header: SparseHeader, file_sectors: int, what: str = "header") -> None:
    """The grain directory and its redundant copy lie after the descriptor and inside the file."""
    tables = [("gdOffset", header.gd_offset)]
    if header.flags & FLAG_RGD:
        tables.append(("rgdOffset", header.rgd_offset))
    first = header.descriptor_offset + header.descriptor_size
    for name, offset in tables:
        if offset < first:
            raise Problem(TABLE_LOCATION, f"{what} {name} {offset}: overlaps the header or descriptor")
        if offset + header.gd_sectors() > file_sectors:
            raise Problem(TRUNCATED, f"{what} {name} {offset}: file has {file_sectors} sectors")


def check_footer(header: SparseHeader, tail: bytes, file_size: int) -> SparseHeader:
    """Check a stream-optimized image's footer (marker, header copy, end-of-stream) and return its header."""
    if header.compress_algorithm != COMPRESS_DEFLATE:
        raise Problem(TABLE_LOCATION, "grain directory at end in an image that is not stream-optimized")
    if file_size % SECTOR or len(tail) != 3 * SECTOR or file_size < 4 * SECTOR:
        raise Problem(FOOTER_MISMATCH, f"no room for a footer in {file_size} bytes")
    marker, copy, eos = tail[:SECTOR], tail[SECTOR : 2 * SECTOR], tail[2 * SECTOR :]
    _value, size, kind = struct.unpack_from("<QII", marker)
    if size != 0 or kind != MARKER_FOOTER or marker[16:].count(0) != SECTOR - 16:
        raise Problem(FOOTER_MISMATCH, "footer marker invalid")
    if eos.count(0) != SECTOR:
        raise Problem(FOOTER_MISMATCH, "end-of-stream marker invalid")
    if not copy.startswith(MAGIC):
        raise Problem(FOOTER_MISMATCH, "footer has no KDMV header")
    footer = SparseHeader.parse(copy)
    for field in ("version", "flags", "capacity", "grain_size", "descriptor_offset", "descriptor_size",
                  "num_gtes_per_gt", "overhead", "newline_check", "compress_algorithm"):
        if getattr(footer, field) != getattr(header, field):
            raise Problem(FOOTER_MISMATCH, f"{field}: header {getattr(header, field)}, footer {getattr(footer, field)}")
    if footer.gd_offset == GD_AT_END:
        raise Problem(FOOTER_MISMATCH, "footer points at another footer")
    check_tables(footer, file_size // SECTOR - 3, "footer")
    return footer


@dataclass
class Descriptor:
    """What the descriptor text says: header keys (lower case) and extent lines."""

    keys: dict[str, str]
    extents: list[tuple[str, str, str, str | None, str | None]]  # access, size, type, name, offset
    problems: list[tuple[FindingCode, str]]


def embedded_text(region: bytes) -> bytes:
    """The descriptor text of an embedded descriptor region: up to its NUL, with only NULs after it."""
    end = region.find(b"\0")
    if end < 0:
        raise Problem(DESCRIPTOR_SYNTAX, "descriptor not NUL-terminated within its sectors")
    if region.count(0, end) != len(region) - end:
        raise Problem(DESCRIPTOR_SYNTAX, f"data after the descriptor's end at byte {end}")
    if not region[:end].strip():
        raise Problem(DESCRIPTOR_LOCATION, "empty embedded descriptor (an extent of a multi-file disk?)")
    return region[:end]


def parse_descriptor(raw: bytes) -> Descriptor:
    """Parse descriptor text; every line must be understood (raises :class:`Problem` if it cannot be read)."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise Problem(DESCRIPTOR_SYNTAX, f"not ASCII at byte {exc.start}") from None
    lines = text.split("\n")
    if len(lines) > DESCRIPTOR_MAX_LINES:
        raise Problem(DESCRIPTOR_SYNTAX, f"{len(lines)} lines, limit {DESCRIPTOR_MAX_LINES}")
    result = Descriptor({}, [], [])
    for number, full in enumerate(lines, 1):
        line = full.removesuffix("\r").strip(" \t")
        where = f"line {number} {line[:80]!r}"
        if len(line) > DESCRIPTOR_MAX_LINE_LENGTH or _CONTROL.search(line):
            raise Problem(DESCRIPTOR_SYNTAX, f"line {number}: too long or control characters")
        if not line or line.startswith("#"):
            continue
        if line[:4].lower() == "ddb.":
            if "=" not in line:
                result.problems.append((DESCRIPTOR_SYNTAX, f"{where}: ddb line without '='"))
            continue
        if line.split(None, 1)[0].upper() in ACCESS_MODES:
            match = _EXTENT.fullmatch(line)
            if match is None:
                result.problems.append((DESCRIPTOR_SYNTAX, f"{where}: malformed extent line"))
            else:
                access, size, kind, name, offset = match.groups()
                result.extents.append((access.upper(), size, kind.upper(), name, offset))
            continue
        key, equals, value = line.partition("=")
        key = key.strip()
        if not equals or not _KEY.fullmatch(key):
            result.problems.append((DESCRIPTOR_SYNTAX, f"{where}: unrecognised line"))
        elif key.lower() == "parentfilenamehint":
            result.problems.append((PARENT, f"{where}: parentFileNameHint"))
        elif key.lower() == "changetrackpath":
            result.problems.append((FILE_REFERENCE, f"{where}: changeTrackPath"))
        elif key.lower() not in HEADER_KEYS:
            result.problems.append((DESCRIPTOR_SYNTAX, f"{where}: unknown key"))
        elif key.lower() in result.keys:
            result.problems.append((DESCRIPTOR_SYNTAX, f"{where}: repeated key"))
        else:
            result.keys[key.lower()] = value.strip().strip('"')
    lowered = text.lower()
    if "parentfilenamehint" in lowered and not any(code is PARENT for code, _ in result.problems):
        result.problems.append((PARENT, "parentFileNameHint in a comment or value (qemu still follows it)"))
    for key in ("createtype", "parentcid"):
        if lowered.count(key) > (key in result.keys):
            result.problems.append((DESCRIPTOR_SYNTAX, f"{key!r} appears outside its header line"))
    return result


def name_problem(name: str | None) -> str | None:
    """Why an extent name is not the plain file name a single-file VMDK gives itself, or ``None``."""
    if not name:
        return "no file name"
    if len(name) > EXTENT_NAME_MAX:
        return f"name of {len(name)} characters"
    if "/" in name or "\\" in name or ".." in name:
        return "a path"
    if ":" in name:
        return "a protocol or drive prefix"
    if not _NAME_CHARS.fullmatch(name) or name.endswith(" "):
        return "not a plain file name"
    if _OTHER_FILE_KIND.search(name):
        return "the name of a flat, split, delta or change-tracking file"
    return None


def check_descriptor(descriptor: Descriptor, header: SparseHeader) -> list[tuple[FindingCode, str]]:
    """Every problem of a parsed embedded descriptor, against its header."""
    problems = list(descriptor.problems)
    create_type = descriptor.keys.get("createtype")
    if create_type is None or create_type.lower() not in CREATE_TYPES:
        problems.append((CREATE_TYPE, f"createType {create_type!r}"))
    elif create_type.lower() == "streamoptimized" and header.compress_algorithm != COMPRESS_DEFLATE:
        problems.append((SUBFORMAT_MISMATCH, "streamOptimized with uncompressed grains"))
    elif create_type.lower() == "monolithicsparse" and (
            header.compress_algorithm != COMPRESS_NONE or header.gd_offset == GD_AT_END):
        problems.append((SUBFORMAT_MISMATCH, "monolithicSparse with compressed grains or a footer"))
    parent_cid = descriptor.keys.get("parentcid", NO_PARENT_CID)
    if parent_cid.lower() != NO_PARENT_CID:
        problems.append((PARENT, f"parentCID {parent_cid[:16]!r}"))
    extents = descriptor.extents
    if len(extents) != 1:
        problems.append((EXTENTS, f"{len(extents)} extent lines: {[e[:3] for e in extents[:8]]!r}"))
    total: int | None = 0
    for number, (access, size, kind, name, offset) in enumerate(extents, 1):
        if access == "NOACCESS":
            problems.append((EXTENTS, f"extent {number}: NOACCESS"))
        if kind != "SPARSE":
            problems.append((EXTENT_TYPE, f"extent {number}: type {kind[:16]!r}"))
        elif offset is not None:
            problems.append((DESCRIPTOR_SYNTAX, f"extent {number}: SPARSE extent with an offset {offset[:24]!r}"))
        why = name_problem(name)
        if why is not None:
            problems.append((FILE_REFERENCE, f"extent {number}: {why}: {(name or '')[:80]!r}"))
        if not size.isdigit() or len(size) > 20 or int(size) == 0:
            problems.append((DESCRIPTOR_SYNTAX, f"extent {number}: size {size[:24]!r}"))
            total = None
        elif total is not None:
            total += int(size)
    if total is not None and extents and total != header.capacity:
        problems.append((CAPACITY_MISMATCH, f"extents {total} sectors, header capacity {header.capacity}"))
    return problems


def describe_descriptor_file(raw: bytes) -> str:
    """Operator detail for a descriptor-only file: its createType and extent types, escaped."""
    try:
        descriptor = parse_descriptor(raw)
    except Problem as problem:
        return f"descriptor-only file, unparseable: {problem.detail}"
    kinds = [kind[:16] for _access, _size, kind, _name, _offset in descriptor.extents[:8]]
    create_type = descriptor.keys.get("createtype")
    return (f"descriptor-only file: createType {create_type[:64] if create_type else None!r}, "
            f"{len(descriptor.extents)} extent(s) of types {kinds!r}")


@hookimpl
def importhooks_inspect(context: ImportContext) -> None:
    """Check a layer ``disk_format`` detected as ``vmdk``: header, footer, embedded descriptor."""
    if context.facts.get("disk_format") != "vmdk":
        return
    data = context.data
    head = data.read_at(0, SECTOR)
    if not head.startswith(MAGIC):
        raw = data.read_at(0, DESCRIPTOR_ONLY_PEEK)
        context.report(DESCRIPTOR_ONLY, detail=describe_descriptor_file(raw.split(b"\0", 1)[0]))
        return
    try:
        header = SparseHeader.parse(head)
        check_header(header, data.size // SECTOR)
        if header.gd_offset == GD_AT_END:
            check_footer(header, data.read_at(max(0, data.size - 3 * SECTOR), 3 * SECTOR), data.size)
        else:
            check_tables(header, data.size // SECTOR)
        context.facts.update(format_version=header.version, cluster_size=header.grain_size * SECTOR,
                             compressed_clusters=header.compress_algorithm == COMPRESS_DEFLATE)
        region = data.read_at(header.descriptor_offset * SECTOR, header.descriptor_size * SECTOR)
        descriptor = parse_descriptor(embedded_text(region))
    except Problem as problem:
        context.report(problem.code, detail=problem.detail)
        return
    problems = check_descriptor(descriptor, header)
    if not problems:
        context.facts["subformat"] = CREATE_TYPES[descriptor.keys["createtype"].lower()]
    for code in dict.fromkeys(code for code, _detail in problems):
        context.report(code, detail="; ".join(detail for c, detail in problems if c is code)[:1000])
