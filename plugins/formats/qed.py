"""Checks QED images: no backing file, known features only, header and L1 table in range (``inspect``).

Runs after ``disk_format`` and only on data it named ``qed``. QED, qemu's
"enhanced disk" format, can name a backing file in its header just like qcow2: the
hypervisor then opens that path on the host (the OSSA-2024-001 class of attack).
An image with the backing-file feature is rejected first, whatever else is wrong
with it. Then every header field is checked against the QED specification, and
the L1 table (at most ``[plugin.qed] max_l1_table_size`` bytes) is scanned: each
allocated entry must be a cluster-aligned L2 table that lies inside the file.

Header (little endian, at offset 0)::

    0   u32 magic                 "QED\\0"
    4   u32 cluster_size          power of two, 4 KiB .. 64 MiB
    8   u32 table_size            L1/L2 table size in clusters, power of two, 1 .. 16
    12  u32 header_size           header clusters before the first regular cluster
    16  u64 features              0x1 backing file, 0x2 needs check, 0x4 raw backing file
    24  u64 compat_features       none defined
    32  u64 autoclear_features    none defined
    40  u64 l1_table_offset       bytes, cluster aligned
    48  u64 image_size            virtual size, multiple of 512
    56  u32 backing_filename_offset
    60  u32 backing_filename_size

Unknown bits in any of the three feature fields are rejected: none are defined,
so a set bit comes from a writer this plugin knows nothing about (fail closed).
The "needs check" bit is accepted: it only asks the opener to check the metadata.

oslo.utils has no QED parser: ``disk_format`` records the file size as the
virtual size. This plugin replaces the ``virtual_size`` fact with the header's
``image_size`` and applies ``max_image_size`` to it. Facts recorded:
``virtual_size``, ``cluster_size``.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from importhooks import FindingCode, ImportContext, PluginOption, PluginOptions, hookimpl

from ._tables import TableEnds, table_chunks

MAGIC = b"QED\x00"
#: Bytes read for the header; the fixed fields take the first 64.
HEADER_BYTES = 64
MIN_CLUSTER_SIZE = 1 << 12
MAX_CLUSTER_SIZE = 1 << 26
MIN_TABLE_SIZE = 1
MAX_TABLE_SIZE = 16
#: Largest header_size (in clusters) accepted; qemu writes 1.
MAX_HEADER_CLUSTERS = 16
SECTOR = 512
ENTRY_BYTES = 8
F_BACKING_FILE = 0x01
F_NEED_CHECK = 0x02
F_BACKING_FORMAT_NO_PROBE = 0x04
KNOWN_FEATURES = F_BACKING_FILE | F_NEED_CHECK | F_BACKING_FORMAT_NO_PROBE
#: Most bytes of a backing file name quoted (escaped) in a finding's detail.
MAX_BACKING_NAME_DETAIL = 256
#: L1 entries read and checked per read (512 KiB).
L1_CHUNK_ENTRIES = 1 << 16
#: Default of ``[plugin.qed] max_l1_table_size``.
DEFAULT_MAX_L1_TABLE_SIZE = 16 << 20

_HEADER = struct.Struct("<4sIIIQQQQQII")

BACKING_FILE = FindingCode(
    "qed.backing_file",
    "The image refers to a backing file; only self-contained images are accepted.",
    "A QED backing file makes the hypervisor open another file, possibly one on the host, as in the "
    "qcow2 backing-file attacks (OSSA-2024-001). Flatten the image with 'qemu-img convert'.",
)
FEATURES = FindingCode(
    "qed.features",
    "The QED image uses features this cloud does not support.",
    "The QED header sets feature, compat_features or autoclear_features bits that the QED "
    "specification does not define. Convert the image with 'qemu-img convert'.",
)
HEADER = FindingCode(
    "qed.header",
    "The QED image's header is invalid.",
    "A QED header field is out of range: cluster size not a power of two in 4 KiB..64 MiB, table size "
    "not a power of two in 1..16, or a header size of zero, too large, or past the L1 table. The detail "
    "names the field.",
)
IMAGE_SIZE = FindingCode(
    "qed.image_size",
    "The QED image's virtual size is invalid or larger than this cloud accepts.",
    "The header's image_size is not a multiple of 512 bytes, larger than its L1 and L2 tables can "
    "address, or over max_image_size.",
)
L1_TABLE = FindingCode(
    "qed.l1_table",
    "The QED image's L1 table is invalid.",
    "The L1 table offset is not cluster aligned, overlaps the header or runs past the end of the file; "
    "an L1 entry names an L2 table that is unaligned or outside the file; or the table is larger than "
    "max_l1_table_size. The image is truncated or corrupt.",
)


class QedHeader(NamedTuple):
    """The fixed fields of a QED header."""

    magic: bytes
    cluster_size: int
    table_size: int
    header_size: int
    features: int
    compat_features: int
    autoclear_features: int
    l1_table_offset: int
    image_size: int
    backing_filename_offset: int
    backing_filename_size: int


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    """The codes this plugin reports."""
    return [BACKING_FILE, FEATURES, HEADER, IMAGE_SIZE, L1_TABLE]


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    """The ``[plugin.qed]`` options."""
    return PluginOptions("qed", (
        PluginOption("max_l1_table_size", DEFAULT_MAX_L1_TABLE_SIZE,
                     "Largest L1 table (cluster_size * table_size) read and scanned; a larger one is "
                     "rejected (qed.l1_table). qemu's default is 256 KiB.", size=True),
    ))


def parse_header(raw: bytes) -> QedHeader | None:
    """The header's fixed fields, or None if ``raw`` is too short or lacks the magic."""
    if len(raw) < _HEADER.size or not raw.startswith(MAGIC):
        return None
    return QedHeader(*_HEADER.unpack_from(raw))


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _backing_detail(context: ImportContext, header: QedHeader) -> str:
    """The backing file name, escaped and shortened, if the header places it sensibly."""
    offset, size = header.backing_filename_offset, header.backing_filename_size
    detail = f"features {header.features:#x}, backing file name at {offset}, {size} bytes"
    if _HEADER.size <= offset and 0 < size and offset + size <= context.data.size:
        name = context.data.read_at(offset, min(size, MAX_BACKING_NAME_DETAIL))
        detail += f": {name!r}" + (" (shortened)" if size > MAX_BACKING_NAME_DETAIL else "")
    return detail


