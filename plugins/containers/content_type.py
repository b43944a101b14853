"""Sniffs whether the data is a compressed stream or an archive, with libmagic (``inspect``).

The result is the layer's ``container_format`` fact: ``bare`` for a plain disk, or
the container it looks like (``gzip``, ``bzip2``, ``xz``, ``zstd``, ``zip``, ``tar``).
Data that is a container but claimed ``bare`` is rejected with a finding naming the
container. With no claim at all (an audit), the data is taken for what it is: a
container is unpacked and inspected like a claimed one, if its container format
(``compressed``, or ``ova`` for a tar) is in the ``container_formats`` setting.
Fail closed: if the data that would be stored is still a container (no
``sanitize`` plugin unpacked it), the import is rejected in ``finalize``.
"""

from __future__ import annotations

from importhooks import FindingCode, ImportContext, hookimpl

SNIFF_BYTES = 64 * 1024
#: libmagic MIME type -> container name. Only the MIME type is used: libmagic's
#: descriptions quote text from the data (file names, backing paths) and stay out.
CONTAINERS = {
    "application/gzip": "gzip",
    "application/x-gzip": "gzip",
    "application/x-bzip2": "bzip2",
    "application/x-xz": "xz",
    "application/zstd": "zstd",
    "application/x-zstd": "zstd",
    "application/zip": "zip",
    "application/x-tar": "tar",
    # Containers no built-in plugin unpacks, which well-known readers (libarchive, GNU gzip, xz, lz4,
    # 7-Zip) open and importhooks would otherwise take for a raw disk: named, so they are rejected.
    "application/x-lzma": "lzma",
    "application/x-compress": "compress",
    "application/x-lz4": "lz4",
    "application/x-lzip": "lzip",
    "application/x-7z-compressed": "7z",
    "application/x-rar": "rar",
    "application/vnd.rar": "rar",
    "application/x-archive": "ar",
    "application/x-cpio": "cpio",
    "application/vnd.ms-cab-compressed": "cab",
    "application/x-rpm": "rpm",
    "application/x-xar": "xar",
}
#: Containers libmagic names only in its descriptions: found by their own magic bytes at offset 0.
MAGIC_PREFIXES = {b"\x89LZO\x00\r\n\x1a\n": "lzop"}

#: What the data must look like for each container_format claim besides ``bare``: a compressed
#: stream no plugin decompresses is still rightly claimed ``compressed`` (and rejected in finalize).
CLAIMABLE = {
    "compressed": frozenset({"gzip", "bzip2", "xz", "zstd", "zip", "lzma", "compress", "lz4", "lzip", "lzop"}),
    "ova": frozenset({"tar"}),
}

#: Claims that say the data is the disk itself. Glance's ``ovf`` names a disk taken out of an OVF
#: package (an OVA, the package in one file, is claimed ``ova``): a container claimed ``ovf`` is no disk.
DISK_CLAIMS = frozenset({"bare", "ovf"})

ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")

CLAIM_MISMATCH = FindingCode(
    "container.claim_mismatch",
    "The image's container is not the one given in the request.",
    "The claimed container_format does not match the data: 'bare' (or 'ovf') claimed for a compressed "
    "stream or an archive, 'compressed' for data that is not compressed, 'ova' for data that is not a tar archive (the "
    "message names what the data is). Claim the right container_format.",
)
NOT_ALLOWED = FindingCode(
    "container.not_allowed",
    "The image is a compressed file or an archive, a container this cloud does not accept.",
    "The request claimed no container_format and the data is a container (the message names it) whose "
    "container format (compressed, or ova for a tar archive) is not in the container_formats setting.",
)
NOT_UNPACKED = FindingCode(
    "container.not_unpacked",
    "The image is a compressed file or an archive that this cloud cannot unpack.",
    "After every sanitize pass the data is still a container: no enabled plugin unpacks it, so its "
    "contents were never inspected. Importhooks rejects rather than store unchecked data.",
)


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return [CLAIM_MISMATCH, NOT_ALLOWED, NOT_UNPACKED]


def sniff(context: ImportContext) -> str:
    """The container the current layer looks like, or ``bare``."""
    import magic  # heavy (libmagic through ctypes): loaded on first use

    with context.data.open() as handle:
        head = handle.read(SNIFF_BYTES)
    mime = magic.from_buffer(head, mime=True) if head else "application/x-empty"
    if mime not in CONTAINERS and head.startswith(ZIP_MAGICS):
        return "zip"  # libmagic names zip-based formats by their content (EPUB, APK, JAR ...): still a zip
    if mime not in CONTAINERS:
        return next((name for magic_bytes, name in MAGIC_PREFIXES.items() if head.startswith(magic_bytes)), "bare")
    return CONTAINERS[mime]


@hookimpl(tryfirst=True)
def importhooks_inspect(context: ImportContext) -> None:
    container = sniff(context)
    context.facts["container_format"] = container
    claimed = context.claims.container_format
    if context.data.parent is not None:
        return  # the claim describes the upload, the first layer
    if claimed is None:
        _unclaimed(context, container)
    elif container != "bare" and claimed in DISK_CLAIMS:
        context.report(CLAIM_MISMATCH, f"The image looks like a {container} file, not a bare disk.",
                       detail=f"claimed {claimed!r}, libmagic sees {container}")
    elif claimed in CLAIMABLE and container not in CLAIMABLE[claimed]:
        what = "a bare disk" if container == "bare" else f"a {container} file"
        context.report(CLAIM_MISMATCH, f"The image is {what}, not the {claimed} container the request says.",
                       detail=f"claimed {claimed!r}, libmagic sees {container}")


def container_format_of(container: str) -> str | None:
    """The ``container_format`` a request would claim for data that looks like ``container``, if any."""
    if container == "bare":
        return "bare"
    return next((claim for claim, looks in CLAIMABLE.items() if container in looks), None)


def _unclaimed(context: ImportContext, container: str) -> None:
    """No claim (an audit, an embedder that does not ask): take the data for what it is, if accepted.

    An archive no format can claim (7z, cpio ...) goes on to ``finalize``, which rejects it unpacked.
    """
    accepted = context.settings.container_formats
    claim = container_format_of(container)
    if claim is not None and claim not in accepted:
        what = "a bare disk" if container == "bare" else f"a {container} file"
        context.report(NOT_ALLOWED, f"The image is {what}; this cloud accepts only these container "
                                    f"formats: {', '.join(accepted) or 'none'}.",
                       detail=f"no container_format claimed, libmagic sees {container}")


@hookimpl
def importhooks_finalize(context: ImportContext) -> None:
    container = context.facts.get("container_format", "bare")
    if container != "bare":
        context.reject(NOT_UNPACKED, f"The image is a {container} file that this cloud cannot unpack.",
                       detail=f"final layer {context.data.kind!r} is {container}")
