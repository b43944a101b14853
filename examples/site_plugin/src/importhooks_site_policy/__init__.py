"""A per-project image import policy for importhooks, installed as a site plugin.

Registered through the ``importhooks.plugins`` entry point ``site_policy`` and
configured in ``[plugin.site_policy]`` (see :data:`policy.OPTIONS`). It checks:

* ``pre_validate``: who may import (``importer_roles``), the image name
  (``name_max_length``, ``name_pattern``), properties the user may not set
  (``reserved_property_prefixes``) and the claimed disk format against the
  project's formats (``project_disk_formats``);
* ``inspect`` (``trylast``, after the built-in ``disk_format`` plugin has recorded
  the ``virtual_size`` fact): the project's virtual size cap (``max_virtual_size``,
  ``project_max_virtual_size``), on every data layer;
* ``finalize``: the *detected* disk format of the data that would be stored against
  the project's formats, since the claim is not trusted (or may be absent).

Every problem is a finding with a user-safe message; who, which project and which
values are in the operator-only ``detail``.
"""

from __future__ import annotations

from collections.abc import Iterable

from importhooks import FindingCode, ImportContext, PluginOptions, hookimpl
from importhooks.units import format_size

from .policy import SECTION, Policy, parse_policy, plugin_options

__all__ = [
    "FORMAT_NOT_ALLOWED_FOR_PROJECT",
    "NAME_NOT_ALLOWED",
    "NAME_TOO_LONG",
    "RESERVED_PROPERTY",
    "ROLE_NOT_ALLOWED",
    "VIRTUAL_SIZE_OVER_PROJECT_CAP",
    "VIRTUAL_SIZE_UNKNOWN",
]

ROLE_NOT_ALLOWED = FindingCode(
    "site_policy.role_not_allowed",
    "You are not allowed to import images in this cloud.",
    "The requester has none of the roles in [plugin.site_policy] importer_roles. Grant one of them to the "
    "user in the project, or widen importer_roles.",
)
NAME_TOO_LONG = FindingCode(
    "site_policy.name_too_long",
    "The image name is too long.",
    "The 'name' property is longer than [plugin.site_policy] name_max_length characters; choose a shorter name.",
)
NAME_NOT_ALLOWED = FindingCode(
    "site_policy.name_not_allowed",
    "The image name does not follow this cloud's naming rules.",
    "The 'name' property does not match [plugin.site_policy] name_pattern (the whole name must match).",
)
RESERVED_PROPERTY = FindingCode(
    "site_policy.reserved_property",
    "The request sets image properties that are reserved for the image service.",
    "A property name starts with one of [plugin.site_policy] reserved_property_prefixes (os_glance_ "
    "properties drive Glance's own import; os_hash_ ones are its checksums). Remove the property.",
)
FORMAT_NOT_ALLOWED_FOR_PROJECT = FindingCode(
    "site_policy.format_not_allowed_for_project",
    "Your project may not import images in this disk format.",
    "The claimed disk_format, or the format detected in the data that would be stored, is not in the "
    "project's list in [plugin.site_policy] project_disk_formats (or its '*' entry).",
)
VIRTUAL_SIZE_OVER_PROJECT_CAP = FindingCode(
    "site_policy.virtual_size_over_project_cap",
    "The image's virtual disk is larger than your project may import.",
    "The virtual size detected in the disk header is over the project's cap: [plugin.site_policy] "
    "project_max_virtual_size for the project, else max_virtual_size.",
)
VIRTUAL_SIZE_UNKNOWN = FindingCode(
    "site_policy.virtual_size_unknown",
    "The image's virtual size could not be determined.",
    "A virtual size cap applies to the project but no plugin recorded the virtual_size fact (is the "
    "disk_format plugin disabled?). The import is rejected rather than left unchecked.",
)
_CODES = (
    ROLE_NOT_ALLOWED,
    NAME_TOO_LONG,
    NAME_NOT_ALLOWED,
    RESERVED_PROPERTY,
    FORMAT_NOT_ALLOWED_FOR_PROJECT,
    VIRTUAL_SIZE_OVER_PROJECT_CAP,
    VIRTUAL_SIZE_UNKNOWN,
)
_MAX_LISTED = 10


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return list(_CODES)


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    return plugin_options()


