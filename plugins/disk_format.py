"""Detects the real disk format from the data, never from the claim (``inspect``).

Built on oslo.utils' reviewed ``format_inspector``: the data goes once through its
``InspectWrapper`` (the same pass computes the checksums and keeps the last sector),
then the matched inspector's safety checks run. What it finds becomes facts
(``disk_format``, ``virtual_size``, ``actual_size``, ``partition_table``,
``subformat``) and findings: polyglots, damaged headers, a claim that does not match
the data, a virtual size over the limit. Format-specific rules (qcow2, VMDK, VHD ...)
live in their own plugins, which read the facts recorded here.

Where oslo.utils is wrong or too narrow, this module decides instead:

* it names every disk with an MBR boot signature ``gpt``: here a GPT is told from a
  plain MBR by the ``EFI PART`` header, and both are ``raw`` disks;
* a filesystem boot sector at sector 0 (NTFS, exFAT, FAT) carries the same boot
  signature; oslo's MBR safety check would reject it, but it is a raw disk with no
  partition table;
* it cannot see a fixed VHD, whose only structure is a footer in the last sector;
* it treats an ISO whose system area holds an MBR or GPT (a hybrid installer ISO)
  as two formats: that combination is one image and is accepted as ``iso``.
"""

from __future__ import annotations

import struct

from oslo_utils.imageutils import format_inspector as fi

from importhooks import FindingCode, ImportContext, hookimpl
from importhooks.units import format_size

POLYGLOT = FindingCode(
    "format.polyglot",
    "The image matches more than one disk format.",
    "The data carries the headers of several formats at once, a way to make one tool see a harmless "
    "image and another a dangerous one. Only a hybrid ISO (ISO 9660 with an MBR or GPT in its system "
    "area) is accepted as one format. Rebuild the image with one format.",
)
INVALID = FindingCode(
    "format.invalid",
    "The image's disk format header is damaged or incomplete.",
    "The data starts like a known disk format but its header could not be parsed completely "
    "(truncated or corrupt), so it can be neither trusted as that format nor as raw data.",
)
CLAIM_MISMATCH = FindingCode(
    "format.claim_mismatch",
    "The image's disk format is not the one given in the request.",
    "The claimed disk_format differs from the format detected in the data. A qcow2 claimed as raw is the "
    "classic path to a backing-file exploit. Set disk_format to the real format.",
)
VIRTUAL_SIZE_TOO_LARGE = FindingCode(
    "format.virtual_size_too_large",
    "The image's virtual disk is larger than this cloud accepts.",
    "The virtual size declared by the disk header is over max_image_size.",
)
NOT_ALLOWED = FindingCode(
    "format.not_allowed",
    "This cloud does not accept the image's disk format.",
    "The format detected in the data is not in the disk_formats setting (whatever the claim said).",
)
UNSAFE = FindingCode(
    "format.unsafe",
    "The image failed a disk format safety check.",
    "A safety check of oslo.utils' format inspector failed; the detail names it.",
)
_SAFETY_CODES = {
    "backing_file": FindingCode(
        "qcow2.backing_file",
        "The image refers to a backing file; only self-contained images are accepted.",
        "A qcow2 backing file makes the hypervisor open another file, possibly one on the host "
        "(OSSA-2024-001). Flatten the image with 'qemu-img convert'.",
    ),
    "data_file": FindingCode(
        "qcow2.data_file",
        "The image stores its data in an external file; only self-contained images are accepted.",
        "A qcow2 external data file names a host file that would be read or written. Flatten the image.",
    ),
    "unknown_features": FindingCode(
        "qcow2.unknown_features",
        "The image uses qcow2 features this cloud does not support.",
        "The qcow2 header sets incompatible feature bits the inspector does not know.",
    ),
    "descriptor": FindingCode(
        "vmdk.descriptor",
        "The VMDK image refers to files outside itself or has an unsupported layout.",
        "The VMDK descriptor names extents other than the sparse data in this file (FLAT, VMFS or other "
        "files), which would make the hypervisor read host files.",
    ),
    "footer": FindingCode(
        "vmdk.footer",
        "The VMDK image's footer is invalid.",
        "The stream-optimized VMDK footer does not match its header.",
    ),
    "mbr": FindingCode(
        "partition.mbr_invalid",
        "The disk's partition table is invalid.",
        "The MBR (or the protective MBR of a GPT disk) is malformed: bad boot flags, no partition, or a "
        "GPT protective entry with other partitions beside it.",
    ),
}
#: Leading bytes of the formats oslo.utils knows, to tell "damaged X" from "raw".
MAGICS = {
    b"QFI\xfb": "qcow2",
    b"KDMV": "vmdk",
    b"# Disk DescriptorFile": "vmdk",
    b"conectix": "vhd",
    b"vhdxfile": "vhdx",
    b"QED\x00": "qed",
    b"LUKS\xba\xbe": "luks",
}
VDI_SIGNATURE = (0x40, b"\x7f\x10\xda\xbe")
SECTOR = 512


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return [POLYGLOT, INVALID, CLAIM_MISMATCH, VIRTUAL_SIZE_TOO_LARGE, NOT_ALLOWED, UNSAFE, *_SAFETY_CODES.values()]


class _Tail:
    """Passes chunks through, keeping the last sector seen (a fixed VHD's footer)."""

    def __init__(self, chunks: object) -> None:
        self._chunks = iter(chunks)  # type: ignore[call-overload]
        self.last = b""

    def __iter__(self) -> _Tail:
        return self

    def __next__(self) -> bytes:
        chunk: bytes = next(self._chunks)
        self.last = (self.last + chunk)[-SECTOR:] if len(chunk) < SECTOR else chunk[-SECTOR:]
        return chunk


