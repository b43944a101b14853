"""Finds disk-format headers nested inside a guest disk: polyglots a prober would follow (``inspect``).

A raw disk whose partition starts with a qcow2 header is a raw disk to qemu, but the guest
kernel, libguestfs, ``qemu-img info /dev/sda1`` or a volume service that later probes the
partition as a block device sees a qcow2, and follows its backing file. This plugin reads the
places such readers probe on the guest disk (raw, ISO, or through a qcow2/VMDK/VHD/VHDX/VDI/QED
disk's own mapping):

* the start of every partition, of the MBR and of the GPT (both, where a hybrid MBR makes
  firmware and kernel disagree on the table), including logical partitions;
* sector 1 and the 4096-byte LBA 1 (what a reader skipping the MBR, or assuming 4 KiB sectors,
  reads first); on a disk with no partition, the conventional first-partition starts (sector 63
  and 1 MiB), where the header appears as soon as the disk is partitioned with defaults;
* guest offset 0 of a wrapped disk (a qcow2 whose guest disk is itself a qcow2).

A nested qcow2, QED, VMDK, VHDX, VHD or VDI header is a warning (``nested.header``); one that
names another file, as a backing or data file, parent or extent (:mod:`._nested_formats`), or
that cannot be checked within the read limits, is an error (``nested.unsafe``). A disk with more
places than ``max_probes``, or whose partition tables and headers need more than ``max_read``
bytes, is rejected (``nested.incomplete``): fail closed. Runs ``trylast`` in ``inspect``, after
every other check, and only on a bare disk layer no check rejected (so qemu-img only reads disks
its format plugin passed). The guest is read the way ``os_type`` reads it (:class:`.os_type._Blocks`
over :func:`._qemu.read_guest`; partitions from :func:`._guest_layout.read_layout`).
Fact: ``nested_headers``, the places and formats found.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from importhooks import FindingCode, ImportContext, PluginOption, PluginOptions, Severity, hookimpl

from . import _qemu
from ._guest_layout import MBR_EXTENDED, MBR_PROTECTIVE, GuestLayout, ReadBudgetExhausted, read_layout
from ._nested_formats import SECTOR, examine, sniff
from .os_type import DIRECT, THROUGH_QEMU, _Blocks

SECTION = "nested"
MIB = 1 << 20
#: Places probed on every disk, with how a detail names them: sector 1 and the 4096-byte LBA 1.
FIXED_PLACES = ((512, "sector 1"), (4096, "4 KiB LBA 1"))
#: Probed only on a disk without partitions: where fdisk's DOS and modern defaults put partition 1.
FIRST_PARTITION_PLACES = ((63 * SECTOR, "sector 63"), (MIB, "byte 1048576"))
GPT_SIGNATURE = b"EFI PART"
#: LBA 1 of a disk of 4096-byte sectors.
GPT_4K = 4096
DEFAULT_MAX_PROBES = 128
DEFAULT_MAX_READ = 32 << 20
MAX_DETAIL = 2000

HEADER = FindingCode(
    "nested.header",
    "The disk holds another disk image's header inside it.",
    "A partition's first sector, sector 1, the 4 KiB LBA 1 or the guest disk of a wrapped image starts "
    "with a qcow2, QED, VMDK, VHDX, VHD or VDI header. A hypervisor, guest tool or volume service that "
    "probes that partition as a block device would open it as that format. Nothing in it names another "
    "file, so the import is accepted; the detail lists the places.",
    Severity.WARNING,
)
UNSAFE = FindingCode(
    "nested.unsafe",
    "The disk holds another disk image that refers to files outside it.",
    "A disk image header inside the disk (at a partition's start, sector 1, the 4 KiB LBA 1 or guest "
    "offset 0) names a backing file, external data file, parent or extent, or could not be checked within "
    "the read limits. Anything probing that partition would open host files, as with a top-level qcow2 "
    "backing file (OSSA-2024-001). Flatten or remove the inner image.",
)
INCOMPLETE = FindingCode(
    "nested.incomplete",
    "The disk could not be fully checked for images hidden inside it.",
    "The disk has more partitions and probe places than [plugin.nested] max_probes, or its partition tables "
    "and nested headers need more than max_read bytes. Fail closed; raise the limits if such disks are "
    "expected.",
)
READ_FAILED = FindingCode(
    "nested.read_failed",
    "The disk's contents could not be read to look for images hidden inside it.",
    "qemu-img failed or ran out of its limits while reading guest sectors of a disk that passed every format "
    "check. Fail closed.",
)


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return [HEADER, UNSAFE, INCOMPLETE, READ_FAILED]


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a whole number above zero, got {value!r}")
    return value


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    return PluginOptions(SECTION, (
        PluginOption("max_probes", DEFAULT_MAX_PROBES, "Most places (partition starts, sector 1, 4 KiB LBA 1 ...) "
                     "probed for a nested header; a disk with more is rejected (nested.incomplete).", parse=_count),
        PluginOption("max_read", DEFAULT_MAX_READ, "Most guest bytes read for the partition tables and nested "
                     "headers (a disk read through qemu-img is fetched in 128 KiB blocks).", size=True,
                     parse=_qemu.positive_size),
        *_qemu.limit_options("convert (guest reads)", address_space=1 << 30, cpu_time=10, timeout=30.0,
                             stage="inspect"),
    ))


class _ReadFailed(Exception):
    """qemu-img could not read the guest; the message is the operator detail."""


class _Incomplete(Exception):
    """Not every place could be probed; the message is the operator detail."""


class _Budget:
    """Direct reads of the data, counted against ``max_read``."""

    def __init__(self, read: Callable[[int, int], bytes], budget: int) -> None:
        self._read = read
        self._left = budget

    def read(self, offset: int, size: int) -> bytes:
        if size > self._left:
            raise ReadBudgetExhausted
        self._left -= size
        return self._read(offset, size)


class _TablesRead(Exception):
    """Raised from ``read_layout``'s prefetch: the partition tables are read; its filesystem probes are not wanted."""


