"""What a disk-format header found *inside* a guest disk would make its opener follow.

Not a plugin: the ``nested_headers`` plugin uses it. :func:`sniff` names the format whose
magic starts a 512-byte sector (as qemu's probes and oslo.utils' magics see it);
:func:`examine` reads the rest of that nested header through ``read(offset, size)``, relative
to where it starts and clamped to ``span`` bytes (the partition, or the rest of the disk), and
returns the references it holds to other files: a qcow2 backing or external data file, a QED
backing file, a VMDK parent or extent other than itself (a text descriptor names nothing but
other files), a VHDX or VHD parent. An empty tuple means: a self-contained header, or one qemu
would not open. Whatever cannot be checked within the read limits below is a reference too
(fail closed). Untrusted names are quoted with ``repr`` and cut short: operator details only.

The field layouts are the format plugins' (:mod:`.qcow2`, :mod:`.qed`, :mod:`.vmdk`,
:mod:`.vhdx`); their checkers report into an import context, so only their pure parsers and
constants are called here.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable

from . import _vmdk_descriptor as vmdk_descriptor
from . import qcow2, qed, vhdx, vmdk
from ._detector import looks_like

Reader = Callable[[int, int], bytes]
SECTOR = 512
#: Most bytes of a qcow2 header area (header and extensions) read; a walk past it is unverifiable.
QCOW2_HEADER_AREA = 64 << 10
#: Bytes of sector 1 qemu's VMDK driver searches for ``parentFileNameHint`` (its DESC_SIZE).
VMDK_PARENT_AREA = 20 * SECTOR
#: Longest piece of an untrusted name quoted in a detail.
MAX_NAME = 128
#: VHD disk type of a differencing disk (parent locators name the parent file).
VHD_DIFFERENCING = 4
#: qemu's VMDK probe: comment lines, then ``version=1``, ``2`` or ``3`` (a descriptor file).
_VMDK_TEXT = re.compile(rb"(?:[ \t]*#[^\n]*\n|[ \t]*\r?\n)*[ \t]*version=[123]\r?\n")
#: VMDK problems that are references to other files, or text that could hide one.
_VMDK_REFERENCES = (vmdk_descriptor.PARENT, vmdk_descriptor.FILE_REFERENCE, vmdk_descriptor.EXTENT_TYPE,
                    vmdk_descriptor.DESCRIPTOR_SYNTAX)
#: The first line of a descriptor file: VMware reads the text as one whatever its length.
VMDK_DESCRIPTOR_MARK = b"# Disk DescriptorFile"
#: Formats flagged when nested; LUKS is not (an encrypted partition is ordinary).
FORMATS = ("qcow2", "qed", "vmdk", "vhdx", "vhd", "vdi")
#: Bytes qemu's format probes look at (its BLOCK_PROBE_BUF_SIZE): a descriptor file's version line must be
#: within them.
PROBE_BYTES = 512
#: Magics of the other formats qemu probes (none can name another file): bochs, parallels, cloop.
OTHER_MAGICS = {b"Bochs Virtual HD Image\0": "bochs", b"WithoutFreeSpace": "parallels",
                b"WithouFreSpacExt": "parallels", b"#!/bin/sh\n#V2.0 Format\n": "cloop"}


def _quote(name: bytes) -> str:
    return repr(name[:MAX_NAME]) + ("..." if len(name) > MAX_NAME else "")


def sniff(head: bytes) -> str | None:
    """The disk format whose header starts ``head`` (:data:`PROBE_BYTES`), or None (LUKS counts as None)."""
    if head.startswith((b"COWD", VMDK_DESCRIPTOR_MARK)) or _VMDK_TEXT.match(head):
        return "vmdk"  # VMware 3 sparse, a descriptor file as qemu probes one, or one VMware reads at any length
    found = looks_like(head)
    if found in FORMATS:
        return found
    return next((name for magic, name in OTHER_MAGICS.items() if head.startswith(magic)), None)


class _Span:
    """Reads relative to a nested header's start, never past ``span`` bytes."""

    def __init__(self, read: Reader, span: int) -> None:
        self._read = read
        self.span = span

    def __call__(self, offset: int, size: int) -> bytes:
        if offset < 0 or offset >= self.span or size <= 0:
            return b""
        return bytes(self._read(offset, min(size, self.span - offset)))


