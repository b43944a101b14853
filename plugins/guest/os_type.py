"""Verifies the ``os_type`` claim against the guest disk's contents (``set_protected_properties``).

Glance can make ``os_type`` a protected property; it cannot tell whether the claim is
true. This plugin reads the guest's partition table and the filesystem signature of each
partition (:mod:`._guest_layout`): no mounting, no executing, no guest tools.

* It runs once, after the last ``inspect``/``sanitize`` pass, so only on a disk that passed
  every disk-inspection check; inside an OVA or a compressed file, the unpacked disk is read.
* A raw disk (or ISO) is read directly. A qcow2, VMDK, VHD, VHDX, VDI or QED disk is read at
  guest offsets through its own mapping by ``qemu-img convert`` of ``json:`` raw slices
  (:func:`._qemu.read_guest`), under ``ProcessLimits``, backing files disabled, and only if that
  format's own plugin ran. Blocks of 128 KiB are fetched and cached; a layout costs two or
  three qemu-img runs, whatever the disk's size, plus about one per directory looked up on
  installation media, fewer when ``nested_headers`` already fetched the blocks or a qcow2's
  own tables leave them unallocated (:mod:`..formats._guest_reads`). A LUKS disk is
  encrypted: nothing to read.
* Every partition table is read and every partition any of them lists is checked, and the whole
  disk is probed beside a table: where firmware, Linux and Windows could disagree, the union is read
  (:mod:`._partition_tables`). ISO 9660, UDF, FAT and exFAT filesystems are searched for Windows
  setup files in all their trees and names (:mod:`._optical_media`, :mod:`._fat_media`,
  :mod:`._exfat_media`).
* Verdicts: Windows evidence (an NTFS, BitLocker or ReFS volume, a partition type only Windows
  makes, Windows installation media) with any other claim → ``os_type.mismatch`` (reject); a ``windows`` claim with only
  Linux filesystems → ``os_type.not_windows`` (warning); a claim with nothing to tell by →
  ``os_type.unverified`` at the ``unverified`` option's severity (default info, accept).
  A disk that cannot be read is ``os_type.read_failed`` (reject: fail closed).
* Facts: ``partition_table``, ``filesystems``, ``os_type_detected``. Properties:
  ``os_type`` (the claim once not contradicted, or what was detected when nothing was claimed),
  ``importhooks_os_type_detected``, ``importhooks_partition_table``, ``importhooks_filesystems``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from importhooks import FindingCode, ImportContext, PluginOption, PluginOptions, Severity, hookimpl

from ..formats import _qemu
from ._filesystems import OsEvidence, os_evidence
from ._guest_blocks import DIRECT, THROUGH_QEMU, GuestBlocks
from ._guest_layout import GuestLayout, read_layout
from ._partition_codes import CODES as LAYOUT_CODES

SECTION = "os_type"
#: Property names this plugin sets (all protected by the default ``protected_properties``).
PROPERTY_DETECTED = "importhooks_os_type_detected"
PROPERTY_TABLE = "importhooks_partition_table"
PROPERTY_FILESYSTEMS = "importhooks_filesystems"

MISMATCH = FindingCode(
    "os_type.mismatch",
    "The disk holds Windows, but the image claims another os_type. Import it with os_type windows.",
    "The claimed os_type is not windows, yet the guest disk has Windows evidence: an NTFS, BitLocker or "
    "ReFS volume, a partition type only Windows makes (Microsoft reserved, Windows recovery, dynamic "
    "disk, Storage Spaces), or Windows installation media (bootmgr, efi/microsoft, sources/install.wim or "
    "install.esd in an ISO 9660, Joliet, Rock Ridge, UDF, FAT or exFAT tree), found through any partition table or "
    "reader of the disk. The detail lists the evidence. Clouds that "
    "license Windows per instance protect os_type for exactly this case.",
)
NOT_WINDOWS = FindingCode(
    "os_type.not_windows",
    "The image claims os_type windows, but the disk holds only Linux filesystems.",
    "No NTFS filesystem or Windows-only partition type was found, and at least one Linux filesystem was. "
    "The claim is kept (it costs the user a licence, not the cloud).",
    Severity.WARNING,
)
UNVERIFIED = FindingCode(
    "os_type.unverified",
    "The disk's operating system could not be verified.",
    "The request claims an os_type, but nothing on the disk tells Windows from Linux: it is empty, "
    "encrypted, holds only filesystems both use (FAT, exFAT, ISO 9660 or UDF without Windows setup files), "
    "or its format is not read here. The severity is the plugin.os_type.unverified option (default info: "
    "accept).",
    Severity.INFO,
)
READ_FAILED = FindingCode(
    "os_type.read_failed",
    "The disk's contents could not be read to verify its operating system.",
    "qemu-img failed, ran out of its limits or time while reading a few guest sectors of a disk that "
    "passed every format check, or the read budget (plugin.os_type.max_read) ran out. Fail closed.",
)


def _severity(value: object) -> Severity:
    try:
        return Severity(value)
    except ValueError:
        raise ValueError(f"expected info, warning or error, got {value!r}") from None


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return [MISMATCH, NOT_WINDOWS, UNVERIFIED, READ_FAILED, *LAYOUT_CODES.values()]


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    return PluginOptions(SECTION, (
        PluginOption("unverified", Severity.INFO, "Severity of os_type.unverified (info, warning or error): "
                     "error rejects every disk whose operating system cannot be told.", parse=_severity),
        PluginOption("max_read", 4 << 20, "Most guest bytes read to find the partition table and filesystems.",
                     size=True, parse=_qemu.positive_size),
        *_qemu.limit_options("convert (guest reads)", address_space=1 << 30, cpu_time=10, timeout=30.0,
                             stage="set_protected_properties"),
    ))


class _Unreadable(Exception):
    """The guest cannot be read here; the message says why (an operator detail)."""


class _ReadFailed(Exception):
    """Reading the guest failed; the message is the operator detail."""


def _layout(context: ImportContext, options: Mapping[str, Any]) -> GuestLayout:
    """The guest's layout, read directly or through qemu-img; raises _Unreadable or _ReadFailed."""
    facts = context.facts
    disk_format = facts.get("disk_format")
    size = facts.get("virtual_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _Unreadable("no virtual size was found (is the disk_format plugin disabled?)")
    cap = options["max_read"]
    if disk_format in DIRECT:
        return read_layout(context.data.read_at, size, cap=cap)
    if disk_format == "luks":
        raise _Unreadable("the disk is LUKS-encrypted")
    if disk_format not in THROUGH_QEMU:
        raise _Unreadable(f"disk format {disk_format!r} is not read by this plugin")
    if disk_format not in context.enabled_plugins:
        raise _Unreadable(f"the {disk_format} plugin is disabled: its checks did not run, so qemu-img must "
                          "not open the disk")
    driver = _qemu.DRIVERS[disk_format]
    limits = _qemu.limits_of(options)
    with _qemu.linked(context) as link:
        def fetch(ranges: list[tuple[int, int]]) -> bytes:
            try:
                return _qemu.read_guest(context, options["binary"], link, driver, ranges, limits)
            except _qemu.QemuError as exc:
                raise _ReadFailed(f"{exc.kind}: {exc.detail}") from None

        blocks = GuestBlocks(fetch, size, 2 * cap)
        return read_layout(blocks.read, size, cap=cap, prefetch=blocks.prefetch)


#: VMware guest ids of Windows (``windows9_64Guest``, ``winNetStandardGuest``, ``win2000ServGuest``...).
WINDOWS_GUEST_ID = re.compile(r"win", re.IGNORECASE | re.ASCII)


def _with_descriptor(context: ImportContext, evidence: OsEvidence) -> OsEvidence:
    """Add an OVF descriptor naming a Windows guest (``ovf_os_type`` of an OVA layer) to the evidence.

    The descriptor is the uploader's own text: it can add evidence of Windows, never remove it.
    """
    for layer in context.layers:
        guest = layer.facts.get("ovf_os_type")
        if isinstance(guest, str) and WINDOWS_GUEST_ID.match(guest):
            return OsEvidence((*evidence.windows, f"OVF descriptor: guest {guest!r}"), evidence.linux)
    return evidence


def _filesystems(layout: GuestLayout) -> list[str]:
    found = [p.filesystem for p in layout.partitions] + [layout.filesystem]
    return list(dict.fromkeys(fs for fs in found if fs is not None))


def _verdict(context: ImportContext, evidence: OsEvidence, options: Mapping[str, Any]) -> str | None:
    """Report what the evidence says of the claim; the verified ``os_type``, or None."""
    claim = context.claims.os_type
    detected = evidence.detected
    if evidence.windows and claim is not None and claim != "windows":
        context.report(MISMATCH, detail=f"claimed {claim!r}; Windows evidence: {'; '.join(evidence.windows)}"
                       + (f"; Linux evidence too: {'; '.join(evidence.linux)}" if evidence.linux else ""))
        return None
    if claim == "windows" and detected == "linux":
        context.report(NOT_WINDOWS, detail=f"Linux evidence: {'; '.join(evidence.linux)}")
    if detected == "unknown" and claim is not None:
        context.report(UNVERIFIED, detail="no Windows or Linux filesystem found", severity=options["unverified"])
    return claim if claim is not None else None if detected == "unknown" else detected


@hookimpl
def importhooks_set_protected_properties(context: ImportContext) -> dict[str, str] | None:
    options = context.options(SECTION)
    facts = context.facts
    claim = context.claims.os_type
    try:
        layout = _layout(context, options)
    except _Unreadable as exc:
        facts["os_type_detected"] = "unknown"
        if claim is None:
            return {PROPERTY_DETECTED: "unknown"}
        context.report(UNVERIFIED, detail=str(exc), severity=options["unverified"])
        return {"os_type": claim, PROPERTY_DETECTED: "unknown"}
    except _ReadFailed as exc:
        context.report(READ_FAILED, detail=str(exc))
        return None
    for code, detail in layout.problems:
        context.report(LAYOUT_CODES[code], detail=detail)
    evidence = _with_descriptor(context, os_evidence(layout))
    filesystems = _filesystems(layout)
    facts["partition_table"] = layout.partition_table
    facts["filesystems"] = filesystems
    facts["os_type_detected"] = evidence.detected
    properties = {PROPERTY_DETECTED: evidence.detected, PROPERTY_TABLE: layout.partition_table}
    if filesystems:
        properties[PROPERTY_FILESYSTEMS] = ",".join(filesystems)
    verified = _verdict(context, evidence, options)
    if verified is not None:
        properties["os_type"] = verified
    return properties
