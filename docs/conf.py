"""Sphinx configuration of the importhooks documentation.

Two pages are generated from the code at build time, into ``docs/_generated/``
(git-ignored), so they cannot drift from it:

* ``_generated/settings.rst``: the settings reference, from
  :func:`importhooks.settings.iter_setting_docs`;
* ``_generated/plugin_options.rst``: every built-in plugin's ``[plugin.NAME]``
  options, from their ``importhooks_plugin_options`` hooks;
* ``_generated/codes.rst``: the finding codes of the framework and of the built-in
  plugins (site plugins excluded: the table must not depend on what is installed
  on the machine that builds the docs);
* ``_generated/import_info.json`` and ``import_schema.json``: the discovery documents of
  the default settings (with ``require_os_type``), shown on the API page.
* ``_generated/builtins.rst``: the built-in plugins, the hooks they implement and
  what they do, from :data:`importhooks.plugins.DEFAULT_PLUGINS`.

Build: ``.venv/bin/sphinx-build -W --keep-going -b html docs docs/_build/html``.
No extension here touches the network.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import importlib.metadata
import inspect
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from importhooks import codes as framework_codes
from importhooks.server.discovery import import_info, import_schema
from importhooks.findings import FindingCode
from importhooks.plugins import DEFAULT_PLUGINS, PluginRegistry, build_registry, toml_value
from importhooks.settings import STAGES, PluginOption, PluginSettings, Settings, iter_setting_docs
from importhooks.units import format_size, parse_duration, parse_size

# -- Project -----------------------------------------------------------------

project = "importhooks"
author = "importhooks contributors"
copyright = "importhooks contributors"
release = version = importlib.metadata.version("importhooks")

# -- General -----------------------------------------------------------------

extensions = ["sphinx.ext.autodoc"]
exclude_patterns = ["_build", "_generated"]  # _generated/* are included, not documents of their own
nitpicky = False
default_role = "literal"

autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_member_order = "bysource"

# -- HTML --------------------------------------------------------------------

html_theme = "alabaster"
html_title = "importhooks"
html_theme_options = {
    "description": "A fail-closed, pluggable image import pipeline for Glance",
    "fixed_sidebar": True,
    "page_width": "1180px",  # fits a 1280 px window; narrower windows get the theme's one-column layout
}
#: Tables and code examples wrap instead of scrolling (see the file).
html_static_path = ["_static"]
html_css_files = ["importhooks.css"]

# -- Generated pages ---------------------------------------------------------

GENERATED = Path(__file__).resolve().parent / "_generated"


def _write(name: str, text: str) -> None:
    """Write ``_generated/NAME`` atomically, and only if it changed (keeps rebuilds incremental)."""
    GENERATED.mkdir(exist_ok=True)
    target = GENERATED / name
    if target.exists() and target.read_text(encoding="utf-8") == text:
        return
    fd, tmp = tempfile.mkstemp(dir=GENERATED, prefix=f".{name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, target)


_RST_SPECIAL = re.compile(r"([\\`*_|])")


def rst_text(text: str) -> str:
    """Escape prose for a table cell: no stray emphasis, references or substitutions."""
    return _RST_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def list_table(title: str, headers: Iterable[str], rows: Iterable[Iterable[str]], widths: str) -> str:
    """A ``list-table`` directive; cells are already reST."""
    lines = [f".. list-table:: {title}", "   :header-rows: 1", f"   :widths: {widths}", "   :class: longtable", ""]
    for row in (list(headers), *rows):
        for i, cell in enumerate(row):
            lines.append(f"   {'*' if i == 0 else ' '} - {cell}")
    return "\n".join(lines) + "\n"


# Settings reference


def _setting_fields() -> dict[str, dataclasses.Field[Any]]:
    """Every setting's dataclass field by dotted key (``timeouts.inspect``)."""
    found: dict[str, dataclasses.Field[Any]] = {}
    defaults = Settings()
    for spec in dataclasses.fields(Settings):
        found[spec.name] = spec
        value = getattr(defaults, spec.name)
        if dataclasses.is_dataclass(value):
            for sub in dataclasses.fields(value):
                found[f"{spec.name}.{sub.name}"] = sub
    return found


def _duration(seconds: float) -> str:
    whole = f"{seconds:g} s"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h ({whole})"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min ({whole})"
    return whole


def _size(size: int) -> str:
    readable = re.sub(r"\.0 ", " ", format_size(size))
    return readable if readable.endswith(" B") else f"{readable} ({size} bytes)"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _kind_and_default(spec: dataclasses.Field[Any] | None, default: object) -> tuple[str, str]:
    parse = spec.metadata.get("parse") if spec is not None else None
    if parse is None:
        return "table", "(none)"
    if parse is parse_size and isinstance(default, int):
        return "size", _size(default)
    if parse is parse_duration and isinstance(default, (int, float)):
        return "duration", _duration(float(default))
    if default is None:
        return "path", "(unset)"
    if isinstance(default, bool):
        return "boolean", f"``{_toml(default)}``"
    if isinstance(default, int):
        return "integer", f"``{default}``"
    if isinstance(default, (tuple, list)):
        kind = "list of ports" if getattr(parse, "__name__", "") == "_port_tuple" else "list of strings"
        return kind, f"``{_toml(default)}``" if default else "``[]``"
    return "string", f"``{_toml(default)}``"