def examine(fmt: str, read: Reader, span: int) -> tuple[str, ...]:
    """The references to other files the nested ``fmt`` header at ``read``'s offset 0 holds."""
    at = _Span(read, span)
    checks: dict[str, Callable[[_Span], list[str]]] = {
        "qcow2": _qcow2, "qed": _qed, "vmdk": _vmdk, "vhdx": _vhdx, "vhd": _vhd}
    check = checks.get(fmt)
    return tuple(check(at)) if check is not None else ()


def _qcow2(at: _Span) -> list[str]:
    """A backing file, the external data file bit or a data file header extension (qemu's qcow2_do_open).

    The qcow2 magic with version 1 is qemu's older ``qcow`` format, which has a backing file too.
    """
    head = at(0, qcow2.V3_MIN_HEADER_LENGTH)
    if len(head) < qcow2.V2_HEADER_LENGTH:
        return []
    version, backing_offset, backing_size, cluster_bits = struct.unpack_from(">IQII", head, 4)
    if version == 1:  # qemu's older "qcow" driver opens it, backing file included
        name = at(backing_offset, min(backing_size, qcow2.MAX_BACKING_NAME))
        return [f"qcow (version 1) backing file {_quote(name)}"] if backing_offset else []
    if version not in (2, 3) or not qcow2.MIN_CLUSTER_BITS <= cluster_bits <= qcow2.MAX_CLUSTER_BITS:
        return []  # qemu refuses to open it
    found = []
    cluster = 1 << cluster_bits
    if backing_offset:
        name = at(backing_offset, min(backing_size, qcow2.MAX_BACKING_NAME)) if backing_offset < cluster else b""
        found.append(f"qcow2 backing file {_quote(name)} ({backing_size} bytes at {backing_offset})")
    header_length = qcow2.V2_HEADER_LENGTH
    if version == 3 and len(head) >= qcow2.V3_MIN_HEADER_LENGTH:
        incompatible, _compat, _autoclear, _order, header_length = struct.unpack_from(">QQQII", head, 72)
        if incompatible & qcow2.INCOMPAT_DATA_FILE:
            found.append("qcow2 external data file (incompatible feature bit 2)")
    end = min(backing_offset or cluster, cluster)
    area = at(0, min(end, QCOW2_HEADER_AREA))
    offset = header_length
    for _count in range(qcow2.MAX_HEADER_EXTENSIONS):
        if offset + 8 > end:
            break
        if offset + 8 > len(area):
            found.append(f"qcow2 header extensions past the {len(area)} bytes read")
            break
        kind, length = struct.unpack_from(">II", area, offset)
        if kind == qcow2.EXT_END:
            break
        if kind == qcow2.EXT_DATA_FILE:
            found.append(f"qcow2 external data file {_quote(area[offset + 8 : offset + 8 + length])}")
        offset += 8 + (length + 7) // 8 * 8
    return found


def _qed(at: _Span) -> list[str]:
    """The backing-file feature (qemu's bdrv_qed_do_open)."""
    header = qed.parse_header(at(0, qed.HEADER_BYTES))
    if header is None or not header.features & qed.F_BACKING_FILE:
        return []
    name = at(header.backing_filename_offset, min(header.backing_filename_size, MAX_NAME + 1))
    return [f"QED backing file {_quote(name)}"]


