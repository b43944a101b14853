"""Authorization with oslo.policy, under Glance's rule names and with Glance's default rules.

An operator reuses the policy file of their Glance (``policy_file`` in the service's
configuration, YAML or JSON, as oslo.policy reads it): the rules an image call checks have
Glance's names (``add_image``, ``get_image``, ``get_images``, ``modify_image``,
``delete_image``, ``upload_image``, ``download_image``, ``publicize_image``,
``communitize_image``, ``add_member``, ``get_member``, ``get_members``, ``modify_member``,
``delete_member``) and, unless the file overrides them, Glance's secure-RBAC defaults.
``import_image`` is this service's own rule for ``PUT /stage`` and ``POST /import``
(Glance checks ``modify_image`` there); its default is ``rule:modify_image``, so a file
written for Glance keeps working, and a site restricts image import to some roles by
overriding it.

A rule's *target* is the image (``project_id`` and ``owner`` are its owner,
``visibility`` its visibility, ``member_id`` the caller's project when the caller is one of
its members); the *credentials* are the caller's ``user_id``, ``project_id`` and ``roles``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oslo_config import cfg
from oslo_policy import policy

from importhooks import ConfigError

from .config import Principal
from .db import ImageRecord
from .errors import Forbidden

ADMIN = "rule:context_is_admin"
PROJECT_MEMBER = "role:member and project_id:%(project_id)s"
PROJECT_READER = "role:reader and project_id:%(project_id)s"
_VISIBLE = ("(project_id:%(project_id)s or project_id:%(member_id)s or 'community':%(visibility)s"
            " or 'public':%(visibility)s or 'shared':%(visibility)s)")
ADMIN_OR_MEMBER = f"{ADMIN} or ({PROJECT_MEMBER})"

#: Glance's rules (names and default check strings) and this service's ``import_image``.
DEFAULT_RULES: dict[str, tuple[str, str]] = {
    "context_is_admin": ("role:admin", "Who is an administrator."),
    "default": (ADMIN, "The rule of a call that names no rule of its own."),
    "service_api": ("role:service or role:admin", "Other services of the cloud."),
    "add_image": (f"{ADMIN} or ({PROJECT_MEMBER} and project_id:%(owner)s)", "Create an image."),
    "get_image": (f"{ADMIN} or (role:reader and {_VISIBLE})", "Show an image."),
    "get_images": (f"{ADMIN} or ({PROJECT_READER})", "List images."),
    "modify_image": (ADMIN_OR_MEMBER, "Update an image (PATCH)."),
    "delete_image": (ADMIN_OR_MEMBER, "Delete an image."),
    "upload_image": (ADMIN_OR_MEMBER, "Upload image data (PUT /file; the trusted path also needs "
                                      "the admin or service role)."),
    "download_image": (f"{ADMIN} or (role:member and {_VISIBLE})", "Download image data."),
    "publicize_image": (ADMIN, "Make an image public."),
    "communitize_image": (ADMIN_OR_MEMBER, "Make an image a community image."),
    "import_image": ("rule:modify_image", "Stage data and import it (this service's rule; Glance checks "
                                          "modify_image)."),
    "add_member": (ADMIN_OR_MEMBER, "Share an image with a project."),
    "delete_member": (ADMIN_OR_MEMBER, "Stop sharing an image with a project."),
    "get_member": (f"{ADMIN} or role:reader and (project_id:%(project_id)s or project_id:%(member_id)s)",
                   "Show an image member."),
    "get_members": (f"{ADMIN} or role:reader and (project_id:%(project_id)s or project_id:%(member_id)s)",
                    "List an image's members."),
    "modify_member": (f"{ADMIN} or (role:member and project_id:%(member_id)s)",
                      "Accept or reject an image shared with the caller's project."),
}

_FORBIDDEN = {
    "add_image": "You are not allowed to create images.",
    "get_images": "You are not allowed to list images.",
    "modify_image": "You are not allowed to modify this image.",
    "delete_image": "You are not allowed to delete this image.",
    "upload_image": "You are not allowed to upload data to this image.",
    "download_image": "You are not allowed to download this image.",
    "publicize_image": "You are not allowed to make images public (by default only administrators may).",
    "communitize_image": "You are not allowed to make images community images.",
    "import_image": "You are not allowed to import image data.",
    "add_member": "You are not allowed to share this image.",
    "delete_member": "You are not allowed to change who this image is shared with.",
    "get_member": "You are not allowed to see this image's members.",
    "get_members": "You are not allowed to see this image's members.",
    "modify_member": "Only the member project itself accepts or rejects a shared image.",
}


#: Roles a role implies, as Keystone's default role hierarchy has them (admin, then member, then reader).
IMPLIED_ROLES = {"admin": ("member", "reader"), "member": ("reader",)}


def credentials(principal: Principal) -> dict[str, Any]:
    """What oslo.policy's checks read of the caller: its roles with the roles they imply, as Keystone gives them."""
    roles = [role.lower() for role in principal.roles]
    for role in list(roles):
        roles.extend(IMPLIED_ROLES.get(role, ()))
    return {"user_id": principal.user, "project_id": principal.project, "roles": list(dict.fromkeys(roles))}


def target(record: ImageRecord | None, principal: Principal, *, member: bool = False,
           owner: str | None = None, visibility: str | None = None) -> dict[str, Any]:
    """The target of a rule: the image's owner and visibility; ``member_id`` when the caller is a member."""
    image_owner = owner if owner is not None else (record.owner if record is not None else principal.project)
    return {"project_id": image_owner, "owner": image_owner,
            "visibility": visibility or (record.visibility if record is not None else "shared"),
            "member_id": principal.project if member else ""}


class ImagePolicy:
    """The enforcer: Glance's defaults, overridden by the rules of ``policy_file`` when given."""

    def __init__(self, policy_file: Path | None) -> None:
        conf = cfg.ConfigOpts()
        conf([], project="importhooks-image-service", default_config_files=[], default_config_dirs=[])
        if policy_file is not None and not policy_file.is_file():
            raise ConfigError("policy_file", f"no such file: {policy_file}")
        self._enforcer = policy.Enforcer(conf, policy_file=str(policy_file) if policy_file else None)
        self._enforcer.register_defaults([policy.RuleDefault(name, check, description=text)
                                          for name, (check, text) in DEFAULT_RULES.items()])
        try:
            self._enforcer.load_rules()
        except Exception as exc:  # noqa: BLE001 - oslo.policy raises YAML, JSON and its own errors
            raise ConfigError("policy_file", f"cannot load {policy_file}: {exc}") from None

    def allows(self, rule: str, principal: Principal, image_target: Mapping[str, Any]) -> bool:
        return bool(self._enforcer.enforce(rule, dict(image_target), credentials(principal)))

    def enforce(self, rule: str, principal: Principal, image_target: Mapping[str, Any]) -> None:
        """:class:`Forbidden` (403) unless the rule allows the caller."""
        if not self.allows(rule, principal, image_target):
            raise Forbidden(_FORBIDDEN.get(rule, "You are not allowed to do this."))

    def is_admin(self, principal: Principal) -> bool:
        return self.allows("context_is_admin", principal, {})
