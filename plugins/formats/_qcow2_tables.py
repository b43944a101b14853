"""The qcow2 plugin's table checks: refcount table and blocks, L1 and L2 tables, and overlaps.

Not a plugin itself: :mod:`.qcow2` parses the header and calls these in order, and
declares the codes defined here. Every table is read only once it is known to lie
in the file, in bounded chunks; the L2 tables within ``max_l2_scan_bytes``.

Every metadata cluster found (the header cluster, the L1 and refcount tables, the
refcount blocks, the snapshot table and snapshot L1 tables, the L2 tables) is
recorded in a :class:`Metadata` map, at most ``max_metadata_clusters`` of them;
a cluster claimed twice is an overlap. The guest data clusters the L2 tables map
must lie in the file and on no metadata cluster: qemu writes a guest cluster
mapped past the end of the file by growing the file to that offset (petabytes),
and a guest cluster on a table is a guest that rewrites the image's metadata.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator

from importhooks import FindingCode, ImportContext, Severity
from importhooks.data import BudgetedReader

#: qemu's limits: active L1 table 32 MiB, refcount table 8 MiB.
MAX_L1_BYTES = 32 << 20
MAX_REFTABLE_BYTES = 8 << 20
#: Default of the ``max_l2_scan_bytes`` option.
DEFAULT_MAX_L2_SCAN_BYTES = 64 << 20
#: Default of the ``max_metadata_clusters`` option (a dict entry each: about 25 MiB at most).
DEFAULT_MAX_METADATA_CLUSTERS = 1 << 18
#: Table entries (L1 or refcount table) read at a time.
CHUNK_ENTRIES = 16384

INCOMPAT_EXTENDED_L2 = 1 << 4
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L1E_RESERVED_MASK = 0x7F000000000001FF
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
REFT_RESERVED_MASK = 0x1FF
#: L2 entry flags: bit 63 "copied", bit 62 "compressed", bit 0 "reads as zeros".
L2E_COMPRESSED = 1 << 62
#: Maps an L2 entry's first (most significant) byte to 1 if it has bit 62, "compressed cluster".
_COMPRESSED_BYTES = bytes(1 if b & 0x40 else 0 for b in range(256))
#: ... and to 1 if a standard cluster's reserved bits 56 to 61 are set.
_RESERVED_TOP_BYTES = bytes(1 if b & 0x3F else 0 for b in range(256))

L1_TABLE = FindingCode(
    "qcow2.l1_table",
    "The qcow2 image's cluster table is invalid.",
    "The active L1 table is unaligned, over qemu's 32 MiB limit, too small for the virtual size or outside "
    "the file, or one of its entries has reserved bits set or points to an L2 table that is unaligned or "
    "outside the file.",
)
L2_TABLE = FindingCode(
    "qcow2.l2_table",
    "The qcow2 image maps disk data outside the file.",
    "An L2 entry has reserved bits set, an unaligned host offset, or maps a guest cluster (or a compressed "
    "cluster's bytes) past the end of the file. qemu reads such a cluster as an I/O error or zeros and, when "
    "the guest writes it, grows the file to that offset: petabytes for a hostile offset.",
)
REFCOUNT_TABLE = FindingCode(
    "qcow2.refcount_table",
    "The qcow2 image's reference count table is invalid.",
    "The refcount table is unaligned, empty, larger than qemu's 8 MiB limit, or lies outside the file, or "
    "one of its entries has reserved bits set or points to a refcount block that is unaligned or outside "
    "the file.",
)
OVERLAP = FindingCode(
    "qcow2.overlap",
    "The qcow2 image's metadata overlaps itself or the disk data.",
    "Two metadata structures (header, L1 table, L2 table, refcount table or block, snapshot table or "
    "snapshot L1 table) share a cluster, two L1 entries share one L2 table, or the disk maps a guest "
    "cluster onto metadata. A guest write would then rewrite the image's own tables (qemu marks such an "
    "image corrupt when it notices). The detail names both structures and the offset.",
)
SCAN_LIMIT = FindingCode(
    "qcow2.scan_limit",
    "The qcow2 image's cluster tables were only partly scanned.",
    "The L2 tables are larger than [plugin.qcow2] max_l2_scan_bytes, or the metadata has more clusters than "
    "max_metadata_clusters: the L2 tables past the limit were not checked for host offsets and overlaps "
    "(qemu-img check still runs), and compressed_clusters is recorded only if one was found before it.",
    Severity.INFO,
)
CODES = [L1_TABLE, L2_TABLE, REFCOUNT_TABLE, OVERLAP, SCAN_LIMIT]


@dataclasses.dataclass(frozen=True, slots=True)
class Header:
    """The fields of a qcow2 header that the checks use."""

    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible: int = 0
    autoclear: int = 0
    refcount_order: int = 4
    header_length: int = 72
    compression_type: int = 0

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def l2_stride(self) -> int:
        """Bytes per L2 entry: 16 with extended L2 entries (a descriptor and a subcluster bitmap), else 8."""
        return 16 if self.incompatible & INCOMPAT_EXTENDED_L2 else 8


class Image:
    """Bounded reads from the open data, and the file's extent in whole clusters."""

    def __init__(self, handle: BudgetedReader, size: int) -> None:
        self.handle = handle
        self.size = size
        self.extent = size

    def read(self, offset: int, length: int) -> bytes:
        if offset >= self.size or length <= 0:
            return b""
        self.handle.seek(offset)
        return self.handle.read(min(length, self.size - offset))

    def holds(self, offset: int, length: int) -> bool:
        """Whether ``length`` bytes at ``offset`` lie in the file (its size rounded up to a cluster)."""
        return 0 <= offset and offset + length <= self.extent

    def entries(self, offset: int, count: int) -> Iterator[tuple[int, tuple[int, ...]]]:
        """``(first index, entries)`` of a table of ``count`` big-endian 64-bit entries, a chunk at a time."""
        for start in range(0, count, CHUNK_ENTRIES):
            n = min(CHUNK_ENTRIES, count - start)
            raw = self.read(offset + 8 * start, 8 * n).ljust(8 * n, b"\0")
            yield start, struct.unpack(f">{n}Q", raw)


