"""Image members, as Glance has them: an owner shares a ``shared`` image with other projects, which accept it.

* ``POST /v2/images/{id}/members`` ``{"member": PROJECT}``: the owner (``add_member``) adds a
  project, whose membership starts ``pending``; only ``shared`` images have members (403);
  a project added twice is a 409.
* ``PUT /v2/images/{id}/members/{member}`` ``{"status": "accepted"|"rejected"|"pending"}``: the
  member project itself (``modify_member``) answers.
* ``GET`` the list or one member (``get_members``, ``get_member``): the owner sees every
  member, a member only its own membership. ``DELETE`` (``delete_member``): the owner.

A member sees the image (``GET``, download) whatever its membership's status; the default
image list shows it once ``accepted`` (``?member_status=`` asks for others), as in Glance.
"""

from __future__ import annotations

from typing import Any

from importhooks.errors import BadRequest

from .config import Principal
from .db import ImageDB, ImageRecord, Member, now
from .errors import Conflict, Forbidden, NotFound
from .policy import ImagePolicy, target

MEMBER_STATUSES = ("pending", "accepted", "rejected")
MAX_PROJECT_ID = 255


def member_document(member: Member) -> dict[str, Any]:
    return {"image_id": member.image_id, "member_id": member.member_id, "status": member.status,
            "created_at": member.created_at, "updated_at": member.updated_at, "schema": "/v2/schemas/member"}


def member_schema() -> dict[str, Any]:
    """``GET /v2/schemas/member``."""
    return {
        "name": "member",
        "properties": {
            "member_id": {"type": "string", "description": "An identifier for the image member (tenantId)"},
            "image_id": {"type": "string", "description": "An identifier for the image"},
            "status": {"type": "string", "enum": list(MEMBER_STATUSES), "description": "The status of this member"},
            "created_at": {"type": "string", "description": "Date and time of image member creation"},
            "updated_at": {"type": "string", "description": "Date and time of last modification of image member"},
            "schema": {"type": "string", "readOnly": True},
        },
    }


def members_schema() -> dict[str, Any]:
    """``GET /v2/schemas/members``."""
    return {"name": "members", "properties": {"members": {"type": "array", "items": member_schema()},
                                              "schema": {"type": "string"}},
            "links": [{"rel": "describedby", "href": "{schema}"}]}


def _text(body: Any, key: str) -> str:
    if not isinstance(body, dict) or not isinstance(body.get(key), str) or not body[key].strip():
        raise BadRequest(f"Expected a body of the form {{\"{key}\": \"...\"}}.", field=key)
    value: str = body[key].strip()
    if len(value) > MAX_PROJECT_ID:
        raise BadRequest(f"Invalid {key}: at most {MAX_PROJECT_ID} characters.", field=key)
    return value


class MemberCalls:
    """The base of :class:`.records.RecordCalls`, which gives :meth:`get_image`."""

    db: ImageDB
    policy: ImagePolicy

    def get_image(self, principal: Principal, image_id: str, rule: str | None = None) -> ImageRecord:
        raise NotImplementedError  # RecordCalls.get_image

    def is_member(self, record: ImageRecord, principal: Principal) -> bool:
        """Whether the caller's project is a member of the (shared) image, whatever its membership's status."""
        return (record.visibility == "shared" and record.owner != principal.project
                and bool(self.db.members(record.id, principal.project)))

    def _shared(self, principal: Principal, image_id: str, rule: str) -> ImageRecord:
        record = self.get_image(principal, image_id)
        if record.visibility != "shared":
            raise Forbidden("Only shared images have members.")
        self.policy.enforce(rule, principal, target(record, principal, member=self.is_member(record, principal)))
        return record

    def add_member(self, principal: Principal, image_id: str, body: Any) -> Member:
        record = self._shared(principal, image_id, "add_member")
        project = _text(body, "member")
        stamp = now()
        member = Member(record.id, project, "pending", stamp, stamp)
        if not self.db.add_member(member):
            raise Conflict(f"Project {project} is a member of this image already.")
        return member

    def list_members(self, principal: Principal, image_id: str) -> list[Member]:
        record = self._shared(principal, image_id, "get_members")
        if record.owner == principal.project or self.policy.is_admin(principal):
            return self.db.members(record.id)
        return self.db.members(record.id, principal.project)

    def get_member(self, principal: Principal, image_id: str, member_id: str) -> Member:
        for member in self.list_members(principal, image_id):
            if member.member_id == member_id:
                return member
        raise NotFound(f"{member_id} is not a member of this image.")

    def update_member(self, principal: Principal, image_id: str, member_id: str, body: Any) -> Member:
        record = self._shared(principal, image_id, "get_member")
        status = _text(body, "status")
        if status not in MEMBER_STATUSES:
            raise BadRequest(f"Invalid status: must be one of {', '.join(MEMBER_STATUSES)}.", field="status")
        if not self.db.members(record.id, member_id):
            raise NotFound(f"{member_id} is not a member of this image.")
        member_target = {**target(record, principal), "member_id": member_id}
        self.policy.enforce("modify_member", principal, member_target)  # the member itself answers
        self.db.set_member_status(record.id, member_id, status)
        return self.db.members(record.id, member_id)[0]

    def delete_member(self, principal: Principal, image_id: str, member_id: str) -> None:
        record = self._shared(principal, image_id, "delete_member")
        if not self.db.delete_member(record.id, member_id):
            raise NotFound(f"{member_id} is not a member of this image.")