def settings_page() -> str:
    fields = _setting_fields()
    rows = []
    for key, default, doc in iter_setting_docs():
        kind, shown = _kind_and_default(fields.get(key), default)
        rows.append([f"``{key}``", kind, shown, rst_text(doc)])
    header = ".. This file is generated by docs/conf.py from importhooks.settings.iter_setting_docs(). Do not edit.\n\n"
    return header + list_table("Settings", ["Key", "Type", "Default", "Meaning"], rows, "22 10 18 50")


def _takes_durations(option: PluginOption) -> bool:
    """A float option is a duration if it takes ``"90s"`` as 90 seconds (its own parser may not)."""
    if option.parse is None:
        return True
    try:
        return bool(option.parse("90s") == 90.0)
    except ValueError:
        return False


def _option_kind(option: PluginOption) -> tuple[str, str]:
    """An option's type and default, in the settings table's words."""
    default = option.default
    if option.size and isinstance(default, int):
        return "size", _size(default) if default else "``0``"
    if isinstance(default, enum.Enum):
        return "string", f"``{toml_value(default)}``"
    if isinstance(default, bool):
        return "boolean", f"``{toml_value(default)}``"
    if isinstance(default, int):
        return "integer", f"``{default}``"
    if isinstance(default, float):
        return ("duration", _duration(default)) if _takes_durations(option) else ("number", f"``{default:g}``")
    if isinstance(default, (tuple, list)):
        return "list of strings", f"``{toml_value(default)}``"
    if isinstance(default, Mapping):
        return "table", f"``{toml_value(default)}``"
    return "string", f"``{toml_value(default)}``"


def plugin_options_page(registry: PluginRegistry) -> str:
    """Every built-in plugin's options, in call order, as ``plugin.SECTION.NAME`` keys."""
    rows = []
    for spec in registry.declared_options().values():  # a built-in's section is its name
        for option in spec.options:
            kind, shown = _option_kind(option)
            rows.append([f"``plugin.{spec.section}.{option.name}``", kind, shown, rst_text(option.doc)])
    header = ".. This file is generated by docs/conf.py from the built-in plugins' options. Do not edit.\n\n"
    return header + list_table("Built-in plugin options", ["Key", "Type", "Default", "Meaning"], rows, "29 10 14 47")


# Finding codes table


def builtin_registry() -> PluginRegistry:
    """The built-in plugins only: what is installed on the building machine must not change the docs."""
    return build_registry(Settings(plugins=PluginSettings(entry_points=False)))


def declared_codes(registry: PluginRegistry) -> list[tuple[FindingCode, str]]:
    """``(code, declared by)`` for the framework and every built-in plugin, site plugins excluded."""
    declared: list[tuple[FindingCode, str]] = [(code, "framework") for code in framework_codes.FRAMEWORK_CODES]
    impls = registry.hook.importhooks_finding_codes.get_hookimpls()
    for impl in sorted(impls, key=lambda i: i.plugin_name):
        for code in impl.function() or ():
            declared.append((code, impl.plugin_name))
    # A cross-check with what the hook itself returns, so a wrongly built table fails the build.
    via_hook = {code.code for result in registry.hook.importhooks_finding_codes() for code in result or ()}
    assert via_hook <= {code.code for code, _ in declared}, "codes.rst would miss declared codes"
    return declared


def codes_page(registry: PluginRegistry) -> str:
    rows = []
    for code, plugin in declared_codes(registry):
        rows.append([
            f".. _{code.code}:\n\n       ``{code.code}``",  # an anchor (codes.html#qcow2-backing-file) and a label
            code.severity.value,
            rst_text(code.summary),
            rst_text(code.help),
            "framework" if plugin == "framework" else f"``{plugin}``",
        ])
    header = ".. This file is generated by docs/conf.py from the declared FindingCodes. Do not edit.\n\n"
    return header + list_table("Finding codes", ["Code", "Severity", "User message", "Meaning", "Declared by"], rows,
                               "22 10 24 32 12")


# Built-in plugins


def builtins_page(registry: PluginRegistry) -> str:
    hooks: dict[str, list[str]] = {}
    for hook, impls in registry.hook_order().items():
        for described in impls:
            name, _, flags = described.partition(" ")
            hooks.setdefault(name, []).append(hook.removeprefix("importhooks_") + (f" {flags}" if flags else ""))
    stage_order = ["finding_codes", "plugin_options", *STAGES, "notify"]

    def position(described: str) -> int:
        hook = described.split(" ", 1)[0]
        return stage_order.index(hook) if hook in stage_order else len(stage_order)

    rows = []
    for module_name in DEFAULT_PLUGINS:
        name = module_name.rsplit(".", 1)[1]
        doc = inspect.getdoc(importlib.import_module(module_name)) or ""
        summary = " ".join(doc.split("\n\n")[0].split())
        implemented = ", ".join(sorted(hooks.get(name, []), key=position))
        rows.append([f"``{name}``", f"``{module_name}``", rst_text(implemented), summary])
    header = ".. This file is generated by docs/conf.py from importhooks.plugins.DEFAULT_PLUGINS. Do not edit.\n\n"
    return header + list_table("Built-in plugins, in call order", ["Plugin", "Module", "Hooks", "What it does"],
                               rows, "14 26 20 40")


def discovery_documents() -> None:
    """The discovery documents of the default settings, as a server publishes them."""
    settings = Settings(require_os_type=True)
    _write("import_info.json", json.dumps(import_info(settings), indent=2) + "\n")
    _write("import_schema.json", json.dumps(import_schema(settings), indent=2) + "\n")


_registry = builtin_registry()
discovery_documents()
_write("settings.rst", settings_page())
_write("codes.rst", codes_page(_registry))
_write("builtins.rst", builtins_page(_registry))
_write("plugin_options.rst", plugin_options_page(_registry))
