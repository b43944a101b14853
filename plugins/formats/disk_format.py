"""Detects the real disk format from the data, never from the claim (``inspect``).

Built on oslo.utils' reviewed ``format_inspector``: the data goes once through its
inspectors (driven by :mod:`._detector`, which mends two gaps of oslo's
``InspectWrapper``; the same pass computes the checksums and keeps the last
sector), then the matched inspector's safety checks run. What it finds becomes facts
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
  as two formats: that combination is one image and is accepted as ``iso``;
* its qcow2 check counts the extended-L2 feature bit as unknown, and it bans QED
  outright: the ``qcow2`` and ``qed`` plugins check those headers instead (QED only
  while the ``qed`` plugin is enabled);
* it takes a dynamic VHD's virtual size from the footer's original size, qemu from
  its current size: the current size is used here (the ``vhd`` plugin rejects a
  footer where the two differ);
* it takes any printable text containing ``createType="`` for a VMDK descriptor;
  here a text descriptor is a VMDK only where qemu's own probe says so (its first
  line that is not a comment is ``version=N``), so other text is raw, and a
  ``COWD`` (VMware 3) sparse extent, which qemu probes as VMDK, is one too;
* it does not know parallels, bochs or cloop images, which qemu's probe
  recognises: those are never raw here (``format.not_allowed``);
* it cannot read an embedded VMDK descriptor that is not ASCII (qemu reads the
  bytes, VMware UTF-8) and then refuses it: while the ``vmdk`` plugin is enabled,
  it checks the embedded descriptor of a sparse VMDK instead (a superset of
  oslo's rules), and the virtual size is the header's capacity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from importhooks import FindingCode, ImportContext, PluginOption, PluginOptions, hookimpl
from importhooks.units import format_size, parse_size

from ._detector import (
    SECTOR,
    Detector,
    is_vhd_footer,
    looks_like,
    partition_table,
    qemu_only_format,
    qemu_probes_vmdk,
)

if TYPE_CHECKING:
    from oslo_utils.imageutils import format_inspector as fi

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
#: The qcow2 incompatible feature bits qemu knows (dirty, corrupt, external data
#: file, compression type, extended L2); oslo.utils does not know the last one.
QCOW2_KNOWN_INCOMPATIBLE = 0x1F
CHUNK_SIZE = 1 << 20

OPTIONS = PluginOptions("disk_format", (
    PluginOption("chunk_size", CHUNK_SIZE, "Bytes read per step of the streaming pass (tests vary it).",
                 parse=lambda value: _positive_size(value)),
))


def _positive_size(value: object) -> int:
    size = parse_size(value)
    if size < 1:
        raise ValueError("the chunk size must be at least 1 byte")
    return size


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    return OPTIONS


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return [POLYGLOT, INVALID, CLAIM_MISMATCH, VIRTUAL_SIZE_TOO_LARGE, NOT_ALLOWED, UNSAFE, *_SAFETY_CODES.values()]


def _safety_check(context: ImportContext, inspector: fi.FileInspector, detected: str, *, skip: set[str]) -> None:
    from oslo_utils.imageutils import format_inspector as fi  # heavy: loaded on first use

    try:
        inspector.safety_check()
    except fi.SafetyCheckFailed as exc:
        for check, failure in exc.failures.items():
            if check not in skip:
                context.report(_SAFETY_CODES.get(check, UNSAFE), detail=f"{detected}: {check}: {failure}")
    except Exception as exc:  # noqa: BLE001 - malformed headers surface as any exception in the inspector
        context.reject(INVALID, detail=f"{detected}: safety check could not run: {exc!r}")


def _skipped_checks(context: ImportContext, detected: str, layout: str | None) -> set[str]:
    """oslo.utils safety checks that importhooks replaces for this image (see the module doc)."""
    if layout == "none":
        return {"mbr"}  # a filesystem boot sector, not an MBR
    if detected == "qed" and "qed" in context.enabled_plugins:
        return {"banned"}
    if detected == "vmdk" and "vmdk" in context.enabled_plugins and context.data.read_at(0, 4) == b"KDMV":
        return {"descriptor"}  # the vmdk plugin parses the embedded descriptor, UTF-8 too
    if detected == "qcow2":
        header = context.data.read_at(0, 80)
        if header[4:8] == b"\0\0\0\3" and len(header) == 80:
            features = int.from_bytes(header[72:80], "big")
            if features & ~QCOW2_KNOWN_INCOMPATIBLE == 0:
                return {"unknown_features"}
    return set()


def _detect(context: ImportContext, detector: Detector, head: bytes) -> tuple[str, fi.FileInspector | None]:
    """Name the format; record layout facts; reject polyglots and damaged magic."""
    facts = context.facts
    matches = detector.matches()
    if "vmdk" in matches and not qemu_probes_vmdk(head):  # text oslo takes for a descriptor, qemu for raw
        del matches["vmdk"]
    names = set(matches)
    footer_at_end = is_vhd_footer(detector.last_sector) and context.data.size > SECTOR
    if footer_at_end and names - {"gpt", "vhd"}:  # a VHD footer after another format's data
        context.reject(POLYGLOT, f"The image matches more than one disk format: {', '.join(sorted(names))}, vhd.",
                       detail=f"{sorted(names)} with a VHD footer in its last sector")
    if names == {"iso", "gpt"}:  # a hybrid installer ISO: one image, two views
        facts["partition_table"] = partition_table(head)
        return "iso", matches["iso"]
    if len(names) > 1:
        context.reject(POLYGLOT, f"The image matches more than one disk format: {', '.join(sorted(names))}.",
                       detail=f"formats {sorted(names)}")
    if names - {"gpt"}:
        (detected,) = names
        return detected, matches[detected]
    looks = looks_like(head)
    if looks is not None and not (looks == "vhd" and footer_at_end):
        context.reject(INVALID, f"The image starts like a {looks} image but is not a valid one.",
                       detail=f"{looks} magic at offset 0, inspector found no valid {looks} header")
    qemu_only = qemu_only_format(head)
    if qemu_only is not None:  # raw to oslo.utils, a disk format to qemu's probe
        context.reject(NOT_ALLOWED, f"This cloud does not accept the image's disk format ({qemu_only}).",
                       detail=f"{qemu_only} header at offset 0: qemu probes it, oslo.utils does not know it")
    if footer_at_end:  # raw data, perhaps partitioned, then a footer: oslo.utils cannot see it
        facts["subformat"] = "fixed"
        return "vhd", None
    facts["partition_table"] = partition_table(head)
    from oslo_utils.imageutils import format_inspector as fi  # heavy: loaded on first use

    return "raw", matches.get("gpt") or fi.RawFileInspector()


@hookimpl(tryfirst=True)
def importhooks_inspect(context: ImportContext) -> None:
    if context.facts.get("container_format", "bare") != "bare":
        return  # a compressed stream or an archive: the disk inside is inspected once unpacked
    detector = Detector()
    chunk_size = context.options("disk_format").get("chunk_size", CHUNK_SIZE)
    for _chunk in detector.feed(context.data.stream(chunk_size)):
        pass
    facts = context.facts
    if detector.broken:  # its header made the inspector fail: name it, let its own plugin say more
        name, exc = sorted(detector.broken.items())[0]
        facts["disk_format"] = name
        context.report(INVALID, f"The image starts like a {name} image but is not a valid one.",
                       detail=f"{name} inspector failed: {exc!r}")
        return
    head = context.data.read_at(0, 4096 + SECTOR)
    detected, inspector = _detect(context, detector, head)
    facts["disk_format"] = detected
    if inspector is not None:
        _safety_check(context, inspector, detected,
                      skip=_skipped_checks(context, detected, facts.get("partition_table")))
    try:
        if detected == "raw":
            virtual_size = context.data.size
        elif inspector is None:  # fixed VHD: the footer's current size
            virtual_size = int.from_bytes(detector.last_sector[48:56], "big")
        elif detected == "vhd":  # dynamic VHD: the current size, as qemu reads it (oslo reads the original)
            virtual_size = int.from_bytes(head[48:56], "big")
        elif detected == "vmdk" and head.startswith(b"KDMV"):  # oslo says 0 for a descriptor it cannot read
            virtual_size = int.from_bytes(head[12:20], "little") * SECTOR
        else:
            virtual_size = int(inspector.virtual_size)
    except Exception as exc:  # noqa: BLE001 - a malformed header must end in a finding
        context.reject(INVALID, detail=f"{detected}: virtual size unreadable: {exc!r}")
    if virtual_size < 0 or (detected == "iso" and virtual_size > context.data.size):
        context.report(INVALID, f"The image's {detected} header is damaged or the image is truncated.",
                       detail=f"{detected}: virtual size {virtual_size}, file size {context.data.size}")
    facts["virtual_size"] = virtual_size
    facts["actual_size"] = context.data.size
    _check_claims_and_limits(context, detected, virtual_size)


def _is_container(layer_facts: dict[str, object]) -> bool:
    return layer_facts.get("container_format", "bare") != "bare"


def _check_claims_and_limits(context: ImportContext, detected: str, virtual_size: int) -> None:
    """For a disk layer: the detected format must be allowed, claimed (on the uploaded disk) and not too big."""
    if _is_container(context.facts):
        return  # a compressed stream or an archive: its inner disk is checked once unpacked
    uploaded_disk = all(_is_container(layer.facts) for layer in context.layers[:-1])
    claimed = context.claims.disk_format
    if claimed is not None and uploaded_disk and claimed != detected:
        context.report(CLAIM_MISMATCH, f"The image is {detected}, not {claimed} as the request says.",
                       detail=f"claimed {claimed!r}, detected {detected!r}")
    if detected not in context.settings.disk_formats:
        context.report(NOT_ALLOWED, detail=f"detected {detected!r}")
    limit = context.settings.max_image_size
    if virtual_size > limit:
        context.report(VIRTUAL_SIZE_TOO_LARGE,
                       f"The image's virtual disk is larger than the limit of {format_size(limit)}.",
                       detail=f"virtual size {virtual_size}, limit {limit}")