class Metadata:
    """Which structure holds each metadata cluster (by offset); a cluster claimed twice is an overlap."""

    def __init__(self, cluster_size: int, limit: int) -> None:
        self.cluster_size = cluster_size
        self.limit = limit
        self.owner: dict[int, str] = {}
        self.clusters: set[int] = set()  # the owner's keys but the header's (0: an unallocated entry)
        self.full = False

    def claim(self, context: ImportContext, offset: int, length: int, name: str) -> bool:
        """Record ``length`` bytes at ``offset`` (cluster aligned) as ``name``; False after reporting an overlap."""
        size = self.cluster_size
        for cluster in range(offset, offset + max(length, 1), size):
            other = self.owner.get(cluster)
            if other is not None:
                context.report(OVERLAP, detail=f"{name} at {offset} overlaps {other} at cluster {cluster}")
                return False
            if len(self.owner) >= self.limit:
                self.full = True
                return True
            self.owner[cluster] = name
            if cluster:
                self.clusters.add(cluster)
        return True


def table_problem(image: Image, offset: int, length: int, cluster_size: int, limit: int) -> str | None:
    """What is wrong with a table of ``length`` bytes at ``offset``: alignment, qemu's ``limit``, bounds."""
    if offset % cluster_size:
        return f"offset {offset} is not cluster aligned"
    if length > limit:
        return f"{length} bytes, over qemu's limit of {limit}"
    if length and not image.holds(offset, length):
        return f"{length} bytes at {offset} end past the file's {image.size} bytes"
    return None


