"""Checks a qcow2 image's header, features and tables, and records its layout (``inspect``).

Runs after ``disk_format`` (which detects qcow2 and already rejects backing files,
data files and unknown features through oslo.utils) and parses the header again,
itself, as qemu would (docs/interop/qcow2.rst): version, cluster size, header length,
encryption, every incompatible feature bit and the data_file_raw autoclear bit, the
backing file, the header extensions, internal snapshots, and (in :mod:`._qcow2_tables`)
the refcount table and blocks, the active L1 table, every entry of the L2 tables it
points to, and that no two metadata structures, and no guest data cluster and a
structure, share a cluster. Facts: ``format_version``, ``cluster_size`` and
``compressed_clusters``.

Every read is bounded by a constant or a plugin option, never by a size taken
from the header alone: a table is read only once it is known to lie in the file.
A table "lies in the file" if it ends within the file's size rounded up to a whole
cluster (qemu writes the last table of a fresh image only partly and reads the rest
as zeros).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Mapping
from typing import Any

from importhooks import FindingCode, ImportContext, PluginOption, PluginOptions, Severity, hookimpl

from . import _qcow2_tables as _tables
from ._qcow2_tables import Header, Image, Metadata, table_problem

SECTION = "qcow2"
MAGIC = b"QFI\xfb"
#: Length of the version 2 header, and the least a version 3 header may have.
V2_HEADER_LENGTH = 72
V3_MIN_HEADER_LENGTH = 104
#: Cluster sizes qemu opens: 512 bytes to 2 MiB; 16 KiB at least with extended L2 entries.
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MIN_EXTENDED_L2_CLUSTER_BITS = 14
#: Largest refcount width: 64 bits.
MAX_REFCOUNT_ORDER = 6
#: Longest backing file name qcow2 allows.
MAX_BACKING_NAME = 1023
#: qemu's limits: 65536 snapshots with at most 1 KiB of extra data each.
MAX_SNAPSHOTS = 65536
MAX_SNAPSHOT_EXTRA = 1024
#: Header extensions walked before the header is called invalid (qemu writes about 3).
MAX_HEADER_EXTENSIONS = 64
#: Longest piece of an untrusted name (backing or data file) quoted in a detail.
MAX_DETAIL_NAME = 256
SNAPSHOT_ENTRY_LENGTH = 40

EXT_END = 0x00000000
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTENDED_L2 = 1 << 4
INCOMPAT_KNOWN = (1 << 5) - 1
COMPRESSION_TYPES = {0: "deflate", 1: "zstd"}
CRYPT_METHODS = {1: "aes", 2: "luks"}

#: Autoclear feature bit 1: the external data file holds the guest disk as raw data.
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

# Declared by ``disk_format`` (oslo.utils' safety checks); reported here only when it did not.
BACKING_FILE = "qcow2.backing_file"
DATA_FILE = "qcow2.data_file"
UNKNOWN_FEATURES = "qcow2.unknown_features"

HEADER_INVALID = FindingCode(
    "qcow2.header_invalid",
    "The qcow2 image's header is damaged or incomplete.",
    "The header is truncated, its length or header extensions run past the first cluster or the file, "
    "too many extensions, or fields contradict each other (compression type, refcount width).",
)
VERSION = FindingCode(
    "qcow2.version",
    "The qcow2 image's version is not supported.",
    "Only qcow2 versions 2 (compat=0.10) and 3 (compat=1.1) exist; convert the image with qemu-img.",
)
CLUSTER_BITS = FindingCode(
    "qcow2.cluster_bits",
    "The qcow2 image's cluster size is not supported.",
    "cluster_bits must be 9 to 21 (512 bytes to 2 MiB), and at least 14 with extended L2 entries; "
    "qemu does not open other images.",
)
ENCRYPTED = FindingCode(
    "qcow2.encrypted",
    "Encrypted qcow2 images are not accepted.",
    "The header sets crypt_method (legacy AES, broken and unbootable, or LUKS inside qcow2) or carries "
    "an encryption header extension. The cloud cannot boot it; upload the decrypted image.",
)
CORRUPT = FindingCode(
    "qcow2.corrupt",
    "The qcow2 image is marked as corrupt.",
    "The corrupt bit is set: qemu found inconsistent metadata. Repair with 'qemu-img check -r all'.",
)
DIRTY = FindingCode(
    "qcow2.dirty",
    "The qcow2 image was not closed cleanly.",
    "The dirty bit is set (lazy refcounts): refcounts may be stale until qemu repairs them. Stale "
    "refcounts are corruptions to qemu-img check (plugin qemu_img), which then rejects the image; "
    "'qemu-img check -r all' repairs it.",
    Severity.WARNING,
)
DATA_FILE_RAW = FindingCode(
    "qcow2.data_file_raw",
    "The qcow2 image says its disk is in an external raw file that it does not have.",
    "The autoclear data_file_raw bit is set without an external data file. qemu refuses to open such an "
    "image; another reader would read the guest disk from the qcow2 tables. The image is not self-contained "
    "in a way anything can rely on: clear the bit or convert the image with qemu-img.",
)
SNAPSHOTS = FindingCode(
    "qcow2.snapshots",
    "qcow2 images with internal snapshots are not accepted.",
    "Snapshots keep disk contents the guest does not see, a place to hide data from checks. Delete them "
    "('qemu-img snapshot -d') or set [plugin.qcow2] allow_snapshots (then this is an info finding).",
)
SNAPSHOT_TABLE = FindingCode(
    "qcow2.snapshot_table",
    "The qcow2 image's snapshot table is invalid.",
    "The snapshot table or a snapshot's L1 table is unaligned, too large or outside the file.",
)
CODES = [HEADER_INVALID, VERSION, CLUSTER_BITS, ENCRYPTED, CORRUPT, DIRTY, DATA_FILE_RAW, SNAPSHOTS,
         SNAPSHOT_TABLE, *_tables.CODES]


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return CODES


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    return PluginOptions(SECTION, (
        PluginOption("allow_snapshots", False,
                     "Accept qcow2 images with internal snapshots (reported as info) instead of rejecting them."),
        PluginOption("max_l2_scan_bytes", _tables.DEFAULT_MAX_L2_SCAN_BYTES,
                     "Most bytes of L2 tables read to check their entries and look for compressed clusters "
                     "(default 64 MiB).", size=True),
        PluginOption("max_metadata_clusters", _tables.DEFAULT_MAX_METADATA_CLUSTERS,
                     "Most metadata clusters (tables, L2 tables, refcount blocks) recorded to check that none "
                     "overlaps another or the disk data (default 262144)."),
    ))


def _report_once(context: ImportContext, code: str, detail: str) -> None:
    """Report ``code`` unless ``disk_format`` (or anyone) already did for this image."""
    if not any(f.code == code for f in context.findings):
        context.report(code, detail=detail)


def _quote(name: bytes) -> str:
    """An untrusted name for a detail: escaped, and cut short."""
    return repr(name[:MAX_DETAIL_NAME]) + ("..." if len(name) > MAX_DETAIL_NAME else "")


@hookimpl
def importhooks_inspect(context: ImportContext) -> None:
    """Check a layer ``disk_format`` detected as qcow2; every problem is a finding, none an exception."""
    if context.facts.get("disk_format") != "qcow2":
        return
    options = context.options(SECTION)
    with context.data.open() as handle:
        image = Image(handle, context.data.size)
        header = parse_header(context, image)
        if header is None:
            return
        context.facts["format_version"] = header.version
        context.facts["cluster_size"] = header.cluster_size
        image.extent = -(-image.size // header.cluster_size) * header.cluster_size
        _check_features(context, header)
        _check_backing_file(context, header, image)
        _walk_extensions(context, header, image)
        _check_tables(context, header, image, options)


def _check_tables(context: ImportContext, header: Header, image: Image, options: Mapping[str, Any]) -> None:
    """The refcount, snapshot, L1 and L2 tables, each recorded as metadata, then the data clusters."""
    metadata = Metadata(header.cluster_size, int(options["max_metadata_clusters"]))
    metadata.claim(context, 0, header.cluster_size, "header")
    sound = _tables.check_refcount_table(context, header, image, metadata)
    sound = _check_snapshots(context, header, image, metadata, allow=bool(options["allow_snapshots"])) and sound
    if not _tables.check_l1_table(context, header, image, metadata):
        return
    limit = int(options["max_l2_scan_bytes"])
    listed = _tables.l2_tables(context, header, image, metadata, limit=limit)
    if listed is None or not sound:
        return
    tables, complete = listed
    compressed = _tables.scan_l2_tables(context, header, image, metadata, tables)
    if compressed is None:
        return
    if not complete:
        context.report(_tables.SCAN_LIMIT, detail=f"stopped after {len(tables)} L2 tables (max_l2_scan_bytes "
                                                  f"{limit}, max_metadata_clusters {metadata.limit})")
    if compressed or complete:
        context.facts["compressed_clusters"] = compressed


def parse_header(context: ImportContext, image: Image) -> Header | None:
    """The header, or ``None`` after reporting why the image cannot be parsed further."""
    head = image.read(0, V3_MIN_HEADER_LENGTH)
    if len(head) < V2_HEADER_LENGTH or not head.startswith(MAGIC):
        context.report(HEADER_INVALID, detail=f"header truncated: {len(head)} bytes")
        return None
    fixed = Header(*struct.unpack_from(">IQIIQIIQQIIQ", head, 4))
    if fixed.version not in (2, 3):
        context.report(VERSION, detail=f"version {fixed.version}")
        return None
    if not MIN_CLUSTER_BITS <= fixed.cluster_bits <= MAX_CLUSTER_BITS:
        context.report(CLUSTER_BITS, detail=f"cluster_bits {fixed.cluster_bits}")
        return None
    if fixed.version == 2:
        return fixed
    if len(head) < V3_MIN_HEADER_LENGTH:
        context.report(HEADER_INVALID, detail=f"version 3 header truncated: {len(head)} bytes")
        return None
    incompatible, _compatible, autoclear, refcount_order, header_length = struct.unpack_from(">QQQII", head, 72)
    cluster_size = fixed.cluster_size
    if header_length < V3_MIN_HEADER_LENGTH or header_length % 8 or header_length > cluster_size:
        context.report(HEADER_INVALID, detail=f"header_length {header_length} (cluster size {cluster_size})")
        return None
    if image.size < header_length:
        context.report(HEADER_INVALID, detail=f"header truncated: {image.size} of {header_length} bytes")
        return None
    compression_type = image.read(V3_MIN_HEADER_LENGTH, 1)[0] if header_length > V3_MIN_HEADER_LENGTH else 0
    return dataclasses.replace(fixed, incompatible=incompatible, autoclear=autoclear, refcount_order=refcount_order,
                               header_length=header_length, compression_type=compression_type)


def _check_features(context: ImportContext, header: Header) -> None:
    bits = header.incompatible
    if bits & ~INCOMPAT_KNOWN:
        _report_once(context, UNKNOWN_FEATURES, f"qcow2: unknown incompatible feature bits {bits & ~INCOMPAT_KNOWN:#x}")
    if bits & INCOMPAT_CORRUPT:
        context.report(CORRUPT, detail=f"incompatible features {bits:#x}")
    if bits & INCOMPAT_DIRTY:
        context.report(DIRTY, detail=f"incompatible features {bits:#x}")
    if bits & INCOMPAT_DATA_FILE:
        _report_once(context, DATA_FILE, "qcow2: external data file feature bit set")
    elif header.autoclear & AUTOCLEAR_DATA_FILE_RAW:
        context.report(DATA_FILE_RAW, detail=f"autoclear features {header.autoclear:#x} without the data file bit")
    if bits & INCOMPAT_EXTENDED_L2 and header.cluster_bits < MIN_EXTENDED_L2_CLUSTER_BITS:
        context.report(CLUSTER_BITS, detail=f"cluster_bits {header.cluster_bits} with extended L2 entries")
    compression = header.compression_type
    if compression not in COMPRESSION_TYPES or bool(compression) != bool(bits & INCOMPAT_COMPRESSION):
        context.report(HEADER_INVALID, detail=f"compression type {compression}, incompatible features {bits:#x}")
    if header.refcount_order > MAX_REFCOUNT_ORDER:
        context.report(HEADER_INVALID, detail=f"refcount_order {header.refcount_order}")
    if header.crypt_method in CRYPT_METHODS:
        context.report(ENCRYPTED, detail=f"crypt_method {header.crypt_method} ({CRYPT_METHODS[header.crypt_method]})")
    elif header.crypt_method:
        context.report(HEADER_INVALID, detail=f"unknown crypt_method {header.crypt_method}")


def _check_backing_file(context: ImportContext, header: Header, image: Image) -> None:
    offset, length = header.backing_file_offset, header.backing_file_size
    if offset:
        name = image.read(offset, min(length, MAX_BACKING_NAME))
        bad = "" if length <= MAX_BACKING_NAME and offset + length <= header.cluster_size else ", out of bounds"
        _report_once(context, BACKING_FILE, f"qcow2: backing file {_quote(name)} ({length} bytes at {offset}{bad})")
    elif length:
        context.report(HEADER_INVALID, detail=f"backing_file_size {length} without a backing_file_offset")


def _walk_extensions(context: ImportContext, header: Header, image: Image) -> None:
    """Walk the header extensions up to the backing file name or the end of the first cluster."""
    cluster_size = header.cluster_size
    end = min(header.backing_file_offset or cluster_size, cluster_size)
    offset = header.header_length
    area = image.read(0, end)
    count = 0
    while offset < end:
        count += 1
        if count > MAX_HEADER_EXTENSIONS:
            context.report(HEADER_INVALID, detail=f"more than {MAX_HEADER_EXTENSIONS} header extensions")
            return
        if offset + 8 > end or offset + 8 > len(area):
            context.report(HEADER_INVALID, detail=f"header extension at {offset} runs past the header area")
            return
        kind, length = struct.unpack_from(">II", area, offset)
        if kind == EXT_END:
            return
        data_offset = offset + 8
        if length > end - data_offset or data_offset + length > len(area):
            context.report(HEADER_INVALID,
                           detail=f"header extension {kind:#010x} at {offset}: {length} bytes run past the header")
            return
        if kind == EXT_DATA_FILE:
            name = area[data_offset : data_offset + length]
            _report_once(context, DATA_FILE, f"qcow2: external data file {_quote(name)}")
        elif kind == EXT_CRYPTO and not header.crypt_method:
            context.report(ENCRYPTED, detail="full disk encryption header extension")
        offset = data_offset + (length + 7) // 8 * 8


def _check_snapshots(context: ImportContext, header: Header, image: Image, metadata: Metadata, *,
                     allow: bool) -> bool:
    """Reject internal snapshots, or, when allowed, check and record the snapshot table and L1 tables.

    Whether the snapshot table is sound (true without snapshots, or with rejected ones).
    """
    count, offset = header.nb_snapshots, header.snapshots_offset
    if not count:
        return True
    if not allow:
        context.report(SNAPSHOTS, f"qcow2 images with internal snapshots are not accepted ({count} found).",
                       detail=f"{count} snapshots")
        return True
    context.report(SNAPSHOTS, "The qcow2 image has internal snapshots.", detail=f"{count} snapshots (allowed)",
                   severity=Severity.INFO)
    if count > MAX_SNAPSHOTS or offset % header.cluster_size:
        context.report(SNAPSHOT_TABLE, detail=f"{count} snapshots at {offset}: too many or unaligned")
        return False
    l1_tables: list[tuple[int, int]] = []
    position = offset
    for number in range(count):
        entry = image.read(position, SNAPSHOT_ENTRY_LENGTH)
        if len(entry) < SNAPSHOT_ENTRY_LENGTH:
            context.report(SNAPSHOT_TABLE, detail=f"snapshot {number} at {position}: past the end of the file")
            return False
        l1_offset, l1_size, id_size, name_size = struct.unpack_from(">QIHH", entry)
        (extra_size,) = struct.unpack_from(">I", entry, 36)
        problem = f"{extra_size} bytes of extra data" if extra_size > MAX_SNAPSHOT_EXTRA else table_problem(
            image, l1_offset, l1_size * 8, header.cluster_size, _tables.MAX_L1_BYTES)
        if problem:
            context.report(SNAPSHOT_TABLE, detail=f"snapshot {number}: {problem}")
            return False
        if l1_size:
            l1_tables.append((l1_offset, l1_size * 8))
        position += (SNAPSHOT_ENTRY_LENGTH + extra_size + id_size + name_size + 7) // 8 * 8
    if not image.holds(offset, position - offset):
        context.report(SNAPSHOT_TABLE, detail=f"snapshot table ends at {position}, past the file's {image.size} bytes")
        return False
    if not metadata.claim(context, offset, position - offset, "snapshot table"):
        return False
    return all(metadata.claim(context, l1_offset, length, f"snapshot {number} L1 table")
               for number, (l1_offset, length) in enumerate(l1_tables))
