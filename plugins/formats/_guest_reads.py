"""Guest reads of one layer, shared by the plugins that make them; a qcow2's plain clusters without qemu-img.

Not a plugin: :func:`._qemu.read_guest` goes through :func:`read`. ``nested_headers``
(``inspect``) and ``os_type`` (``set_protected_properties``) each read a few guest
blocks of the same layer, sector 0 first of all, and every ``qemu-img convert`` costs a
fresh, limited process. So, per layer (the :class:`~importhooks.data.ImageData`; its
entry goes with it):

* a range an earlier read of the layer fetched through qemu-img is answered from those bytes
  when that read was the same (the same ``key``: program and limits, and the same driver,
  offset and size), kept up to :data:`KEEP_BYTES` per layer (a cache: what is not kept is
  read again);
* on a qcow2 layer, a range is answered from the image's own active L1 and L2 tables, as qemu
  reads it with no backing file (``"backing": null``): clusters that are wholly unallocated
  read as zeros; and once the layer is *vouched for* (:func:`vouched`: no error so far, the
  qcow2 plugin walked every L2 table and found it sound, qemu-img check found no corruption),
  v3 zero-flag clusters read as zeros and standard clusters (not compressed, no reserved
  bits, an aligned, non-zero host offset, the bytes inside the file) are read from the file
  at the host offsets their L2 entries give. Only an image with no backing file, no
  encryption, no external data file and no incompatible feature other than the compression
  type and extended L2 entries is mapped; with extended L2 entries each subcluster is read
  by its bitmap (allocated: from the file; zero or unallocated: zeros). A range with any
  other cluster (compressed, a bitmap qemu calls invalid, anything odd) goes to qemu-img whole.

Only ranges qemu-img still has to read are handed to ``fetch``; the bytes returned are
those qemu-img returns for every range (tests/test_qcow2_direct_reads.py compares them).
What changes is that no qemu-img runs for a range known this way, so none can fail there:
a qcow2 whose guest reads are all answered from its tables is read even where the reading
plugin's own qemu-img (its ``binary``, its limits) would fail. Each range's way is logged
at debug level (``kept``, ``unallocated``, ``tables`` or ``qemu-img``).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from importhooks import ImportContext
from importhooks.data import ImageData

from ._qcow2_tables import INCOMPAT_EXTENDED_L2, L1E_OFFSET_MASK, L1E_RESERVED_MASK, L2E_COMPRESSED

LOG = logging.getLogger(__name__)

#: Guest bytes fetched through qemu-img that a layer keeps for later reads (a cache, not a limit).
KEEP_BYTES = 4 << 20
QCOW2_MAGIC = b"QFI\xfb"
#: Incompatible features a mapped qcow2 may have: the compression type (bit 3), extended L2 entries (bit 4).
MAPPED_INCOMPATIBLE = (1 << 3) | INCOMPAT_EXTENDED_L2
MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21
#: A standard L2 entry's reserved bits 56 to 61.
L2E_RESERVED_TOP = 0x3F << 56


@dataclass(frozen=True, slots=True)
class Qcow2Map:
    """What of a qcow2 layer's header locates its active L1 table."""

    version: int
    cluster_bits: int
    virtual_size: int
    l1_size: int
    l1_offset: int
    stride: int  # bytes per L2 entry: 8, or 16 with extended L2 entries

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def l2_span(self) -> int:
        """Guest bytes one L2 table maps."""
        return self.cluster_size * (self.cluster_size // self.stride)


def qcow2_map(read_at: Callable[[int, int], bytes], file_size: int) -> Qcow2Map | None:
    """The map of a qcow2 whose unallocated ranges read as zeros, or ``None`` (then qemu-img reads everything)."""
    head = read_at(0, 104)
    if len(head) < 72 or not head.startswith(QCOW2_MAGIC):
        return None
    (version, backing_offset, _backing_size, cluster_bits, size, crypt, l1_size, l1_offset,
     ) = struct.unpack_from(">IQIIQIIQ", head, 4)
    incompatible = autoclear = 0
    if version == 3:
        if len(head) < 104:
            return None
        incompatible, _compatible, autoclear = struct.unpack_from(">QQQ", head, 72)
    elif version != 2:
        return None
    if backing_offset or crypt or incompatible & ~MAPPED_INCOMPATIBLE or autoclear:
        return None
    if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
        return None
    stride = 16 if incompatible & INCOMPAT_EXTENDED_L2 else 8
    cluster = 1 << cluster_bits
    if l1_offset % cluster or l1_offset + 8 * l1_size > file_size:
        return None
    return Qcow2Map(version, cluster_bits, size, l1_size, l1_offset, stride)


def unallocated(read_at: Callable[[int, int], bytes], file_size: int, image: Qcow2Map, offset: int,
                size: int) -> bool:
    """Whether every cluster of guest bytes ``[offset, offset + size)`` is unallocated in the active tables."""
    return _extents(read_at, file_size, image, offset, size, allocated=False) is not None


def guest_bytes(read_at: Callable[[int, int], bytes], file_size: int, image: Qcow2Map, offset: int, size: int,
                *, allocated: bool) -> bytes | None:
    """Guest bytes ``[offset, offset + size)`` from the qcow2's own tables, or ``None`` (then qemu-img reads them).

    Unallocated clusters read as zeros; with ``allocated`` (the image passed the qcow2 plugin's
    table checks and qemu-img check, :func:`vouched`), zero-flag clusters read as zeros and
    standard clusters are read from the file at the host offsets their L2 entries give.
    """
    extents = _extents(read_at, file_size, image, offset, size, allocated=allocated)
    if extents is None:
        return None
    pieces = []
    for host, length in extents:
        if host is None:
            pieces.append(bytes(length))
            continue
        piece = read_at(host, length)
        if len(piece) != length:
            return None
        pieces.append(piece)
    return b"".join(pieces)


def _extents(read_at: Callable[[int, int], bytes], file_size: int, image: Qcow2Map, offset: int, size: int,
             *, allocated: bool) -> list[tuple[int | None, int]] | None:
    """``(host offset or None for zeros, length)`` pieces of a guest range, adjacent ones merged; ``None`` if any
    cluster is one this module does not read (see :func:`_cluster`)."""
    if offset < 0 or size <= 0 or offset + size > image.virtual_size:
        return None
    cluster, span = image.cluster_size, image.l2_span
    first, last = offset // cluster, (offset + size - 1) // cluster
    per_table = span // cluster
    extents: list[tuple[int | None, int]] = []
    index = first
    while index <= last:
        l1_index = index // per_table
        if l1_index >= image.l1_size:
            return None
        stop = min(last, (l1_index + 1) * per_table - 1)  # the last cluster of the range in this L2 table
        entry = read_at(image.l1_offset + 8 * l1_index, 8)
        if len(entry) != 8:
            return None
        count = stop - index + 1
        if entry == bytes(8):
            entries = bytes(count * image.stride)
        else:
            l1_entry = int.from_bytes(entry, "big")
            l2_offset = l1_entry & L1E_OFFSET_MASK
            if (l1_entry & L1E_RESERVED_MASK or not l2_offset or l2_offset % cluster
                    or l2_offset + cluster > file_size):
                return None
            start = l2_offset + (index % per_table) * image.stride
            entries = read_at(start, count * image.stride)
            if len(entries) != count * image.stride:
                return None
        for number in range(count):
            guest = (index + number) * cluster
            lo, hi = max(offset, guest), min(offset + size, guest + cluster)
            raw = entries[number * image.stride : (number + 1) * image.stride]
            pieces = _cluster(raw, image, file_size, allocated=allocated, start=lo - guest, end=hi - guest)
            if pieces is None:
                return None
            for host, length in pieces:
                _append(extents, host, length)
        index = stop + 1
    return extents


def _cluster(raw: bytes, image: Qcow2Map, file_size: int, *, allocated: bool, start: int,
             end: int) -> list[tuple[int | None, int]] | None:
    """The pieces (host offset, or ``None`` for zeros) of bytes ``[start, end)`` of one L2 entry's cluster, or
    ``None`` if qemu-img is to read them.

    An entry that is all zero (with its subcluster bitmap) is unallocated. With ``allocated``:
    an 8-byte entry with the v3 "reads as zeros" bit reads as zeros; a standard one is read
    from the file when the bytes lie in it; with extended L2 entries, each subcluster by its
    bitmap (:func:`_subclusters`). Compressed entries, reserved bits, an unaligned host
    offset, a "copied" entry with no offset, or bit 0 in a version 2 image go to qemu-img.
    """
    if raw.count(0) == len(raw):
        return [(None, end - start)]
    if not allocated:
        return None
    entry = int.from_bytes(raw[:8], "big")
    zero_flag = 1 if image.version >= 3 and image.stride == 8 else 0  # with subclusters, bit 0 is reserved
    if entry & (L2E_COMPRESSED | L2E_RESERVED_TOP) or entry & (image.cluster_size - 1) & ~zero_flag:
        return None
    host = entry & L1E_OFFSET_MASK
    if image.stride == 16:
        return _subclusters(host, int.from_bytes(raw[8:], "big"), image, file_size, start, end)
    if entry & zero_flag:
        return [(None, end - start)]  # v3 "reads as zeros", with a preallocated host cluster or none
    if not host or host + end > file_size:
        return None  # "copied" and no offset (nothing qemu writes), or bytes past the end of the file
    return [(host + start, end - start)]


def _subclusters(host: int, bitmap: int, image: Qcow2Map, file_size: int, start: int,
                 end: int) -> list[tuple[int | None, int]] | None:
    """Bytes ``[start, end)`` of a cluster with extended L2 entries, by the subcluster bitmap, as qemu reads them.

    Bit ``x`` (0 to 31) says subcluster ``x`` is allocated (at ``host`` plus its offset), bit
    ``32 + x`` that it reads as zeros; neither is unallocated, zeros with no backing file.
    Both set for one subcluster, or an allocated one with no host offset, is invalid to qemu
    (an I/O error): qemu-img reads it.
    """
    if (bitmap >> 32) & bitmap & 0xFFFFFFFF or (not host and bitmap & 0xFFFFFFFF):
        return None
    size = image.cluster_size // 32
    pieces: list[tuple[int | None, int]] = []
    for index in range(start // size, (end - 1) // size + 1):
        lo, hi = max(start, index * size), min(end, (index + 1) * size)
        if bitmap >> index & 1:
            if host + hi > file_size:
                return None
            _append(pieces, host + lo, hi - lo)
        else:
            _append(pieces, None, hi - lo)
    return pieces


def _append(extents: list[tuple[int | None, int]], host: int | None, length: int) -> None:
    """Add a piece, merged with the last one when they are contiguous zeros or contiguous host bytes."""
    if extents:
        last_host, last_length = extents[-1]
        if (host is None and last_host is None) or (
                host is not None and last_host is not None and last_host + last_length == host):
            extents[-1] = (last_host, last_length + length)
            return
    extents.append((host, length))


def vouched(context: ImportContext) -> bool:
    """Whether the current qcow2 layer's allocated clusters may be read from the file directly.

    Only when nothing was reported as an error so far, the qcow2 plugin walked every L2 table
    of the active L1 table and found it sound (``compressed_clusters`` is known and no
    ``qcow2.scan_limit``), and qemu-img check found no corruption (``qemu_img_check``).
    """
    facts = context.facts
    return (not context.has_errors() and facts.get("disk_format") == "qcow2"
            and isinstance(facts.get("compressed_clusters"), bool)
            and facts.get("qemu_img_check") == "passed"
            and not any(f.code == "qcow2.scan_limit" for f in context.findings))


@dataclass
class _Layer:
    """One layer's kept guest bytes and, for a qcow2, its map (computed once)."""

    kept: dict[tuple[Hashable, str, int, int], bytes] = field(default_factory=dict)
    kept_bytes: int = 0
    qcow2: Qcow2Map | None = None
    mapped: bool = False


_LAYERS: weakref.WeakKeyDictionary[ImageData, _Layer] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _layer(data: ImageData) -> _Layer:
    with _LOCK:
        layer = _LAYERS.get(data)
        if layer is None:
            layer = _LAYERS[data] = _Layer()
        return layer


def _is_layer(path: Path, data: ImageData) -> bool:
    """Whether ``path`` (the link qemu-img is given) names the layer's file."""
    try:
        return os.path.samefile(path, data.path)
    except OSError:
        return False


def read(context: ImportContext, path: Path, driver: str, ranges: Sequence[tuple[int, int]],
         fetch: Callable[[list[tuple[int, int]]], bytes], key: Hashable) -> bytes:
    """The guest bytes of ``ranges`` concatenated; ``fetch`` (qemu-img) reads those not known otherwise.

    ``key`` names how ``fetch`` reads (the program and its limits): kept bytes are reused only
    by a read of the same key, so a plugin whose own qemu-img would fail still fails.
    """
    data = context.data
    if not _is_layer(path, data):
        return fetch(list(ranges))
    layer = _layer(data)
    if driver == "qcow2" and context.facts.get("disk_format") == "qcow2" and not layer.mapped:
        layer.qcow2 = qcow2_map(data.read_at, data.size)
        layer.mapped = True
    qcow2 = layer.qcow2 if driver == "qcow2" else None
    allocated = qcow2 is not None and vouched(context)
    pieces: list[bytes | None] = []
    missing: list[tuple[int, int]] = []
    for offset, size in ranges:
        known = layer.kept.get((key, driver, offset, size))
        how = "kept"
        if known is None and qcow2 is not None:
            known = guest_bytes(data.read_at, data.size, qcow2, offset, size, allocated=allocated)
            how = "tables" if allocated else "unallocated"
        pieces.append(known)
        if known is None:
            missing.append((offset, size))
            how = "qemu-img"
        LOG.debug("guest read %d+%d (%s): %s", offset, size, driver, how)
    if missing:
        fetched = fetch(missing)
        position = 0
        for index, piece in enumerate(pieces):
            if piece is None:
                offset, size = ranges[index]
                piece = pieces[index] = fetched[position : position + size]
                position += size
                if layer.kept_bytes + size <= KEEP_BYTES and len(piece) == size:
                    layer.kept[(key, driver, offset, size)] = piece
                    layer.kept_bytes += size
    return b"".join(piece or b"" for piece in pieces)