def _tables(read: Callable[[int, int], bytes], size: int, cap: int) -> GuestLayout:
    """The partition tables as :func:`read_layout` reads them; raises _Incomplete if they need more than ``cap``."""
    tables_read = False

    def stop(_ranges: list[tuple[int, int]]) -> None:
        nonlocal tables_read
        tables_read = True
        raise ReadBudgetExhausted  # ends read_layout with the partitions it has, before filesystem probes

    layout = read_layout(read, size, cap=cap, prefetch=stop)
    if not tables_read and any(code == "layout.read_budget" for code, _detail in layout.problems):
        raise _Incomplete(f"the partition tables need more than max_read ({cap} bytes)")
    return layout


def _views(read: Callable[[int, int], bytes], size: int, cap: int) -> list[tuple[str, GuestLayout]]:
    """The layout, and a second one where GPT headers sit at both LBA 1s: a 4Kn device reads the one at 4096."""
    views = [("", _tables(read, size, cap))]
    if size > 2 * GPT_4K and read(SECTOR, 8) == GPT_SIGNATURE and read(GPT_4K, 8) == GPT_SIGNATURE:
        def hide_512_gpt(offset: int, length: int) -> bytes:
            data = read(offset, length)  # as if LBA 1 of 512 bytes were blank
            low, high = max(SECTOR, offset), min(2 * SECTOR, offset + len(data))
            if low >= high:
                return data
            return data[: low - offset] + bytes(high - low) + data[high - offset :]

        views.append(("4 KiB GPT ", _tables(hide_512_gpt, size, cap)))
    return views