def is_vhd_footer(sector: bytes) -> bool:
    """A VHD footer: cookie, and a one's-complement checksum over the 512 bytes that matches."""
    if len(sector) != SECTOR or not sector.startswith(b"conectix"):
        return False
    stored = int.from_bytes(sector[64:68], "big")
    total = sum(sector[:64]) + sum(sector[68:])
    return (~total & 0xFFFFFFFF) == stored


def boot_sector_filesystem(sector0: bytes) -> str | None:
    """The filesystem whose boot sector fills sector 0 (these carry an MBR-like 0x55AA), or None."""
    if sector0[3:11] == b"NTFS    ":
        return "ntfs"
    if sector0[3:11] == b"EXFAT   ":
        return "exfat"
    if sector0[82:87] == b"FAT32" or sector0[54:59] in (b"FAT12", b"FAT16", b"FAT  "):
        return "vfat"
    return None


def partition_table(head: bytes) -> str:
    """``gpt``, ``mbr`` or ``none`` for the first sectors of a raw disk."""
    if head[SECTOR : SECTOR + 8] == b"EFI PART" or head[4096 : 4096 + 8] == b"EFI PART":
        return "gpt"
    if head[510:512] == b"\x55\xaa" and boot_sector_filesystem(head[:SECTOR]) is None:
        return "mbr"
    return "none"


def _looks_like(head: bytes) -> str | None:
    for magic, name in MAGICS.items():
        if head.startswith(magic):
            return name
    offset, signature = VDI_SIGNATURE
    if head[offset : offset + 4] == signature:
        return "vdi"
    return None


def _safety_check(context: ImportContext, inspector: fi.FileInspector, detected: str, *, skip: set[str]) -> None:
    try:
        inspector.safety_check()
    except fi.SafetyCheckFailed as exc:
        for check, failure in exc.failures.items():
            if check not in skip:
                context.report(_SAFETY_CODES.get(check, UNSAFE), detail=f"{detected}: {check}: {failure}")
    except Exception as exc:  # noqa: BLE001 - malformed headers surface as any exception in the inspector
        context.reject(INVALID, detail=f"{detected}: safety check could not run: {exc!r}")


@hookimpl(tryfirst=True)
def importhooks_inspect(context: ImportContext) -> None:
    tail = _Tail(context.data.stream())
    wrapper = fi.InspectWrapper(tail)  # type: ignore[arg-type]
    for _chunk in wrapper:
        pass
    matches = {str(i): i for i in (wrapper.formats or [])}
    head = context.data.read_at(0, 4096 + SECTOR)
    facts = context.facts
    skip: set[str] = set()
    names = set(matches)
    if names == {"iso", "gpt"}:  # a hybrid installer ISO: one image, two views
        inspector, detected = matches["iso"], "iso"
        facts["partition_table"] = partition_table(head)
    elif len(names) > 1:
        context.reject(POLYGLOT, f"The image matches more than one disk format: {', '.join(sorted(names))}.",
                       detail=f"formats {sorted(names)}")
    elif names == {"gpt"}:
        inspector, detected = matches["gpt"], "raw"
        facts["partition_table"] = partition_table(head)
        if facts["partition_table"] == "none":
            skip.add("mbr")  # a filesystem boot sector, not an MBR
    elif names == {"raw"} or not names:
        inspector, detected = matches.get("raw") or fi.RawFileInspector(), "raw"
        looks = _looks_like(head)
        if looks is not None:
            context.reject(INVALID, f"The image starts like a {looks} image but is not a valid one.",
                           detail=f"{looks} magic at offset 0, inspector found no valid {looks} header")
        if is_vhd_footer(tail.last) and context.data.size > SECTOR:
            detected = "vhd"
            facts["subformat"] = "fixed"
        else:
            facts["partition_table"] = partition_table(head)
    else:
        (detected,) = names
        inspector = matches[detected]
        if detected != "vhd" and is_vhd_footer(tail.last):
            context.reject(POLYGLOT, f"The image matches more than one disk format: {detected}, vhd.",
                           detail=f"{detected} with a VHD footer in its last sector")
    facts["disk_format"] = detected
    _safety_check(context, inspector, detected, skip=skip)
    try:
        if facts.get("subformat") == "fixed":
            (virtual_size,) = struct.unpack(">Q", tail.last[48:56])  # the footer's current size
        else:
            virtual_size = int(inspector.virtual_size)
    except Exception as exc:  # noqa: BLE001 - a malformed header must end in a finding
        context.reject(INVALID, detail=f"{detected}: virtual size unreadable: {exc!r}")
    facts["virtual_size"] = virtual_size
    facts["actual_size"] = context.data.size
    _check_claims_and_limits(context, detected, virtual_size)


def _check_claims_and_limits(context: ImportContext, detected: str, virtual_size: int) -> None:
    claimed = context.claims.disk_format
    if claimed is not None and context.data.parent is None and claimed != detected:
        context.report(CLAIM_MISMATCH, f"The image is {detected}, not {claimed} as the request says.",
                       detail=f"claimed {claimed!r}, detected {detected!r}")
    if detected not in context.settings.disk_formats:
        context.report(NOT_ALLOWED, detail=f"detected {detected!r}")
    limit = context.settings.max_image_size
    if virtual_size > limit:
        context.report(VIRTUAL_SIZE_TOO_LARGE,
                       f"The image's virtual disk is larger than the limit of {format_size(limit)}.",
                       detail=f"virtual size {virtual_size}, limit {limit}")
