"""Guest reads of one layer, shared by the plugins that make them; a qcow2's unallocated ranges without qemu-img.

Not a plugin: :func:`._qemu.read_guest` goes through :func:`read`. ``nested_headers``
(``inspect``) and ``os_type`` (``set_protected_properties``) each read a few guest
blocks of the same layer, sector 0 first of all, and every ``qemu-img convert`` costs a
fresh, limited process. So, per layer (the :class:`~importhooks.data.ImageData`; its
entry goes with it):

* a range an earlier read of the layer fetched through qemu-img is answered from those bytes
  when that read was the same (the same ``key``: program and limits, and the same driver,
  offset and size), kept up to :data:`KEEP_BYTES` per layer (a cache: what is not kept is
  read again);
* on a qcow2 layer, a range that the image's active L1 and L2 tables leave wholly
  unallocated is answered with zeros: what qemu reads there, since guest reads open the
  image with no backing file (``"backing": null``). Only an image with no backing file, no
  encryption, no external data file and no incompatible feature other than the compression
  type and extended L2 entries is mapped, only entries that are entirely zero count as
  unallocated (an L1 entry, or a whole L2 entry with its subcluster bitmap), and every table
  read is checked against the file; anything else, including anything odd, goes to qemu-img.

Only ranges qemu-img still has to read are handed to ``fetch``; the bytes returned are
those qemu-img returns for every range. What changes is that no qemu-img runs for a range
known this way, so none can fail there: a qcow2 whose guest reads are all unallocated is
read even where the reading plugin's own qemu-img (its ``binary``, its limits) would fail.
"""

from __future__ import annotations

import os
import struct
import threading
import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from importhooks import ImportContext
from importhooks.data import ImageData

from ._qcow2_tables import INCOMPAT_EXTENDED_L2, L1E_OFFSET_MASK

#: Guest bytes fetched through qemu-img that a layer keeps for later reads (a cache, not a limit).
KEEP_BYTES = 4 << 20
QCOW2_MAGIC = b"QFI\xfb"
#: Incompatible features a mapped qcow2 may have: the compression type (bit 3), extended L2 entries (bit 4).
MAPPED_INCOMPATIBLE = (1 << 3) | INCOMPAT_EXTENDED_L2
MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21


@dataclass(frozen=True, slots=True)
class Qcow2Map:
    """What of a qcow2 layer's header locates its active L1 table."""

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
    return Qcow2Map(cluster_bits, size, l1_size, l1_offset, stride)


def unallocated(read_at: Callable[[int, int], bytes], file_size: int, image: Qcow2Map, offset: int,
                size: int) -> bool:
    """Whether every cluster of guest bytes ``[offset, offset + size)`` is unallocated in the active tables."""
    if offset < 0 or size <= 0 or offset + size > image.virtual_size:
        return False
    cluster, span = image.cluster_size, image.l2_span
    first, last = offset // cluster, (offset + size - 1) // cluster
    per_table = span // cluster
    index = first
    while index <= last:
        l1_index = index // per_table
        if l1_index >= image.l1_size:
            return False
        stop = min(last, (l1_index + 1) * per_table - 1)  # the last cluster of the range in this L2 table
        entry = read_at(image.l1_offset + 8 * l1_index, 8)
        if len(entry) != 8:
            return False
        if entry != bytes(8):
            l2_offset = int.from_bytes(entry, "big") & L1E_OFFSET_MASK
            if not l2_offset or l2_offset % cluster or l2_offset + cluster > file_size:
                return False
            start = l2_offset + (index % per_table) * image.stride
            length = (stop - index + 1) * image.stride
            entries = read_at(start, length)
            if len(entries) != length or entries.count(0) != length:
                return False
        index = stop + 1
    return True


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
    pieces: list[bytes | None] = []
    missing: list[tuple[int, int]] = []
    for offset, size in ranges:
        known = layer.kept.get((key, driver, offset, size))
        if known is None and qcow2 is not None and unallocated(data.read_at, data.size, qcow2, offset, size):
            known = bytes(size)
        pieces.append(known)
        if known is None:
            missing.append((offset, size))
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
