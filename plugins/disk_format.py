"""Detects the real disk format from the data, never from the claim (``inspect``).

Built on oslo.utils' reviewed ``format_inspector``: the data goes once through its
``InspectWrapper`` (that same pass computes the checksums), then the matched
inspector's safety checks run. What it finds becomes facts (``disk_format``,
``virtual_size``) and findings: polyglots, qcow2 backing and data files, VMDK
extents, a claim that does not match the data, a virtual size over the limit.
"""

from __future__ import annotations

from oslo_utils.imageutils import format_inspector as fi

from importhooks import FindingCode, ImportContext, hookimpl
from importhooks.units import format_size

POLYGLOT = FindingCode(
    "format.polyglot",
    "The image matches more than one disk format.",
    "The data carries the headers of several formats at once, a way to make one tool see a harmless "
    "image and another a dangerous one. Rebuild the image with one format.",
)
INVALID = FindingCode(
    "format.invalid",
    "The image's disk format header is damaged or incomplete.",
    "The inspector recognised a format but could not parse it completely (truncated or corrupt header).",
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
        "gpt.mbr",
        "The disk's partition table is invalid.",
        "The protective MBR of a GPT disk is malformed.",
    ),
}
# oslo.utils names a partitioned raw disk 'gpt' (for any MBR too); it is raw data.
_RAW_ALIASES = {"gpt": "raw"}


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return [POLYGLOT, INVALID, CLAIM_MISMATCH, VIRTUAL_SIZE_TOO_LARGE, UNSAFE, *_SAFETY_CODES.values()]


@hookimpl(tryfirst=True)
def importhooks_inspect(context: ImportContext) -> None:
    wrapper = fi.InspectWrapper(context.data.stream())  # type: ignore[arg-type]
    for _chunk in wrapper:
        pass
    try:
        inspector = wrapper.format
    except fi.ImageFormatError as exc:
        context.reject(POLYGLOT, detail=str(exc))
    if inspector is None:  # pragma: no cover - the whole stream was read
        context.reject(INVALID, detail="no decision after the whole stream")
    name = str(inspector)
    detected = _RAW_ALIASES.get(name, name)
    context.facts["disk_format"] = detected
    if name in _RAW_ALIASES:
        context.facts["partition_table"] = name
    try:
        inspector.safety_check()
    except fi.SafetyCheckFailed as exc:
        for check, failure in exc.failures.items():
            context.report(_SAFETY_CODES.get(check, UNSAFE), detail=f"{detected}: {check}: {failure}")
    except fi.ImageFormatError as exc:
        context.reject(INVALID, detail=f"{detected}: {exc}")
    try:
        virtual_size = inspector.virtual_size
    except Exception as exc:  # noqa: BLE001 - a malformed header must end in a finding
        context.reject(INVALID, detail=f"{detected}: virtual size unreadable: {exc!r}")
    context.facts["virtual_size"] = virtual_size
    context.facts["actual_size"] = context.data.size
    claimed = context.claims.disk_format
    if claimed is not None and context.data.parent is None and claimed != detected:
        context.report(CLAIM_MISMATCH, detail=f"claimed {claimed!r}, detected {detected!r}")
    limit = context.settings.max_image_size
    if virtual_size > limit:
        context.report(VIRTUAL_SIZE_TOO_LARGE,
                       f"The image's virtual disk is larger than the limit of {format_size(limit)}.",
                       detail=f"virtual size {virtual_size}, limit {limit}")
