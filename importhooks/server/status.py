"""The image status machine of the import spec, and the 409 rules of each call.

::

    queued --PUT /file--> saving --done--> active
       |                     '--failed--> queued
       '--PUT /stage--> uploading --POST /import--> importing --accept--> active
                          |  ^ (PUT /stage again)       '--reject--> killed (+ message)
                          '--failed--> queued
    any --DELETE--> deleted

A server calls :func:`check` before it acts on a call (it raises
:class:`~importhooks.errors.StatusConflict`, a 409, with a message for the user) and
:func:`after` for the status the image moves to. The rules, from the seed:

* ``PUT /file`` (the trusted upload path) only from ``queued``: refused while
  ``uploading``, ``saving``, ``importing``, and once ``active``, ``killed`` or ``deleted``.
* ``PUT /stage`` from ``queued`` or ``uploading`` (data may be staged again; the last
  complete upload wins): refused while ``saving`` or ``importing``, and afterwards.
* ``POST /import`` only from ``uploading``, or from ``queued`` for a method that stages
  nothing (``web-download``, ``swift-local``, ``glance-download``).
* ``active`` images are immutable: no data call succeeds on them.

A rejected import ends ``killed`` with a user-safe ``message``, as the seed says. Glance
itself reverts a failed import to ``queued`` and keeps the reason in a task: a server
that must behave exactly like Glance can map ``killed`` back to ``queued``.
"""

from __future__ import annotations

import enum

from ..errors import StatusConflict


class ImageStatus(enum.StrEnum):
    """The statuses of Glance's image schema."""

    QUEUED = "queued"
    SAVING = "saving"
    UPLOADING = "uploading"
    IMPORTING = "importing"
    ACTIVE = "active"
    KILLED = "killed"
    DELETED = "deleted"


class Call(enum.StrEnum):
    """The data calls of the image API the status machine rules on."""

    UPLOAD = "upload"  # PUT /v2/images/{id}/file
    STAGE = "stage"  # PUT /v2/images/{id}/stage
    IMPORT = "import"  # POST /v2/images/{id}/import


class Outcome(enum.StrEnum):
    """How a call that started ends."""

    STARTED = "started"
    DONE = "done"
    FAILED = "failed"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


#: Import methods that bring their own data instead of reading what was staged.
METHODS_WITHOUT_STAGING = frozenset({"web-download", "swift-local", "glance-download", "copy-image"})

_ALLOWED: dict[Call, frozenset[ImageStatus]] = {
    Call.UPLOAD: frozenset({ImageStatus.QUEUED}),
    Call.STAGE: frozenset({ImageStatus.QUEUED, ImageStatus.UPLOADING}),
    Call.IMPORT: frozenset({ImageStatus.UPLOADING}),
}

_WHY: dict[ImageStatus, str] = {
    ImageStatus.SAVING: "its data is being uploaded",
    ImageStatus.UPLOADING: "its data is staged for import",
    ImageStatus.IMPORTING: "it is being imported",
    ImageStatus.ACTIVE: "it is active, and active images cannot be changed",
    ImageStatus.KILLED: "its import failed; create a new image",
    ImageStatus.DELETED: "it is deleted",
    ImageStatus.QUEUED: "it has no data yet; stage data first",
}

_NEXT: dict[tuple[Call, Outcome], ImageStatus] = {
    (Call.UPLOAD, Outcome.STARTED): ImageStatus.SAVING,
    (Call.UPLOAD, Outcome.DONE): ImageStatus.ACTIVE,
    (Call.UPLOAD, Outcome.FAILED): ImageStatus.QUEUED,
    (Call.STAGE, Outcome.STARTED): ImageStatus.UPLOADING,
    (Call.STAGE, Outcome.DONE): ImageStatus.UPLOADING,
    (Call.STAGE, Outcome.FAILED): ImageStatus.QUEUED,
    (Call.IMPORT, Outcome.STARTED): ImageStatus.IMPORTING,
    (Call.IMPORT, Outcome.ACCEPTED): ImageStatus.ACTIVE,
    (Call.IMPORT, Outcome.REJECTED): ImageStatus.KILLED,
}


def allowed(call: Call, status: ImageStatus, method: str | None = None) -> bool:
    """Whether ``call`` may start on an image in ``status`` (``method``: the import method)."""
    if call is Call.IMPORT and method in METHODS_WITHOUT_STAGING:
        return status is ImageStatus.QUEUED
    return status in _ALLOWED[call]


def check(call: Call, status: ImageStatus, method: str | None = None) -> None:
    """Raise :class:`StatusConflict` (409) unless ``call`` may start on an image in ``status``."""
    if not allowed(call, status, method):
        raise StatusConflict(f"Cannot {call.value} data of an image with status {status.value}: {_WHY[status]}.")


def after(call: Call, outcome: Outcome) -> ImageStatus:
    """The status an image moves to when ``call`` reaches ``outcome``."""
    try:
        return _NEXT[call, outcome]
    except KeyError:
        raise ValueError(f"{call.value} has no outcome {outcome.value!r}") from None


def deletable(status: ImageStatus) -> bool:
    """Whether an image in ``status`` may be deleted: any but one already deleted."""
    return status is not ImageStatus.DELETED