def _vmdk(at: _Span) -> list[str]:
    head = at(0, SECTOR)
    if head.startswith(b"COWD"):
        return []  # VMware 3 sparse: no descriptor, no parent qemu follows
    if not head.startswith(vmdk.MAGIC):
        text = at(0, vmdk.DESCRIPTOR_ONLY_PEEK).split(b"\0", 1)[0]
        return [f"VMDK descriptor file, its data in other files: {vmdk_descriptor.describe_descriptor_file(text)}"]
    try:
        header = vmdk.SparseHeader.parse(head)
    except vmdk_descriptor.Problem:
        return []
    found = []
    # qemu looks for parentFileNameHint at sector 1 whatever the header says, and opens the extents of
    # the descriptor at descriptorOffset when capacity is 0; VMware reads the embedded descriptor.
    areas = {vmdk.DESCRIPTOR_SECTOR: max(header.descriptor_size, VMDK_PARENT_AREA // SECTOR)}
    if header.descriptor_offset:
        areas[header.descriptor_offset] = max(header.descriptor_size, 1)
    for sector, count in sorted(areas.items()):
        if count > vmdk.DESCRIPTOR_MAX_SECTORS:
            found.append(f"VMDK descriptor of {count} sectors at sector {sector}: too large to check")
            continue
        text = at(sector * SECTOR, count * SECTOR).split(b"\0", 1)[0]
        if text.strip():
            found += [f"VMDK descriptor at sector {sector}: {why}" for why in _vmdk_descriptor(text, header)]
    return list(dict.fromkeys(found))


def _vmdk_descriptor(text: bytes, header: vmdk.SparseHeader) -> list[str]:
    if b"parentfilenamehint" in text.lower():
        return ["parentFileNameHint"]
    try:
        descriptor = vmdk_descriptor.parse_descriptor(text)
    except vmdk_descriptor.Problem as problem:
        return [f"unreadable ({problem.detail})"]
    found = [detail for code, detail in vmdk_descriptor.check_descriptor(
        descriptor, header.capacity, header.compress_algorithm == vmdk.COMPRESS_DEFLATE,
        header.gd_offset == vmdk.GD_AT_END) if code in _VMDK_REFERENCES]
    if len(descriptor.extents) > 1:
        found.append(f"{len(descriptor.extents)} extents")
    elif descriptor.extents and header.capacity == 0:
        found.append("capacity 0: qemu opens the descriptor's extent as another file")
    return found


def _vhdx(at: _Span) -> list[str]:
    """A parent: the file parameters' has-parent flag or a parent locator (MS-VHDX), in either region table."""
    found = []
    metadata_regions = set()
    for offset in vhdx.REGION_TABLE_OFFSETS:
        table = at(offset, vhdx.REGION_TABLE_SIZE)
        if len(table) < vhdx.REGION_TABLE_SIZE or not table.startswith(vhdx.REGION_SIGNATURE):
            continue
        if not vhdx.checksum_ok(table):
            continue  # qemu and Hyper-V ignore a region table whose CRC-32C is wrong
        count = min(int.from_bytes(table[8:12], "little"), vhdx.MAX_TABLE_ENTRIES)
        for index in range(count):
            guid, region_offset, _length, _flags = struct.unpack_from("<16sQII", table, 16 + 32 * index)
            if guid == vhdx.METADATA_REGION:
                metadata_regions.add(region_offset)
    for region in sorted(metadata_regions):
        table = at(region, vhdx.METADATA_TABLE_SIZE)
        if not table.startswith(vhdx.METADATA_SIGNATURE):
            continue
        count = min(int.from_bytes(table[10:12], "little"), (len(table) - 32) // 32)  # a table cut by the span
        for index in range(count):
            guid, item_offset, length, _flags = struct.unpack_from("<16sIII", table, 32 + 32 * index)
            if guid == vhdx.PARENT_LOCATOR:
                found.append(f"VHDX parent locator (metadata at {region})")
            elif guid == vhdx.FILE_PARAMETERS and length >= 8:
                flags = int.from_bytes(at(region + item_offset + 4, 4).ljust(4, b"\0"), "little")
                if flags & vhdx.PARAM_HAS_PARENT:
                    found.append(f"VHDX differencing disk: has-parent flag (metadata at {region})")
    return list(dict.fromkeys(found))


def _vhd(at: _Span) -> list[str]:
    """A differencing VHD (its footer copy at the start says disk type 4): it names its parent."""
    head = at(0, SECTOR)
    disk_type = int.from_bytes(head[60:64], "big") if len(head) >= 64 else 0
    return ["VHD differencing disk: names a parent file"] if disk_type == VHD_DIFFERENCING else []
