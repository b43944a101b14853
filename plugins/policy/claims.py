"""Checks the user's claims against the settings, before any data is read (``pre_validate``)."""

from __future__ import annotations

from importhooks import FindingCode, ImportContext, hookimpl

DISK_FORMAT_NOT_ALLOWED = FindingCode(
    "claims.disk_format_not_allowed",
    "This cloud does not accept that disk format for import.",
    "The claimed disk_format is not in the disk_formats setting. GET /v2/info/import lists the accepted ones.",
)
CONTAINER_FORMAT_NOT_ALLOWED = FindingCode(
    "claims.container_format_not_allowed",
    "This cloud does not accept that container format for import.",
    "The claimed container_format is not in the container_formats setting.",
)
OS_TYPE_NOT_ALLOWED = FindingCode(
    "claims.os_type_not_allowed",
    "This cloud does not accept that os_type.",
    "The claimed os_type is not in the os_types setting; the message lists the allowed values.",
)
OS_TYPE_MISSING = FindingCode(
    "claims.os_type_missing",
    "The import request must say which os_type the image is.",
    "require_os_type is set and the request has no os_type.",
)


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return [DISK_FORMAT_NOT_ALLOWED, CONTAINER_FORMAT_NOT_ALLOWED, OS_TYPE_NOT_ALLOWED, OS_TYPE_MISSING]


def _allowed(values: tuple[str, ...]) -> str:
    return ", ".join(values) or "none"


@hookimpl
def importhooks_pre_validate(context: ImportContext) -> None:
    claims, settings = context.claims, context.settings
    if claims.disk_format is not None and claims.disk_format not in settings.disk_formats:
        context.report(DISK_FORMAT_NOT_ALLOWED,
                       f"Disk format is not accepted here; accepted: {_allowed(settings.disk_formats)}.",
                       detail=f"claimed {claims.disk_format!r}")
    if claims.container_format is not None and claims.container_format not in settings.container_formats:
        context.report(CONTAINER_FORMAT_NOT_ALLOWED,
                       f"Container format is not accepted here; accepted: {_allowed(settings.container_formats)}.",
                       detail=f"claimed {claims.container_format!r}")
    if claims.os_type is None:
        if settings.require_os_type:
            context.report(OS_TYPE_MISSING,
                           f"The import request must set os_type, one of: {_allowed(settings.os_types)}.")
    elif claims.os_type not in settings.os_types:
        context.report(OS_TYPE_NOT_ALLOWED, f"os_type must be one of: {_allowed(settings.os_types)}.",
                       detail=f"claimed {claims.os_type!r}")