def check_refcount_table(context: ImportContext, header: Header, image: Image, metadata: Metadata) -> bool:
    """Check the refcount table and record it and its refcount blocks; False after a finding."""
    size = header.cluster_size
    offset, length = header.refcount_table_offset, header.refcount_table_clusters * size
    problem = "empty" if not length else table_problem(image, offset, length, size, MAX_REFTABLE_BYTES)
    if problem:
        context.report(REFCOUNT_TABLE, detail=f"refcount table: {problem}")
        return False
    if not metadata.claim(context, offset, length, "refcount table"):
        return False
    for start, entries in image.entries(offset, length // 8):
        where = f"entries {start}..{start + len(entries) - 1}"
        distinct = set(entries) - {0}
        for entry in sorted(distinct):
            block = entry & REFT_OFFSET_MASK
            if entry & REFT_RESERVED_MASK or block % size or not image.holds(block, size):
                context.report(REFCOUNT_TABLE, detail=f"refcount table entry {entry:#018x} in {where}")
                return False
        if len(distinct) != len(entries) - entries.count(0):
            context.report(OVERLAP, detail=f"two refcount table entries in {where} name one refcount block")
            return False
        for block in sorted(distinct):
            if not metadata.claim(context, block, size, "refcount block"):
                return False
    return True


def check_l1_table(context: ImportContext, header: Header, image: Image, metadata: Metadata) -> bool:
    """Whether the active L1 table is sound enough to read (and then it is recorded)."""
    covered = header.cluster_size * (header.cluster_size // header.l2_stride)  # bytes of disk one L2 table maps
    needed = -(-header.size // covered)
    problem = table_problem(image, header.l1_table_offset, header.l1_size * 8, header.cluster_size, MAX_L1_BYTES)
    if problem is None and header.l1_size < needed:
        problem = f"{header.l1_size} entries, too few for the virtual size {header.size} ({needed} needed)"
    if problem:
        context.report(L1_TABLE, detail=f"L1 table: {problem}")
        return False
    return not header.l1_size or metadata.claim(context, header.l1_table_offset, header.l1_size * 8, "L1 table")


def l2_tables(context: ImportContext, header: Header, image: Image, metadata: Metadata,
              *, limit: int) -> tuple[list[int], bool] | None:
    """The offsets of the L2 tables the active L1 table names, recorded as metadata, and whether that is all.

    Each L1 entry is checked; at most ``limit`` bytes of L2 tables are listed. ``None``
    after a finding.
    """
    size = header.cluster_size
    tables: list[int] = []
    complete = True
    for start, entries in image.entries(header.l1_table_offset, header.l1_size):
        where = f"entries {start}..{start + len(entries) - 1}"
        distinct = set(entries) - {0}
        for entry in sorted(distinct):
            l2_offset = entry & L1E_OFFSET_MASK
            if entry & L1E_RESERVED_MASK or l2_offset % size or not image.holds(l2_offset, size):
                context.report(L1_TABLE, detail=f"L1 entry {entry:#018x} in {where}")
                return None
        offsets = _distinct_offsets(entries, distinct, L1E_OFFSET_MASK)
        if offsets is None:
            context.report(OVERLAP, detail=f"two L1 entries in {where} name one L2 table")
            return None
        for l2_offset in sorted(offsets):
            if (len(tables) + 1) * size > limit or metadata.full:
                complete = False
                break
            if not metadata.claim(context, l2_offset, size, "L2 table"):
                return None
            tables.append(l2_offset)
    return tables, complete


def _distinct_offsets(entries: tuple[int, ...], distinct: set[int], mask: int) -> set[int] | None:
    """The non-zero offsets (``entry & mask``) of ``entries``, or ``None`` if two entries share one."""
    offsets = {entry & mask for entry in distinct} - {0}
    if len(offsets) == len(distinct) == len(entries) - entries.count(0):
        return offsets  # the usual case, without a loop over every entry
    masked = [entry & mask for entry in entries]
    nonzero = len(masked) - masked.count(0)
    return offsets if len(offsets) == nonzero else None


def scan_l2_tables(context: ImportContext, header: Header, image: Image, metadata: Metadata,
                   tables: list[int]) -> bool | None:
    """Check every entry of ``tables``; whether one maps a compressed cluster, ``None`` after a finding."""
    size = header.cluster_size
    stride = header.l2_stride
    compressed = False
    masks = _low_byte_masks(header)
    for l2_offset in tables:
        table = image.read(l2_offset, size).ljust(size, b"\0")
        # Extended L2 entries: the 8-byte descriptor, then the subcluster bitmap (not checked here).
        descriptors = table if stride == 8 else memoryview(table).cast("Q")[::2].tobytes()
        if 1 in descriptors[::8].translate(_COMPRESSED_BYTES):
            compressed = True
            problem = _compressed_table_problem(header, image, metadata, descriptors)
        else:
            problem = _standard_table_problem(header, image, metadata, descriptors, masks)
        if problem:
            code, detail = problem
            context.report(code, detail=f"L2 table at {l2_offset}: {detail}")
            return None
    return compressed


def _forbidden_low_bits(header: Header) -> int:
    """The low bits a standard L2 entry must not have: reserved, or the host offset's misalignment.

    Bit 0 ("reads as zeros") exists from version 3 on, and with extended L2 entries moves
    to the subcluster bitmap. qemu fails every read of a version 2 image's entry with it
    ("Zero cluster entry found in pre-v3 image", I/O error) while qemu-img check calls the
    image clean and other readers read the cluster's data: it is rejected.
    """
    zero_flag = 1 if header.version >= 3 and header.l2_stride == 8 else 0
    return (header.cluster_size - 1) & ~zero_flag


def _low_byte_masks(header: Header) -> tuple[tuple[int, bytes], ...]:
    """``(byte index, table)`` pairs: each table maps a byte of an entry to 1 if it has a forbidden low bit.

    Bits 1 to 8 are reserved, bits 9 up to the cluster size are the host offset's
    misalignment; bit 0 is reserved too unless it is a version 3 image's "reads as zeros".
    """
    forbidden = _forbidden_low_bits(header)
    masks = []
    for index in range(7, 0, -1):
        mask = (forbidden >> (8 * (7 - index))) & 0xFF
        if mask:
            masks.append((index, bytes(1 if b & mask else 0 for b in range(256))))
    return tuple(masks)


def _standard_table_problem(header: Header, image: Image, metadata: Metadata, descriptors: bytes,
                            masks: tuple[tuple[int, bytes], ...]) -> tuple[FindingCode, str] | None:
    """An L2 table without compressed clusters, checked at C speed a byte column at a time."""
    count = len(descriptors) // 8
    if 1 in descriptors[::8].translate(_RESERVED_TOP_BYTES):
        return L2_TABLE, "an entry has reserved bits 56 to 61 set"
    for index, table in masks:
        if 1 in descriptors[index::8].translate(table):
            return L2_TABLE, "an entry has reserved bits set or an unaligned host offset"
    offsets = bytearray(descriptors)
    offsets[::8] = bytes(count)  # the flags: what is left is each entry's host offset
    offsets[7::8] = bytes(count)  # bit 0, "reads as zeros"
    hosts = struct.unpack(f">{count}Q", offsets)
    last = max(hosts)
    if not last:
        return None
    if not image.holds(last, header.cluster_size):
        return L2_TABLE, f"a guest cluster maps to host offset {last}, past the file's {image.size} bytes"
    if not metadata.clusters.isdisjoint(hosts):  # a lookup per entry, no set built
        cluster = min(metadata.clusters.intersection(hosts))
        return OVERLAP, f"a guest cluster maps onto the {metadata.owner[cluster]} at {cluster}"
    return None


def _compressed_table_problem(header: Header, image: Image, metadata: Metadata,
                              descriptors: bytes) -> tuple[FindingCode, str] | None:
    """An L2 table with compressed clusters, an entry at a time."""
    cluster_bits = header.cluster_bits
    shift = 62 - (cluster_bits - 8)  # where a compressed entry's sector count starts
    offset_mask = (1 << shift) - 1
    sectors_mask = (1 << (cluster_bits - 8)) - 1
    forbidden = _forbidden_low_bits(header)
    size = header.cluster_size
    for entry in set(struct.unpack(f">{len(descriptors) // 8}Q", descriptors)) - {0}:
        if entry & L2E_COMPRESSED:
            host = entry & offset_mask
            end = (host & ~511) + (((entry >> shift) & sectors_mask) + 1) * 512
            first, last = host - host % size, end - 1 - (end - 1) % size
            if not image.holds(host, end - host):
                return L2_TABLE, f"a compressed cluster at host offset {host} ends at {end}, past the file's " \
                                 f"{image.size} bytes"
        else:
            if entry & 0x3F00000000000000 or entry & forbidden:
                return L2_TABLE, f"entry {entry:#018x} has reserved bits set or an unaligned host offset"
            first = last = entry & L1E_OFFSET_MASK
            if not first:
                continue
            if not image.holds(first, size):
                return L2_TABLE, f"a guest cluster maps to host offset {first}, past the file's {image.size} bytes"
        for cluster in range(first, last + 1, size):
            if cluster in metadata.owner:
                return OVERLAP, f"a guest cluster maps onto the {metadata.owner[cluster]} at {cluster}"
    return None
