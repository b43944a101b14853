"""Where on a guest disk a reader could find a nested disk image: the places ``nested_headers`` probes.

Not a plugin. :func:`places_to_probe` returns ``offset -> (name, span)``: every partition start
of every partition table some reader would follow, and the fixed places, each with the bytes
from it that a device there would show. The partition tables are read by
:func:`._guest_layout.read_layout` (the ``os_type`` plugin's reader, so both see the same
partitions); where readers differ, every view is added:

* a GPT disk's sector 0 may hold a hybrid MBR: its own entries are partitions to firmware and
  to MBR-only readers;
* a FAT or NTFS boot sector at sector 0 is no partition table to the layout reader (nor to
  libblkid), but Linux's kernel reads its four entries as one when their status bytes are 0x00
  or 0x80: those partitions are probed too;
* GPT headers at both byte 512 and byte 4096: a device of 512-byte sectors shows one table, a
  4Kn device the other;
* a BSD disklabel (sector 1 of an MBR partition of type 0xa5, 0xa6, 0xa9 or 0xb7) holds slices
  that Linux and the BSDs expose as partitions of their own; FreeBSD counts their offsets from
  the disk or, when slice c starts at 0, from the partition: both are probed;
* more GPT entries or logical partitions than the layout reader reads (Linux reads them all):
  the ``os_type`` plugin rejects such a disk (``partition.gpt_entries``, ``partition.ebr_count``);
  with ``unread_partitions`` set (``os_type`` disabled) they raise :class:`Incomplete` here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ..guest._guest_layout import GuestLayout, ReadBudgetExhausted, read_layout
from ..guest._partition_tables import MBR_EXTENDED, MBR_PROTECTIVE

Reader = Callable[[int, int], bytes]
SECTOR = 512
MIB = 1 << 20
#: Places probed on every disk, with how a detail names them: sector 1 and the 4096-byte LBA 1.
FIXED_PLACES = ((512, "sector 1"), (4096, "4 KiB LBA 1"))
#: Probed only on a disk without partitions: where fdisk's DOS and modern defaults put partition 1.
FIRST_PARTITION_PLACES = ((63 * SECTOR, "sector 63"), (MIB, "byte 1048576"))
GPT_SIGNATURE = b"EFI PART"
#: LBA 1 of a disk of 4096-byte sectors.
GPT_4K = 4096
#: Layout problems meaning the reader stopped short of partitions Linux would still expose.
UNREAD_PARTITIONS = ("partition.gpt_entries", "partition.ebr_count")
#: MBR partition types whose sector 1 may hold a BSD disklabel (FreeBSD, OpenBSD, NetBSD, BSD/OS).
BSD_TYPES = frozenset({"0xa5", "0xa6", "0xa9", "0xb7"})
BSD_MAGIC = 0x82564557
#: Most BSD disklabel slices read (Linux's and the BSDs' limit).
BSD_MAX_SLICES = 16
BSD_SLICE_C = 2


class Incomplete(Exception):
    """Not every place could be found or probed; the message is the operator detail."""


def _tables(read: Reader, size: int, cap: int, unread_partitions: bool) -> GuestLayout:
    """The partition tables as :func:`read_layout` reads them, without its filesystem probes."""
    tables_read = False

    def stop(_ranges: list[tuple[int, int]]) -> None:
        nonlocal tables_read
        tables_read = True
        raise ReadBudgetExhausted  # ends read_layout with the partitions it has, before filesystem probes

    layout = read_layout(read, size, cap=cap, prefetch=stop)
    problems = [(code, detail) for code, detail in layout.problems if code != "layout.read_budget"]
    if not tables_read and len(problems) < len(layout.problems):
        raise Incomplete(f"the partition tables need more than max_read ({cap} bytes)")
    unread = [detail for code, detail in problems if code in UNREAD_PARTITIONS]
    if unread and unread_partitions:
        raise Incomplete(f"partitions the layout reader does not read: {'; '.join(unread)}")
    return layout


def _views(read: Reader, size: int, cap: int, unread_partitions: bool) -> list[tuple[str, GuestLayout]]:
    """The layout, and a second one where GPT headers sit at both LBA 1s: a 4Kn device reads the one at 4096."""
    views = [("", _tables(read, size, cap, unread_partitions))]
    if size > 2 * GPT_4K and read(SECTOR, 8) == GPT_SIGNATURE and read(GPT_4K, 8) == GPT_SIGNATURE:
        def hide_512_gpt(offset: int, length: int) -> bytes:
            data = read(offset, length)  # as if LBA 1 of 512 bytes were blank
            low, high = max(SECTOR, offset), min(2 * SECTOR, offset + len(data))
            if low >= high:
                return data
            return data[: low - offset] + bytes(high - low) + data[high - offset :]

        views.append(("4 KiB GPT ", _tables(hide_512_gpt, size, cap, unread_partitions)))
    return views


def _mbr_entries(read: Reader, *, linux_rule: bool) -> list[tuple[int, str, int]]:
    """``(offset, name, span)`` of sector 0's MBR entries other than protective or extended ones.

    With ``linux_rule`` (sector 0 is a filesystem boot sector to the layout reader), only if Linux too
    would read them: every status byte 0x00 or 0x80, and no protective entry.
    """
    sector0 = read(0, SECTOR)
    if sector0[510:512] != b"\x55\xaa":
        return []
    entries = [struct.unpack_from("<B3xB3xII", sector0, 446 + 16 * number) for number in range(4)]
    if linux_rule and any(status not in (0, 0x80) or kind == MBR_PROTECTIVE for status, kind, _f, _c in entries):
        return []
    return [(first * SECTOR, f"MBR entry {number}", count * SECTOR)
            for number, (_status, kind, first, count) in enumerate(entries, start=1)
            if kind and kind != MBR_PROTECTIVE and kind not in MBR_EXTENDED and count]


def _bsd_slices(read: Reader, index: int, start: int) -> list[tuple[int, str, int]]:
    """The slices of a BSD disklabel in sector 1 of the partition at byte ``start``, at both readings."""
    label = read(start + SECTOR, SECTOR)
    if len(label) < SECTOR or struct.unpack_from("<I", label)[0] != BSD_MAGIC:
        return []
    count = min(struct.unpack_from("<H", label, 138)[0], BSD_MAX_SLICES)
    slices = [struct.unpack_from("<II", label, 148 + 16 * n) for n in range(count)]
    found = []
    for number, (sectors, first) in enumerate(slices):
        if sectors:
            name = f"partition {index} BSD slice {chr(ord('a') + number)}"
            found.append((first * SECTOR, name, sectors * SECTOR))
            found.append((start + first * SECTOR, f"{name} (relative)", sectors * SECTOR))
    return found


def places_to_probe(read: Reader, size: int, cap: int, *, guest_zero: bool,
                    unread_partitions: bool = True) -> dict[int, tuple[str, int]]:
    """Every place to probe: ``offset -> (name, span)``; offset 0 only if ``guest_zero``. Raises Incomplete.

    ``unread_partitions``: raise Incomplete for a table with partitions past the layout reader's limits.
    """
    views = _views(read, size, cap, unread_partitions)
    places: dict[int, tuple[str, int]] = {}

    def add(offset: int, name: str, span: int) -> None:
        if 0 < offset < size or (offset == 0 and guest_zero):
            span = min(span, size - offset)
            if offset not in places or places[offset][1] < span:
                places[offset] = (places[offset][0] if offset in places else name, span)

    if guest_zero:
        add(0, "guest offset 0", size)
    for prefix, view in views:
        for part in view.partitions:
            add(part.start, f"{prefix}partition {part.index}", part.size)
            if part.type_id in BSD_TYPES and part.start + 2 * SECTOR <= size:
                for offset, name, span in _bsd_slices(read, part.index, part.start):
                    add(offset, name, span)
    table = views[0][1].partition_table
    if table in ("gpt", "none"):  # a hybrid MBR; or MBR entries in a boot sector, which Linux reads
        for offset, name, span in _mbr_entries(read, linux_rule=table == "none"):
            add(offset, name, span)
    for offset, name in FIXED_PLACES:
        add(offset, name, size - offset)
    if not any(view.partitions for _prefix, view in views):
        for offset, name in FIRST_PARTITION_PLACES:
            add(offset, name, size - offset)
    return places