def header_problem(header: QedHeader, file_size: int) -> str | None:
    """What is wrong with the cluster, table and header sizes (for ``qed.header``), or None."""
    cluster = header.cluster_size
    if not _is_power_of_two(cluster) or not MIN_CLUSTER_SIZE <= cluster <= MAX_CLUSTER_SIZE:
        return f"cluster_size {cluster}, expected a power of two in {MIN_CLUSTER_SIZE}..{MAX_CLUSTER_SIZE}"
    if not _is_power_of_two(header.table_size) or not MIN_TABLE_SIZE <= header.table_size <= MAX_TABLE_SIZE:
        return f"table_size {header.table_size}, expected a power of two in {MIN_TABLE_SIZE}..{MAX_TABLE_SIZE}"
    if not 1 <= header.header_size <= MAX_HEADER_CLUSTERS:
        return f"header_size {header.header_size} clusters, expected 1..{MAX_HEADER_CLUSTERS}"
    if header.header_size * cluster > file_size:
        return f"header_size {header.header_size} clusters runs past the end of the {file_size}-byte file"
    return None


def max_image_size(header: QedHeader) -> int:
    """The largest image the L1 and L2 tables can address."""
    entries = header.table_size * header.cluster_size // ENTRY_BYTES
    return entries * entries * header.cluster_size


def image_size_problem(header: QedHeader, limit: int) -> str | None:
    """What is wrong with ``image_size`` (for ``qed.image_size``), or None."""
    size = header.image_size
    if size % SECTOR:
        return f"image_size {size} is not a multiple of {SECTOR}"
    if size > max_image_size(header):
        return f"image_size {size} > {max_image_size(header)}, what the tables can address"
    if size > limit:
        return f"image_size {size} over max_image_size {limit}"
    return None


def l1_problem(context: ImportContext, header: QedHeader, max_table: int) -> str | None:
    """Check the L1 table's place, then scan its entries; what is wrong (for ``qed.l1_table``), or None."""
    cluster, offset = header.cluster_size, header.l1_table_offset
    table_bytes = header.table_size * cluster
    file_size = context.data.size
    if table_bytes > max_table:
        return f"L1 table of {table_bytes} bytes over max_l1_table_size {max_table}"
    if offset % cluster:
        return f"l1_table_offset {offset:#x} not a multiple of cluster_size {cluster}"
    if offset < header.header_size * cluster:
        return f"l1_table_offset {offset:#x} overlaps the {header.header_size}-cluster header"
    if offset + table_bytes > file_size:
        return f"L1 table {offset:#x}..{offset + table_bytes:#x} runs past the end of the {file_size}-byte file"
    lowest, highest = header.header_size * cluster, file_size - table_bytes
    total = table_bytes // ENTRY_BYTES
    try:
        for first, entries in table_chunks(context.data, offset, total, "Q", L1_CHUNK_ENTRIES):
            bad = [entry for entry in entries if entry and (entry % cluster or not lowest <= entry <= highest)]
            if bad:
                index = first + entries.index(bad[0])
                return f"L1 entry {index} names an L2 table at {bad[0]:#x}, unaligned or outside the file"
    except TableEnds as ends:
        return f"L1 table ends at entry {ends.entry}, past the end of the file"
    return None


@hookimpl
def importhooks_inspect(context: ImportContext) -> None:
    """Reject a backing file or unknown features, then check the header and L1 table of ``qed`` data."""
    if context.facts.get("disk_format") != "qed":
        return
    header = parse_header(context.data.read_at(0, HEADER_BYTES))
    if header is None:
        context.reject(HEADER, detail=f"no complete QED header in the {context.data.size}-byte file")
    if header.features & F_BACKING_FILE:
        context.reject(BACKING_FILE, detail=_backing_detail(context, header))
    unknown = (header.features & ~KNOWN_FEATURES, header.compat_features, header.autoclear_features)
    if any(unknown):
        context.reject(FEATURES, detail="unknown features {:#x}, compat_features {:#x}, "
                                        "autoclear_features {:#x}".format(*unknown))
    problem = header_problem(header, context.data.size)
    if problem is not None:
        context.reject(HEADER, detail=problem)
    context.facts["cluster_size"] = header.cluster_size
    problem = image_size_problem(header, context.settings.max_image_size)
    if problem is not None:
        context.reject(IMAGE_SIZE, detail=problem)
    context.facts["virtual_size"] = header.image_size
    max_table = int(context.options("qed").get("max_l1_table_size", DEFAULT_MAX_L1_TABLE_SIZE))
    problem = l1_problem(context, header, max_table)
    if problem is not None:
        context.reject(L1_TABLE, detail=problem)
