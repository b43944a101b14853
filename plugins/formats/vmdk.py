"""Checks VMDK images: one self-contained sparse file that refers to nothing outside it (``inspect``).

Accepted: a hosted sparse extent (``KDMV``) whose embedded descriptor says
``monolithicSparse`` or ``streamOptimized`` and lists one ``SPARSE`` extent, itself.
Rejected: descriptor-only files (``monolithicFlat``, ``twoGbMaxExtent*``, ``vmfs*``),
extra or non-sparse extents (``FLAT "/etc/passwd"``), extent names that are paths,
parent links, a zero capacity (qemu then follows the embedded descriptor's extents),
header fields qemu refuses, and tables or data outside the file. A header field that
qemu reads without harm but no usual writer sets is a warning (``vmdk.header_unusual``,
``vmdk.descriptor_size``). A stream-optimized image's grain markers must place every
grain where its grain tables do (:mod:`._vmdk_grains`). Runs after ``disk_format``,
only on data it detected as ``vmdk``. Every limit is a constant below (sizes in
512-byte sectors) or the ``max_grains`` option; the descriptor text is parsed in
:mod:`._vmdk_descriptor`. Facts: ``subformat`` (the createType),
``format_version``, ``cluster_size`` and ``compressed_clusters``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from importhooks import FindingCode, ImportContext, PluginOption, PluginOptions, Severity, hookimpl

from ._vmdk_descriptor import (
    CAPACITY_MISMATCH,
    CREATE_TYPE,
    CREATE_TYPES,
    DESCRIPTOR_LOCATION,
    DESCRIPTOR_SYNTAX,
    EXTENT_TYPE,
    EXTENTS,
    FILE_REFERENCE,
    PARENT,
    SUBFORMAT_MISMATCH,
    Problem,
    check_descriptor,
    describe_descriptor_file,
    parse_descriptor,
)
from ._vmdk_grains import GrainError, disagreement, marker_map, table_map

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
#: Most sectors of embedded descriptor read, just under qemu's and oslo.utils' 1 MiB cap (qemu writes 20);
#: a larger descriptorSize is a warning, and the text must end (NUL) within them.
DESCRIPTOR_MAX_SECTORS = 2047
#: Longest leftover of qemu's CID rewrite accepted after the descriptor's NUL: an 8-digit CID rewritten
#: with 1 digit leaves the old text's last 6 bytes (see ``embedded_text``).
DESCRIPTOR_TAIL_MAX = 7
#: Usual grain sizes, a power of two: 4 KiB to 1 MiB (qemu, VMware and VirtualBox write 128: 64 KiB).
GRAIN_MIN_SECTORS, GRAIN_MAX_SECTORS = 8, 2048
#: Largest grain qemu opens (1 GiB); above it, or 0, qemu refuses the image.
GRAIN_QEMU_MAX_SECTORS = 0x200000
#: Grain table entries per table: the only value any writer uses, and the most qemu opens.
NUM_GTES_PER_GT = 512
#: Bytes of a descriptor-only file read to name, in the detail, what it refers to.
DESCRIPTOR_ONLY_PEEK = 64 << 10


def _code(name: str, summary: str, help_text: str, severity: Severity = Severity.ERROR) -> FindingCode:
    return FindingCode(f"vmdk.{name}", summary, help_text, severity)


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
    "A sparse extent header field qemu or oslo.utils refuses: version other than 1 to 3, a grain size of 0 "
    "or over 1 GiB, 0 or more than 512 grain table entries per table, or a capacity of zero (which makes "
    "qemu follow the embedded descriptor's extents). The detail names it.")
HEADER_UNUSUAL = _code(
    "header_unusual", "The VMDK image's header has unusual values.",
    "A sparse extent header field qemu reads without harm but no usual writer sets: unknown flags, "
    "damaged newline check bytes (a text-mode transfer), an unknown compressAlgorithm (read as "
    "uncompressed), a grain size that is not a power of two from 4 KiB to 1 MiB, fewer than 512 "
    "grain table entries, or a footer in an image without compressed grains. The detail names it.",
    Severity.WARNING)
DESCRIPTOR_SIZE = _code(
    "descriptor_size", "The VMDK image's descriptor area is larger than usual.",
    f"The header's descriptorSize reaches past the grain tables or data, or over {DESCRIPTOR_MAX_SECTORS} "
    "sectors. qemu ignores the field (it reads the text at sector 1 up to its NUL) and the text is checked "
    "up to that NUL, so this is a warning.", Severity.WARNING)
TABLE_LOCATION = _code(
    "table_location", "The VMDK image's grain directory is misplaced.",
    "The grain directory (or its redundant copy) overlaps the header or the descriptor text: the same bytes "
    "would be read as text and as grain table pointers.")
FOOTER_MISMATCH = _code(
    "footer_mismatch", "The VMDK image's footer does not match its header.",
    "A stream-optimized VMDK with its grain directory at the end has a footer header that qemu uses instead "
    "of the first one; it must be present, well-formed and describe the same disk (capacity, grain size ...).")
GRAIN_MARKERS = _code(
    "grain_markers", "The stream-optimized VMDK's grain markers and grain tables describe different disks.",
    "qemu finds each grain through the grain tables; a streaming reader (an OVF import) places each grain at "
    "the LBA its marker names. A marker naming another LBA than the table entry that points at it, a grain no "
    "table points at, or a marker stream that cannot be followed to its end gives the two readers different "
    "disks. The detail names the first LBA where they differ.")
OPTIONS = PluginOptions("vmdk", (
    PluginOption("max_grains", 4 << 20, "Most allocated grains of a stream-optimized VMDK whose tables and "
                 "markers are compared (4 Mi: 256 GiB of 64 KiB grains); more is vmdk.grain_markers."),
))
CODES = (DESCRIPTOR_ONLY, TRUNCATED, HEADER_INVALID, HEADER_UNUSUAL, DESCRIPTOR_LOCATION, DESCRIPTOR_SIZE,
         TABLE_LOCATION, FOOTER_MISMATCH, DESCRIPTOR_SYNTAX, CREATE_TYPE, EXTENTS, EXTENT_TYPE, FILE_REFERENCE,
         CAPACITY_MISMATCH, PARENT, SUBFORMAT_MISMATCH, GRAIN_MARKERS)


@hookimpl
def importhooks_finding_codes() -> tuple[FindingCode, ...]:
    """The ``vmdk.*`` codes (``vmdk.descriptor`` and ``vmdk.footer`` are ``disk_format``'s)."""
    return CODES


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    return OPTIONS


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

    def tables(self) -> list[tuple[str, int]]:
        """The grain directory and, when the flag says there is one, its redundant copy."""
        tables = [("gdOffset", self.gd_offset)]
        if self.flags & FLAG_RGD:
            tables.append(("rgdOffset", self.rgd_offset))
        return tables


def check_header(header: SparseHeader, file_sectors: int) -> list[str]:
    """Raise :class:`Problem` for the first field qemu refuses; return what is merely unusual."""
    if header.version not in VERSIONS:
        raise Problem(HEADER_INVALID, f"version {header.version}")
    if header.capacity == 0:
        raise Problem(HEADER_INVALID, "capacity 0: qemu would open the embedded descriptor's extents")
    grain = header.grain_size
    if not 0 < grain <= GRAIN_QEMU_MAX_SECTORS:
        raise Problem(HEADER_INVALID, f"grainSize {grain} sectors")
    if not 0 < header.num_gtes_per_gt <= NUM_GTES_PER_GT:
        raise Problem(HEADER_INVALID, f"numGTEsPerGT {header.num_gtes_per_gt}")
    if header.descriptor_offset == 0 or header.descriptor_size == 0:
        raise Problem(DESCRIPTOR_LOCATION, "no embedded descriptor (an extent of a multi-file disk?)")
    if header.descriptor_offset != DESCRIPTOR_SECTOR:
        raise Problem(DESCRIPTOR_LOCATION, f"descriptorOffset {header.descriptor_offset}")
    if header.overhead > file_sectors:
        raise Problem(TRUNCATED, f"grain data starts at sector {header.overhead}, file has {file_sectors}")
    unusual = []
    if header.flags & ~KNOWN_FLAGS:
        unusual.append(f"unknown flags {header.flags & ~KNOWN_FLAGS:#x}")
    if header.flags & FLAG_NL_DETECT and header.newline_check != NEWLINE_CHECK:
        unusual.append(f"newline check bytes {header.newline_check!r} (text-mode transfer?)")
    if header.compress_algorithm not in (COMPRESS_NONE, COMPRESS_DEFLATE):
        unusual.append(f"compressAlgorithm {header.compress_algorithm} (qemu reads the grains uncompressed)")
    if not GRAIN_MIN_SECTORS <= grain <= GRAIN_MAX_SECTORS or grain & (grain - 1):
        unusual.append(f"grainSize {grain} sectors")
    if header.num_gtes_per_gt != NUM_GTES_PER_GT:
        unusual.append(f"numGTEsPerGT {header.num_gtes_per_gt}")
    return unusual


def check_tables(header: SparseHeader, file_sectors: int, first: int, what: str = "header") -> None:
    """The grain directory and its redundant copy lie at or after sector ``first`` and inside the file."""
    for name, offset in header.tables():
        if offset < first:
            raise Problem(TABLE_LOCATION, f"{what} {name} {offset}: overlaps the header or descriptor")
        if offset + header.gd_sectors() > file_sectors:
            raise Problem(TRUNCATED, f"{what} {name} {offset}: file has {file_sectors} sectors")


def check_footer(header: SparseHeader, tail: bytes, file_size: int) -> SparseHeader:
    """Check the footer qemu reads for a grain directory 'at end' (marker, header copy, end-of-stream)."""
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
    return footer


def embedded_text(region: bytes, padding_end: int) -> bytes:
    """The descriptor text of an embedded descriptor region: up to its NUL, with only NULs after it.

    Only the first ``padding_end`` bytes must be NULs after the text: past them the
    header places tables or grains (a descriptorSize larger than the text needs). One
    exception: when qemu rewrites the CID on its first write to an image and the new
    CID has fewer hex digits, the old text's last bytes stay after the new NUL. Such a
    tail, a suffix of the text of at most ``DESCRIPTOR_TAIL_MAX`` bytes with no line
    break before its end, is too short to hold any key or extent line and is accepted.
    """
    end = region.find(b"\0")
    if end < 0:
        raise Problem(DESCRIPTOR_SYNTAX, f"descriptor not NUL-terminated within its first {len(region)} bytes")
    text = region[:end]
    padding = region[end + 1 : padding_end]
    tail = padding.split(b"\0", 1)[0]
    if tail and (len(tail) > DESCRIPTOR_TAIL_MAX or not text.endswith(tail) or b"\n" in tail[:-1]):
        raise Problem(DESCRIPTOR_SYNTAX, f"data after the descriptor's end at byte {end}")
    if padding.count(0) != len(padding) - len(tail):
        raise Problem(DESCRIPTOR_SYNTAX, f"data after the descriptor's end at byte {end + 1 + len(tail)}")
    if not text.strip():
        raise Problem(DESCRIPTOR_LOCATION, "empty embedded descriptor (an extent of a multi-file disk?)")
    return text


def _inspect_sparse(context: ImportContext, head: bytes) -> list[tuple[FindingCode, str]]:
    """Header, footer, tables and embedded descriptor; raises :class:`Problem` for what ends the parse."""
    data = context.data
    file_sectors = data.size // SECTOR
    header = SparseHeader.parse(head)
    problems: list[tuple[FindingCode, str]] = [(HEADER_UNUSUAL, why) for why in check_header(header, file_sectors)]
    tables = header
    if header.gd_offset == GD_AT_END:
        tables = check_footer(header, data.read_at(max(0, data.size - 3 * SECTOR), 3 * SECTOR), data.size)
        file_sectors -= 3
        if header.compress_algorithm != COMPRESS_DEFLATE:  # qemu and DiscUtils read the footer all the same
            problems.append((HEADER_UNUSUAL, "grain directory at end (a footer) without compressed grains"))
    context.facts.update(format_version=header.version, cluster_size=header.grain_size * SECTOR,
                         compressed_clusters=header.compress_algorithm == COMPRESS_DEFLATE)
    declared = header.descriptor_size
    structures = min([header.overhead, *(offset for _name, offset in tables.tables())])
    if declared > DESCRIPTOR_MAX_SECTORS or DESCRIPTOR_SECTOR + declared > min(structures, file_sectors):
        problems.append((DESCRIPTOR_SIZE, f"descriptorSize {declared} sectors; tables or grains from sector "
                                          f"{structures}, file of {data.size // SECTOR} sectors"))
    region = data.read_at(DESCRIPTOR_SECTOR * SECTOR, min(declared, DESCRIPTOR_MAX_SECTORS) * SECTOR)
    text = embedded_text(region, max(0, structures - DESCRIPTOR_SECTOR) * SECTOR)
    check_tables(tables, file_sectors, DESCRIPTOR_SECTOR + len(text) // SECTOR + 1,
                 "footer" if tables is not header else "header")
    if header.flags & FLAG_MARKERS and header.compress_algorithm == COMPRESS_DEFLATE:
        problems += compare_grains(context, header, tables)
    descriptor = parse_descriptor(text)
    problems += check_descriptor(descriptor, header.capacity, header.compress_algorithm == COMPRESS_DEFLATE,
                                 header.gd_offset == GD_AT_END)
    if not any(code.severity is Severity.ERROR for code, _detail in problems):
        create_type = descriptor.keys["createtype"].lower()
        if SUBFORMAT_MISMATCH in (code for code, _detail in problems):  # qemu goes by the grains
            create_type = "streamoptimized" if header.compress_algorithm == COMPRESS_DEFLATE else "monolithicsparse"
        context.facts["subformat"] = CREATE_TYPES[create_type]
    return problems


def compare_grains(context: ImportContext, header: SparseHeader, tables: SparseHeader) -> list[tuple[FindingCode, str]]:
    """Grain tables (qemu's reading) against grain markers (a streaming reader's) of a stream-optimized image."""
    max_grains = int(context.options("vmdk").get("max_grains", 4 << 20))
    with context.data.open() as handle:
        try:
            by_table = table_map(handle, gd_offset=tables.gd_offset, capacity=header.capacity,
                                 grain=header.grain_size, gtes=header.num_gtes_per_gt,
                                 zeroed=bool(header.flags & FLAG_ZERO_GRAIN), max_grains=max_grains)
            by_marker = marker_map(handle, start=header.overhead, end=context.data.size, max_grains=max_grains)
        except GrainError as error:
            return [(GRAIN_MARKERS, str(error))]
    why = disagreement(by_table, by_marker)
    return [] if why is None else [(GRAIN_MARKERS, why)]


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
        problems = _inspect_sparse(context, head)
    except Problem as problem:
        context.report(problem.code, detail=problem.detail)
        return
    for code in dict.fromkeys(code for code, _detail in problems):
        context.report(code, detail="; ".join(detail for c, detail in problems if c is code)[:1000])
