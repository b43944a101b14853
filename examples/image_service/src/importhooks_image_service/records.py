"""The image record calls of :class:`~importhooks_image_service.service.ImageService`: create, show, list,
update (PATCH), delete, download; each authorized by :mod:`.policy` under Glance's rule names.

Who sees an image, as in Glance: its owner's project, every project when it is ``public`` or
``community``, and administrators (``context_is_admin``), who act on every project's images.
An image the caller may not see is a 404 (its existence is not revealed); a call the policy
refuses on an image the caller sees is a 403.
"""

from __future__ import annotations

import os
import uuid
from types import MappingProxyType
from typing import IO, Any

from importhooks import Settings
from importhooks.errors import BadRequest, RequestError, StatusConflict
from importhooks.server.staging import StagingArea, image_key
from importhooks.server.status import Call, ImageStatus, check

from .config import Principal
from .db import ImageDB, ImageRecord, now
from .errors import Conflict, Forbidden, NotFound
from .members import MemberCalls
from .patch import apply_patch
from .policy import ImagePolicy, target
from .store import ImageStore
from .uploads import UploadTracker
from .validation import validate_new_image

NOT_FOUND = "No image found with this ID."
SHOWN_TO_ALL = ("public", "community")
MAX_TAG = 255


class RecordCalls(MemberCalls):
    """Mixed into :class:`~importhooks_image_service.service.ImageService`, which sets these attributes."""

    settings: Settings
    db: ImageDB
    staging: StagingArea
    store: ImageStore
    policy: ImagePolicy
    uploads: UploadTracker

    def _enforce_visibility(self, principal: Principal, owner: str, visibility: str | None) -> None:
        rule = {"public": "publicize_image", "community": "communitize_image"}.get(visibility or "")
        if rule is not None:
            self.policy.enforce(rule, principal, target(None, principal, owner=owner, visibility=visibility))

    def create_image(self, principal: Principal, body: object) -> ImageRecord:
        """``POST /v2/images``: a new ``queued`` image of the caller's project."""
        fields, properties = validate_new_image(body, self.settings)
        self.policy.enforce("add_image", principal, target(None, principal))
        self._enforce_visibility(principal, principal.project, fields.get("visibility"))
        stamp = now()
        record = ImageRecord(id=str(uuid.uuid4()), owner=principal.project, status=ImageStatus.QUEUED.value,
                             created_at=stamp, updated_at=stamp, properties=MappingProxyType(properties), **fields)
        self.db.insert(record)
        return record

    def get_image(self, principal: Principal, image_id: str, rule: str | None = None) -> ImageRecord:
        """The image if the caller sees it (:class:`NotFound` otherwise), and ``rule`` allows the call (403)."""
        try:
            key = image_key(image_id)
        except BadRequest:
            raise NotFound(NOT_FOUND) from None
        record = self.db.get(key)
        if record is None or record.status == ImageStatus.DELETED.value:
            raise NotFound(NOT_FOUND)
        member = self.is_member(record, principal)
        seen = (record.owner == principal.project or record.visibility in SHOWN_TO_ALL or member
                or self.policy.is_admin(principal))
        if not seen or not self.policy.allows("get_image", principal, target(record, principal, member=member)):
            raise NotFound(NOT_FOUND)
        if rule is not None:
            self.policy.enforce(rule, principal, target(record, principal, member=member))
        return record


    def list_images(self, principal: Principal, *, visibility: str | None = None, name: str | None = None,
                    status: str | None = None, hidden: bool = False,
                    member_status: str = "accepted") -> list[ImageRecord]:
        """``GET /v2/images``: what the caller sees, as Glance lists it (see :meth:`ImageDB.listing`)."""
        self.policy.enforce("get_images", principal, target(None, principal))
        records = self.db.listing(principal.project, admin=self.policy.is_admin(principal), visibility=visibility,
                                  name=name, status=status, hidden=hidden, member_status=member_status)
        # Shared images of other projects are listed only through a membership (the query's).
        return [record for record in records if self.policy.allows("get_image", principal, target(
            record, principal, member=record.visibility == "shared" and record.owner != principal.project))]

    def update_image(self, principal: Principal, image_id: str, body: Any, kind: str) -> ImageRecord:
        """``PATCH``: apply the JSON patch (:mod:`.patch`); ``modify_image``, and the visibility rules."""
        record = self.get_image(principal, image_id, "modify_image")
        changes = apply_patch(record, body, kind, self.settings)
        if "visibility" in changes.columns and changes.columns["visibility"] != record.visibility:
            self._enforce_visibility(principal, record.owner, changes.columns["visibility"])
        live = [status.value for status in ImageStatus if status is not ImageStatus.DELETED]
        data_change = (any(name in changes.columns for name in ("disk_format", "container_format"))
                       or changes.properties.get("os_type") != record.properties.get("os_type"))
        expect = [ImageStatus.QUEUED.value] if data_change else live  # the formats only while queued
        if not self.db.update(record.id, expect=expect, properties=changes.properties, **changes.columns):
            raise Conflict("The image changed while this request ran; try again.")
        return self.get_image(principal, record.id)

    def set_tag(self, principal: Principal, image_id: str, tag: str, *, present: bool) -> None:
        """``PUT`` (``present``) or ``DELETE /v2/images/{id}/tags/{tag}``; 404 deleting a tag the image lacks."""
        record = self.get_image(principal, image_id, "modify_image")
        if not 0 < len(tag) <= MAX_TAG:
            raise BadRequest(f"Tags have 1 to {MAX_TAG} characters.", field="tag")
        if present:
            tags = tuple(dict.fromkeys((*record.tags, tag)))
        elif tag in record.tags:
            tags = tuple(name for name in record.tags if name != tag)
        else:
            raise NotFound(f"Tag {tag} not found.")
        live = [status.value for status in ImageStatus if status is not ImageStatus.DELETED]
        if not self.db.update(record.id, expect=live, tags=tags):
            raise NotFound(NOT_FOUND)

    def delete_image(self, principal: Principal, image_id: str) -> None:
        """``DELETE``: the record is marked deleted, uploads in flight cut off, staged and stored data removed.

        An import still running is not interrupted; its outcome finds the image deleted and is
        dropped, and the data it may have stored is removed."""
        record = self.get_image(principal, image_id, "delete_image")
        if record.protected:
            raise Forbidden("The image is protected and cannot be deleted.")
        live = [status.value for status in ImageStatus if status is not ImageStatus.DELETED]
        if not self.db.update(record.id, expect=live, status=ImageStatus.DELETED.value, import_job=None):
            raise NotFound(NOT_FOUND)
        self.uploads.cancel(record.id)
        self.staging.discard(record.id)
        self.store.delete(record.id)

    def open_data(self, principal: Principal, image_id: str) -> tuple[ImageRecord, IO[bytes] | None]:
        """``GET /file``: the image and its data opened for reading (``None``: no data, a 204 as in Glance)."""
        record = self.get_image(principal, image_id, "download_image")
        if record.status != ImageStatus.ACTIVE.value:
            return record, None
        try:
            fd = os.open(self.store.path(record.id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return record, None
        return record, os.fdopen(fd, "rb")

    def _conflict(self, image_id: str, call: Call, method: str | None = None) -> RequestError:
        """Why a conditional status change lost its race, as the error to answer with."""
        record = self.db.get(image_id)
        if record is None or record.status == ImageStatus.DELETED.value:
            return NotFound(NOT_FOUND)
        try:
            check(call, ImageStatus(record.status), method)
        except StatusConflict as exc:
            return exc
        return Conflict("The image changed while this request ran; try again.")
