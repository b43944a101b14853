"""Protected and injected image properties (``pre_validate`` and ``set_protected_properties``).

* **Protected** (the ``protected_properties`` setting): properties only plugins may set, such as
  the verified ``os_type`` and everything importhooks derives (``importhooks_*``). An import
  request whose properties set one is rejected before any data is read
  (``properties.protected``); ``os_type`` is claimed in the request's own ``os_type`` field,
  and what ends on the image is what the ``os_type`` plugin verified.
* **Injected** (``[plugin.properties] inject``), as Glance's ``inject_image_metadata`` plugin
  does: properties set on every import (e.g. ``hw_disk_bus = "scsi"``), except for requesters
  holding one of the ``skip_roles`` (default ``admin``). An injected value replaces the user's.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from importhooks import FindingCode, ImportContext, PluginOption, PluginOptions, hookimpl

SECTION = "properties"

PROTECTED = FindingCode(
    "properties.protected",
    "The import request sets properties that only the import itself may set.",
    "The request's properties include names matching the protected_properties setting; the detail lists "
    "them. os_type is claimed in the import request's own os_type field.",
)


def _inject(value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in value.items()):
        raise ValueError(f"expected a table of property names to string values, got {value!r}")
    if any(not key or len(key) > 255 for key in value):
        raise ValueError("property names must have 1 to 255 characters")
    return MappingProxyType(dict(value))


def _roles(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of role names, got {value!r}")
    return tuple(value)


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return [PROTECTED]


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    return PluginOptions(SECTION, (
        PluginOption("inject", MappingProxyType({}), "Properties set on every import, as a table of names to "
                     "string values (e.g. { hw_disk_bus = \"scsi\" }).", parse=_inject),
        PluginOption("skip_roles", ("admin",), "Requesters holding any of these roles get no injected "
                     "properties.", parse=_roles),
    ))


@hookimpl
def importhooks_pre_validate(context: ImportContext) -> None:
    settings = context.settings
    protected = sorted(name for name in context.claims.properties if settings.is_protected(name))
    if protected:
        hint = " Claim os_type in the import request's os_type field." if "os_type" in protected else ""
        context.report(PROTECTED, f"These properties are set by the import and cannot be given: "
                                  f"{', '.join(settings.protected_properties)}.{hint}",
                       detail=f"request sets {protected!r}")


@hookimpl
def importhooks_set_protected_properties(context: ImportContext) -> dict[str, str] | None:
    options = context.options(SECTION)
    if set(context.requester.roles) & set(options["skip_roles"]):
        return None
    return dict(options["inject"]) or None
