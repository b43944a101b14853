"""Sniffs whether the data is a compressed stream or an archive, with libmagic (``inspect``).

The result is the layer's ``container_format`` fact: ``bare`` for a plain disk, or
the container it looks like (``gzip``, ``bzip2``, ``xz``, ``zstd``, ``zip``, ``tar``).
Data that is a container but claimed ``bare`` is rejected with a finding naming the
container. Fail closed: if the data that would be stored is still a container (no
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
}

#: What the data must look like for each container_format claim besides ``bare``.
CLAIMABLE = {
    "compressed": frozenset({"gzip", "bzip2", "xz", "zstd", "zip"}),
    "ova": frozenset({"tar"}),
}

ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")

CLAIM_MISMATCH = FindingCode(
    "container.claim_mismatch",
    "The image's container is not the one given in the request.",
    "The claimed container_format does not match the data: 'bare' claimed for a compressed stream or an "
    "archive, 'compressed' for data that is not compressed, 'ova' for data that is not a tar archive (the "
    "message names what the data is). Claim the right container_format.",
)
NOT_UNPACKED = FindingCode(
    "container.not_unpacked",
    "The image is a compressed file or an archive that this cloud cannot unpack.",
    "After every sanitize pass the data is still a container: no enabled plugin unpacks it, so its "
    "contents were never inspected. Importhooks rejects rather than store unchecked data.",
)


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return [CLAIM_MISMATCH, NOT_UNPACKED]


def sniff(context: ImportContext) -> str:
    """The container the current layer looks like, or ``bare``."""
    import magic  # heavy (libmagic through ctypes): loaded on first use

    with context.data.open() as handle:
        head = handle.read(SNIFF_BYTES)
    mime = magic.from_buffer(head, mime=True) if head else "application/x-empty"
    if mime not in CONTAINERS and head.startswith(ZIP_MAGICS):
        return "zip"  # libmagic names zip-based formats by their content (EPUB, APK, JAR ...): still a zip
    return CONTAINERS.get(mime, "bare")


@hookimpl(tryfirst=True)
def importhooks_inspect(context: ImportContext) -> None:
    container = sniff(context)
    context.facts["container_format"] = container
    claimed = context.claims.container_format
    if context.data.parent is not None:
        return  # the claim describes the upload, the first layer
    if container != "bare" and claimed in (None, "bare"):
        context.report(CLAIM_MISMATCH, f"The image looks like a {container} file, not a bare disk.",
                       detail=f"claimed {claimed!r}, libmagic sees {container}")
    elif claimed in CLAIMABLE and container not in CLAIMABLE[claimed]:
        what = "a bare disk" if container == "bare" else f"a {container} file"
        context.report(CLAIM_MISMATCH, f"The image is {what}, not the {claimed} container the request says.",
                       detail=f"claimed {claimed!r}, libmagic sees {container}")


@hookimpl
def importhooks_finalize(context: ImportContext) -> None:
    container = context.facts.get("container_format", "bare")
    if container != "bare":
        context.reject(NOT_UNPACKED, f"The image is a {container} file that this cloud cannot unpack.",
                       detail=f"final layer {context.data.kind!r} is {container}")
