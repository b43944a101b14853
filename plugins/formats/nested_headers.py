"""Finds disk-format headers nested inside a guest disk: polyglots a prober would follow (``inspect``).

A raw disk whose partition starts with a qcow2 header is a raw disk to qemu, but the guest
kernel, libguestfs, ``qemu-img info /dev/sda1`` or a volume service that later probes the
partition as a block device sees a qcow2, and follows its backing file. This plugin reads the
places such readers probe on the guest disk (raw, ISO, or through a qcow2/VMDK/VHD/VHDX/VDI/QED
disk's own mapping):

* the start of every partition, of the MBR and of the GPT (both, where a hybrid MBR makes
  firmware and kernel disagree on the table; both GPTs where there is one for each sector
  size; the MBR entries Linux reads in a FAT or NTFS boot sector), including logical partitions
  and BSD disklabel slices (:mod:`._nested_places`);
* sector 1 and the 4096-byte LBA 1 (what a reader skipping the MBR, or assuming 4 KiB sectors,
  reads first); on a disk with no partition, the conventional first-partition starts (sector 63
  and 1 MiB), where the header appears as soon as the disk is partitioned with defaults;
* guest offset 0 of a wrapped disk (a qcow2 whose guest disk is itself a qcow2).

A nested qcow2, QED, VMDK, VHDX, VHD, VDI, bochs, parallels or cloop header (what qemu's probe
would see in the 512 bytes there) is a warning (``nested.header``); one that names another file,
as a backing or data file, parent or extent (:mod:`._nested_formats`), or that cannot be checked
within the read limits, is an error (``nested.unsafe``). A disk with more
places than ``max_probes``, or whose partition tables and headers need more than ``max_read``
bytes, is rejected (``nested.incomplete``): fail closed. Runs ``trylast`` in ``inspect``, after
every other check, and only on a bare disk layer no check rejected (so qemu-img only reads disks
its format plugin passed). The guest is read the way ``os_type`` reads it (a
:class:`~importhooks_plugins.guest._guest_blocks.GuestBlocks` over :func:`._qemu.read_guest`;
partitions from :func:`._guest_layout.read_layout`).
Fact: ``nested_headers``, the places and formats found.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from importhooks import FindingCode, ImportContext, PluginOption, PluginOptions, Severity, hookimpl

from ..guest._guest_blocks import DIRECT, THROUGH_QEMU, GuestBlocks
from ..guest._guest_layout import ReadBudgetExhausted
from . import _qemu
from ._nested_formats import PROBE_BYTES, SECTOR, examine, sniff
from ._nested_places import Incomplete, places_to_probe

SECTION = "nested"
DEFAULT_MAX_PROBES = 128
DEFAULT_MAX_READ = 32 << 20
#: A disk read directly reads at most twice its size plus this, so the pipeline's read budget never stops it.
DIRECT_SLACK = 512 << 10
MAX_DETAIL = 2000

HEADER = FindingCode(
    "nested.header",
    "The disk holds another disk image's header inside it.",
    "A partition's first sector, sector 1, the 4 KiB LBA 1 or the guest disk of a wrapped image starts "
    "with a qcow2, QED, VMDK, VHDX, VHD, VDI, bochs, parallels or cloop header. A hypervisor, guest tool "
    "or volume service that probes that partition as a block device would open it as that format. Nothing "
    "in it names another file, so the import is accepted; the detail lists the places.",
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
    "The disk has more partitions and probe places than [plugin.nested] max_probes, its partition tables "
    "and nested headers need more than max_read bytes, or (os_type disabled: it rejects these itself) it "
    "has more GPT entries (256) or logical partitions (64) than the layout reader reads, where Linux reads "
    "on. Fail closed; raise the limits if such disks are expected.",
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


def _probe(context: ImportContext, read: Callable[[int, int], bytes], size: int, options: Mapping[str, Any], *,
           guest_zero: bool, prefetch: Callable[[list[tuple[int, int]]], None] | None = None,
           ) -> list[tuple[str, str, tuple[str, ...]]]:
    """``(place, format, references)`` of every nested header; raises Incomplete, _ReadFailed."""
    # os_type rejects a table with partitions past the layout reader's limits; without it, this plugin does
    places = places_to_probe(read, size, options["max_read"], guest_zero=guest_zero,
                             unread_partitions="os_type" not in context.enabled_plugins)
    if len(places) > options["max_probes"]:
        raise Incomplete(f"{len(places)} places to probe, max_probes {options['max_probes']}")
    if prefetch is not None:
        prefetch([(offset, SECTOR * -(-min(PROBE_BYTES, span) // SECTOR)) for offset, (_name, span) in places.items()])
    found = []
    for offset, (name, span) in sorted(places.items()):
        fmt = sniff(read(offset, min(PROBE_BYTES, span)))  # what qemu's probe of a device there would see
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
        # within the pipeline's read budget (max_read_passes times the size) whatever the disk holds
        budget = _Budget(context.data.read_at, min(options["max_read"], 2 * context.data.size + DIRECT_SLACK))
        return _probe(context, budget.read, size, options, guest_zero=False)
    if disk_format not in THROUGH_QEMU or disk_format not in context.enabled_plugins:
        return None  # LUKS (encrypted), or its format plugin is off: qemu-img must not open it
    driver, limits = _qemu.DRIVERS[disk_format], _qemu.limits_of(options)
    with _qemu.linked(context) as link:
        def fetch(ranges: list[tuple[int, int]]) -> bytes:
            try:
                return _qemu.read_guest(context, options["binary"], link, driver, ranges, limits)
            except _qemu.QemuError as exc:
                raise _ReadFailed(f"{exc.kind}: {exc.detail}") from None

        blocks = GuestBlocks(fetch, size, options["max_read"])
        return _probe(context, blocks.read, size, options, guest_zero=True, prefetch=blocks.prefetch)


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
    except (Incomplete, ReadBudgetExhausted) as exc:
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