def _places(read: Callable[[int, int], bytes], size: int, cap: int, *, guest_zero: bool) -> dict[int, tuple[str, int]]:
    """Every place to probe: ``offset -> (name, span)``; raises _Incomplete if a table could not be read."""
    views = _views(read, size, cap)
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
    layout = views[0][1]
    if layout.partition_table == "gpt":  # a hybrid MBR: firmware or an MBR-only reader may follow it
        sector0 = read(0, SECTOR)
        if sector0[510:512] == b"\x55\xaa":
            for number in range(4):
                entry = sector0[446 + 16 * number : 462 + 16 * number]
                kind, first, count = entry[4], int.from_bytes(entry[8:12], "little"), int.from_bytes(entry[12:16],
                                                                                                      "little")
                if kind and kind != MBR_PROTECTIVE and kind not in MBR_EXTENDED and count:
                    add(first * SECTOR, f"MBR entry {number + 1}", count * SECTOR)
    for offset, name in FIXED_PLACES:
        add(offset, name, size - offset)
    if not any(view.partitions for _prefix, view in views):
        for offset, name in FIRST_PARTITION_PLACES:
            add(offset, name, size - offset)
    return places


def _probe(read: Callable[[int, int], bytes], size: int, options: Mapping[str, Any], *, guest_zero: bool,
           prefetch: Callable[[list[tuple[int, int]]], None] | None = None) -> list[tuple[str, str, tuple[str, ...]]]:
    """``(place, format, references)`` of every nested header; raises _Incomplete, _ReadFailed."""
    places = _places(read, size, options["max_read"], guest_zero=guest_zero)
    if len(places) > options["max_probes"]:
        raise _Incomplete(f"{len(places)} places to probe, max_probes {options['max_probes']}")
    if prefetch is not None:
        prefetch([(offset, SECTOR) for offset in sorted(places)])
    found = []
    for offset, (name, span) in sorted(places.items()):
        fmt = sniff(read(offset, SECTOR))
        if fmt is None:
            continue

        def inner(at: int, length: int, base: int = offset) -> bytes:
            return read(base + at, length)

        found.append((f"{name} (byte {offset})", fmt, examine(fmt, inner, span)))
    return found


def _guest(context: ImportContext, options: Mapping[str, Any]) -> list[tuple[str, str, tuple[str, ...]]] | None:
    """Probe the current layer's guest disk; None if it is not a disk read here."""
    facts = context.facts
    disk_format, size = facts.get("disk_format"), facts.get("virtual_size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        return None
    if disk_format in DIRECT:
        budget = _Budget(context.data.read_at, options["max_read"])
        return _probe(budget.read, size, options, guest_zero=False)
    if disk_format not in THROUGH_QEMU or disk_format not in context.enabled_plugins:
        return None  # LUKS (encrypted), or its format plugin is off: qemu-img must not open it
    driver, limits = _qemu.DRIVERS[disk_format], _qemu.limits_of(options)
    with _qemu.linked(context) as link:
        def fetch(ranges: list[tuple[int, int]]) -> bytes:
            try:
                return _qemu.read_guest(context, options["binary"], link, driver, ranges, limits)
            except _qemu.QemuError as exc:
                raise _ReadFailed(f"{exc.kind}: {exc.detail}") from None

        blocks = _Blocks(fetch, size, options["max_read"])
        return _probe(blocks.read, size, options, guest_zero=True, prefetch=blocks.prefetch)


def _join(parts: list[str]) -> str:
    text = "; ".join(parts)
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


@hookimpl(trylast=True)
def importhooks_inspect(context: ImportContext) -> None:
    """Probe a bare disk layer every other check passed for nested disk-format headers."""
    if context.has_errors() or context.facts.get("container_format", "bare") != "bare":
        return
    options = context.options(SECTION)
    try:
        found = _guest(context, options)
    except (_Incomplete, ReadBudgetExhausted) as exc:
        context.report(INCOMPLETE, detail=str(exc) or f"more than max_read ({options['max_read']} bytes) needed")
        return
    except (_ReadFailed, _qemu.QemuError) as exc:
        context.report(READ_FAILED, detail=str(exc))
        return
    if not found:
        return
    context.facts["nested_headers"] = [f"{place}: {fmt}" for place, fmt, _refs in found]
    unsafe = [f"{place}: {'; '.join(refs)}" for place, _fmt, refs in found if refs]
    if unsafe:
        context.report(UNSAFE, detail=_join(unsafe))
    safe = [f"{place}: {fmt}" for place, fmt, refs in found if not refs]
    if safe:
        context.report(HEADER, detail=_join(safe))