def _policy(context: ImportContext) -> Policy:
    return parse_policy(context.options(SECTION))


def _listed(values: Iterable[str]) -> str:
    items = list(values)
    shown = ", ".join(items[:_MAX_LISTED]) or "none"
    return shown + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _who(context: ImportContext) -> str:
    requester = context.requester
    return f"user {requester.user!r} in project {requester.project!r}"


@hookimpl
def importhooks_pre_validate(context: ImportContext) -> None:
    """Check roles, the image name, reserved properties and the claimed disk format."""
    policy = _policy(context)
    _check_roles(context, policy)
    _check_name(context, policy)
    _check_properties(context, policy)
    claimed = context.claims.disk_format
    if claimed is not None:
        _check_format(context, policy, claimed, "claimed")


def _check_roles(context: ImportContext, policy: Policy) -> None:
    roles = context.requester.roles
    if not policy.may_import(roles):
        context.report(ROLE_NOT_ALLOWED,
                       detail=f"{_who(context)} has roles [{_listed(roles)}]; "
                              f"importer_roles is [{_listed(sorted(policy.importer_roles))}]")


def _check_name(context: ImportContext, policy: Policy) -> None:
    name = context.claims.properties.get("name")
    if name is None:
        return
    if policy.name_max_length and len(name) > policy.name_max_length:
        context.report(NAME_TOO_LONG, f"The image name is longer than {policy.name_max_length} characters.",
                       detail=f"{_who(context)}: name of {len(name)} characters")
    if policy.name_pattern is not None and not policy.name_pattern.fullmatch(name):
        context.report(NAME_NOT_ALLOWED,
                       detail=f"{_who(context)}: name {name[:80]!r} does not match {policy.name_pattern.pattern!r}")


def _check_properties(context: ImportContext, policy: Policy) -> None:
    reserved = sorted(key for key in context.claims.properties if policy.reserved(key))
    if reserved:
        context.report(RESERVED_PROPERTY,
                       f"Properties starting with {_listed(policy.reserved_prefixes)} are reserved and cannot be "
                       "set on import.",
                       detail=f"{_who(context)} set {_listed(repr(key[:80]) for key in reserved)}")


def _check_format(context: ImportContext, policy: Policy, disk_format: str | None, how: str) -> None:
    allowed = policy.disk_formats_for(context.requester.project)
    if allowed is None or disk_format in allowed:
        return
    context.report(FORMAT_NOT_ALLOWED_FOR_PROJECT,
                   f"Your project may not import images in this disk format; accepted: {_listed(allowed)}.",
                   detail=f"{_who(context)}: {how} disk format {disk_format!r}, project allows [{_listed(allowed)}]")


@hookimpl(trylast=True)
def importhooks_inspect(context: ImportContext) -> None:
    """Check the project's virtual size cap on this data layer (facts from the ``disk_format`` plugin)."""
    policy = _policy(context)
    cap = policy.virtual_size_cap_for(context.requester.project)
    if not cap:
        return
    virtual_size = context.facts.get("virtual_size")
    if not isinstance(virtual_size, int) or isinstance(virtual_size, bool):
        context.report(VIRTUAL_SIZE_UNKNOWN, detail=f"{_who(context)}: virtual_size fact is {virtual_size!r}, "
                                                    f"{context.data.kind} layer")
    elif virtual_size > cap:
        context.report(VIRTUAL_SIZE_OVER_PROJECT_CAP,
                       f"The image's virtual disk is larger than your project's limit of {format_size(cap)}.",
                       detail=f"{_who(context)}: virtual size {virtual_size} bytes, cap {cap} "
                              f"({context.data.kind} layer)")


@hookimpl
def importhooks_finalize(context: ImportContext) -> None:
    """Check the detected disk format of the data that would be stored against the project's formats."""
    _check_format(context, _policy(context), context.facts.get("disk_format"), "detected")
