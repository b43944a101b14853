"""The site policy's options, and their validation into a :class:`Policy`.

Scalar options are checked by importhooks itself (a :class:`PluginOption` coerces
by its default's type). The two per-project tables and the name pattern need more
than that, so :class:`SitePolicyOptions` checks them too, when the pipeline is
built: a bad ``[plugin.site_policy]`` table stops the service from starting with a
:class:`~importhooks.ConfigError` naming the key, instead of rejecting imports later.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from importhooks import ConfigError, PluginOption, PluginOptions
from importhooks.settings import DISK_FORMATS
from importhooks.units import parse_size

#: The ``[plugin.SECTION]`` table this plugin reads.
SECTION = "site_policy"
#: Key of the per-project tables that applies to every project not listed by name.
ANY_PROJECT = "*"

OPTIONS: tuple[PluginOption, ...] = (
    PluginOption("importer_roles", (), "Roles that may import images (any one suffices); empty lets everyone import."),
    PluginOption("name_max_length", 255, "Longest image name (the 'name' property), in characters; 0 means no limit."),
    PluginOption("name_pattern", "", "Regular expression the whole image name must match; empty allows any name."),
    PluginOption(
        "reserved_property_prefixes",
        ("os_glance_", "os_hash_"),
        "Property name prefixes users may not set on import (compared case-insensitively).",
    ),
    PluginOption(
        "project_disk_formats",
        {},
        "Table of project ID to the disk formats it may import; '*' covers projects not listed. "
        "A project covered by neither may import every format of the disk_formats setting.",
    ),
    PluginOption(
        "max_virtual_size",
        0,
        "Largest virtual disk size a project may import, e.g. '100GiB'; 0 means no cap below max_image_size.",
        size=True,
    ),
    PluginOption(
        "project_max_virtual_size",
        {},
        "Table of project ID to its own virtual size cap ('*' covers projects not listed), "
        "overriding max_virtual_size; 0 means no cap for that project.",
    ),
)


@dataclass(frozen=True, slots=True)
class Policy:
    """The validated policy, built from the resolved options of one pipeline."""

    importer_roles: frozenset[str]
    name_max_length: int
    name_pattern: re.Pattern[str] | None
    reserved_prefixes: tuple[str, ...]
    project_disk_formats: Mapping[str, tuple[str, ...]]
    max_virtual_size: int
    project_max_virtual_size: Mapping[str, int]

    def disk_formats_for(self, project: str | None) -> tuple[str, ...] | None:
        """The disk formats ``project`` may import, or ``None`` if this policy does not restrict them."""
        if project is not None and project in self.project_disk_formats:
            return self.project_disk_formats[project]
        return self.project_disk_formats.get(ANY_PROJECT)

    def virtual_size_cap_for(self, project: str | None) -> int:
        """The largest virtual size ``project`` may import, in bytes; 0 means no cap."""
        if project is not None and project in self.project_max_virtual_size:
            return self.project_max_virtual_size[project]
        return self.project_max_virtual_size.get(ANY_PROJECT, self.max_virtual_size)

    def may_import(self, roles: tuple[str, ...]) -> bool:
        """Whether a requester with ``roles`` may import at all."""
        return not self.importer_roles or not self.importer_roles.isdisjoint(r.lower() for r in roles)

    def reserved(self, key: str) -> bool:
        """Whether the property ``key`` is reserved for the image service."""
        return key.lower().startswith(self.reserved_prefixes)


def _key(name: str, *parts: str) -> str:
    return ".".join((f"plugin.{SECTION}.{name}", *parts))


def _table(values: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    table = values[name]
    if not isinstance(table, Mapping):
        raise ConfigError(_key(name), f"expected a table of project ID to value, got {table!r}")
    for project in table:
        if not isinstance(project, str) or not project:
            raise ConfigError(_key(name), f"project IDs must be non-empty strings, got {project!r}")
    return table


def _disk_formats(values: Mapping[str, Any]) -> Mapping[str, tuple[str, ...]]:
    parsed: dict[str, tuple[str, ...]] = {}
    for project, formats in _table(values, "project_disk_formats").items():
        key = _key("project_disk_formats", project)
        if not isinstance(formats, (list, tuple)) or not all(isinstance(f, str) for f in formats):
            raise ConfigError(key, f"expected a list of disk formats, got {formats!r}")
        unknown = [f for f in formats if f not in DISK_FORMATS]
        if unknown:
            raise ConfigError(key, f"unknown disk format {unknown[0]!r} (known: {', '.join(DISK_FORMATS)})")
        parsed[project] = tuple(formats)
    return MappingProxyType(parsed)


def _size_caps(values: Mapping[str, Any]) -> Mapping[str, int]:
    parsed: dict[str, int] = {}
    for project, size in _table(values, "project_max_virtual_size").items():
        try:
            parsed[project] = parse_size(size)
        except ValueError as exc:
            raise ConfigError(_key("project_max_virtual_size", project), str(exc)) from None
    return MappingProxyType(parsed)


def _pattern(values: Mapping[str, Any]) -> re.Pattern[str] | None:
    text = values["name_pattern"]
    if not text:
        return None
    try:
        return re.compile(text)
    except re.error as exc:
        raise ConfigError(_key("name_pattern"), f"not a valid regular expression: {exc}") from None


def parse_policy(values: Mapping[str, Any]) -> Policy:
    """Validate resolved ``[plugin.site_policy]`` values into a :class:`Policy`.

    Raises :class:`~importhooks.ConfigError` naming the offending key, for instance
    ``plugin.site_policy.project_disk_formats.PROJECT``.
    """
    prefixes = tuple(values["reserved_property_prefixes"])
    if not all(prefixes):
        raise ConfigError(_key("reserved_property_prefixes"), "an empty prefix would reserve every property")
    roles = frozenset(r.lower() for r in values["importer_roles"])
    if "" in roles:
        raise ConfigError(_key("importer_roles"), "role names must not be empty")
    return Policy(
        importer_roles=roles,
        name_max_length=values["name_max_length"],
        name_pattern=_pattern(values),
        reserved_prefixes=tuple(p.lower() for p in prefixes),
        project_disk_formats=_disk_formats(values),
        max_virtual_size=values["max_virtual_size"],
        project_max_virtual_size=_size_caps(values),
    )


class SitePolicyOptions(PluginOptions):
    """The plugin's :class:`PluginOptions`, checking the whole policy when the pipeline is built."""

    __slots__ = ()

    def resolve(self, table: Mapping[str, Any]) -> dict[str, Any]:
        values = super().resolve(table)
        parse_policy(values)
        return values


def plugin_options() -> SitePolicyOptions:
    """The declaration returned by ``importhooks_plugin_options``."""
    return SitePolicyOptions(SECTION, OPTIONS)
