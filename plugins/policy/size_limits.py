"""Refuses staged data that is empty or larger than ``max_upload_bytes`` (``pre_validate``).

Only the file's size is looked at: no data is read in this stage.
"""

from __future__ import annotations

from importhooks import FindingCode, ImportContext, hookimpl
from importhooks.units import format_size

EMPTY = FindingCode(
    "data.empty",
    "The uploaded image is empty.",
    "The staged data has zero bytes; there is nothing to import.",
)
TOO_LARGE = FindingCode(
    "data.too_large",
    "The uploaded image is larger than this cloud accepts.",
    "The staged data is larger than max_upload_bytes.",
)


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return [EMPTY, TOO_LARGE]


@hookimpl
def importhooks_pre_validate(context: ImportContext) -> None:
    size, limit = context.data.size, context.settings.max_upload_bytes
    if size == 0:
        context.report(EMPTY)
    elif size > limit:
        context.report(TOO_LARGE, f"The uploaded image is larger than the limit of {format_size(limit)}.",
                       detail=f"{size} bytes staged, limit {limit}")
