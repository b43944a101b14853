"""The one typed settings object, loaded from TOML, every limit named and documented.

Each field's metadata carries its documentation and its parser; the settings
reference in the docs and the error messages both come from them. Unknown keys and
bad values raise :class:`~importhooks.errors.ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ._fields import _bool, _int, _positive_int, _setting, _str, _str_tuple
from .errors import ConfigError
from .method_settings import SwiftLocalSettings as SwiftLocalSettings  # re-exported: Settings.swift_local
from .method_settings import WebDownloadSettings as WebDownloadSettings  # re-exported: Settings.web_download
from .units import format_size, parse_duration, parse_size

STAGES = ("pre_validate", "inspect", "sanitize", "set_protected_properties", "finalize")

DISK_FORMATS = ("raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "iso", "qed", "luks")
CONTAINER_FORMATS = ("bare", "ova", "ovf", "compressed")
#: Largest settings file :func:`load_settings` reads, in bytes; a real one is a few KiB.
MAX_CONFIG_BYTES = 1 << 20


def _property_patterns(value: object) -> tuple[str, ...]:
    patterns = _str_tuple(value)
    for pattern in patterns:
        if not pattern or "*" in pattern[:-1]:
            raise ValueError(f"expected property names or prefixes ending in '*', got {pattern!r}")
    return patterns


def _hash_algorithm(value: object) -> str:
    text = _str(value)
    if text not in hashlib.algorithms_available or text.startswith("shake"):
        raise ValueError(f"unknown hash algorithm {text!r} (e.g. sha512, sha256, sha3_512)")
    return text


def _optional_path(value: object) -> Path | None:
    text = _str(value)
    return Path(text) if text else None


@dataclass(frozen=True, slots=True)
class StageTimeouts:
    """Wall-time budget of each stage, in seconds (``[timeouts]``)."""

    pre_validate: float = _setting(10.0, "Checks of the request and claims, before data is read.", parse_duration)
    inspect: float = _setting(600.0, "Read-only analysis of the data, per pass.", parse_duration)
    sanitize: float = _setting(1800.0, "Decompression, extraction or conversion, per pass.", parse_duration)
    set_protected_properties: float = _setting(60.0, "Deriving the protected properties.", parse_duration)
    finalize: float = _setting(600.0, "Last checks and checksums.", parse_duration)

    def of(self, stage: str) -> float:
        return float(getattr(self, stage))


@dataclass(frozen=True, slots=True)
class PluginSettings:
    """Which plugins run, and in what order (``[plugins]``)."""

    disabled: tuple[str, ...] = _setting((), "Names of plugins (built-in or site) not to register.", _str_tuple)
    enabled: tuple[str, ...] = _setting(
        (), "Importable module names to register as plugins, besides built-ins and entry points.", _str_tuple
    )
    order: tuple[str, ...] = _setting(
        (),
        "Plugin names that run first, in this order, within each hook's tryfirst/normal/trylast group.",
        _str_tuple,
    )
    entry_points: bool = _setting(True, "Load site plugins from the 'importhooks.plugins' entry-point group.", _bool)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of importhooks. Build with :func:`load_settings` or ``Settings()``."""

    disk_formats: tuple[str, ...] = _setting(
        ("raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "iso"), "Disk formats accepted for import.", _str_tuple
    )
    container_formats: tuple[str, ...] = _setting(
        ("bare", "ova", "compressed"),
        "Container formats accepted for import: by default every one a built-in plugin unpacks. Only formats "
        "that an enabled plugin unpacks make sense here: data still in a container after sanitize is rejected "
        "(container.not_unpacked).",
        _str_tuple,
    )
    max_image_size: int = _setting(
        1 << 40, "Largest virtual size of a disk, in bytes (Glance's image_size_cap, 1 TiB).", parse_size
    )
    max_upload_bytes: int = _setting(1 << 40, "Largest staged upload, in bytes.", parse_size)
    max_upload_time: float = _setting(3600.0, "Longest a staging upload may take, in seconds.", parse_duration)
    os_types: tuple[str, ...] = _setting(("linux", "windows"), "Allowed values of the os_type claim.", _str_tuple)
    require_os_type: bool = _setting(False, "Whether an import request must claim os_type.", _bool)
    protected_properties: tuple[str, ...] = _setting(
        ("os_type", "importhooks_*"),
        "Image properties only plugins may set: exact names, or prefixes ending in '*'. An import request "
        "that sets one itself is rejected (properties.protected); os_type is claimed in its own field.",
        _property_patterns,
    )
    hashing_algorithm: str = _setting("sha512", "The multihash algorithm (os_hash_algo).", _hash_algorithm)
    max_read_passes: int = _setting(
        8, "Budget of bytes all plugins together may read from one data layer, in multiples of its size.", _int
    )
    max_sanitize_passes: int = _setting(
        4, "How many times sanitize may replace the data (nested containers) before the run is rejected.", _int
    )
    run_timeout: float = _setting(7200.0, "Wall-time budget of a whole run, in seconds.", parse_duration)
    max_concurrent_imports: int = _setting(
        4, "Imports a server runs at once (ImportRunner's worker threads); more wait their turn.", _positive_int
    )
    max_imports_per_project: int = _setting(
        2, "Imports of one project a server runs at once; that project's others wait their turn.", _positive_int
    )
    work_dir: Path | None = _setting(
        None, "Where runs make their temporary directory; empty means the system default.", _optional_path
    )
    enabled_import_methods: tuple[str, ...] = _setting(
        ("glance-direct",), "Import methods offered (Glance's name): glance-direct, web-download, swift-local.",
        _str_tuple
    )
    halt: bool = _setting(False, "Kill switch: refuse and stop every import.", _bool)
    halt_file: Path | None = _setting(
        None, "Kill switch at run time: imports halt while this file exists.", _optional_path
    )
    timeouts: StageTimeouts = field(default_factory=StageTimeouts, metadata={"doc": StageTimeouts.__doc__})
    plugins: PluginSettings = field(default_factory=PluginSettings, metadata={"doc": PluginSettings.__doc__})
    web_download: WebDownloadSettings = field(default_factory=WebDownloadSettings,
                                              metadata={"doc": WebDownloadSettings.__doc__})
    swift_local: SwiftLocalSettings = field(default_factory=SwiftLocalSettings,
                                            metadata={"doc": SwiftLocalSettings.__doc__})
    plugin: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: MappingProxyType({}),
        metadata={"doc": "One table per plugin, [plugin.NAME], for its own declared options."},
    )

    def is_protected(self, name: str) -> bool:
        """Whether the image property ``name`` is one only plugins may set (``protected_properties``).

        Names compare case-insensitively: ``IMPORTHOOKS_os_type_detected`` is as protected as
        ``importhooks_os_type_detected`` (a consumer may not tell them apart).
        """
        folded = name.casefold()
        return any(folded.startswith(p[:-1].casefold()) if p.endswith("*") else folded == p.casefold()
                   for p in self.protected_properties)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_SECTIONS: dict[str, type] = {"timeouts": StageTimeouts, "plugins": PluginSettings,
                               "web_download": WebDownloadSettings, "swift_local": SwiftLocalSettings}


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, raw in data.items():
        dotted = f"{prefix}{key}"
        spec = known.get(key)
        if spec is None:
            raise ConfigError(dotted, f"unknown setting (known: {', '.join(sorted(known))})")
        if key in _SECTIONS and cls is Settings:
            if not isinstance(raw, Mapping):
                raise ConfigError(dotted, "expected a table")
            values[key] = _build(_SECTIONS[key], raw, f"{dotted}.")
        elif key == "plugin" and cls is Settings:
            values[key] = _plugin_tables(raw)
        else:
            try:
                values[key] = spec.metadata["parse"](raw)
            except ValueError as exc:
                raise ConfigError(dotted, str(exc)) from None
    return cls(**values)


def _plugin_tables(raw: object) -> Mapping[str, Mapping[str, Any]]:
    if not isinstance(raw, Mapping) or not all(isinstance(v, Mapping) for v in raw.values()):
        raise ConfigError("plugin", "expected one table per plugin, e.g. [plugin.NAME]")
    return MappingProxyType({name: MappingProxyType(dict(table)) for name, table in raw.items()})


def settings_from_mapping(data: Mapping[str, Any]) -> Settings:
    """Validate a parsed mapping (e.g. from TOML) into :class:`Settings`."""
    settings: Settings = _build(Settings, data, "")
    for name in ("disk_formats", "container_formats"):
        allowed = DISK_FORMATS if name == "disk_formats" else CONTAINER_FORMATS
        for value in getattr(settings, name):
            if value not in allowed:
                raise ConfigError(name, f"unknown format {value!r} (known: {', '.join(allowed)})")
    if "swift-local" in settings.enabled_import_methods and not settings.swift_local.storage_url:
        raise ConfigError("swift_local.storage_url", "needed when enabled_import_methods includes swift-local")
    return settings


def _read_config(path: str | Path) -> bytes:
    """The bytes of the settings file: a regular file of at most :data:`MAX_CONFIG_BYTES`.

    Opened without blocking (a FIFO with no writer cannot hang the caller) and
    checked with ``fstat`` before a byte is read; at most 64 KiB past the limit are
    ever read, so a ``/proc`` file or a file growing meanwhile cannot fill memory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ConfigError("config", f"no such file: {path}") from None
    except IsADirectoryError:
        raise ConfigError("config", f"not a regular file: {path}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise ConfigError("config", f"cannot open {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError("config", f"not a regular file: {path}")
        if status.st_size > MAX_CONFIG_BYTES:
            raise ConfigError("config", _too_large(path))
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_CONFIG_BYTES and (chunk := os.read(fd, 1 << 16)):  # whole chunks: /proc wants them
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if total > MAX_CONFIG_BYTES:  # it grew since fstat, or it is a /proc file whose size says 0
        raise ConfigError("config", _too_large(path))
    return b"".join(chunks)


def _too_large(path: str | Path) -> str:
    return f"{path} is larger than {format_size(MAX_CONFIG_BYTES)}, the most a settings file may be"


def load_settings(path: str | Path | None = None) -> Settings:
    """Load settings from a TOML file; ``None`` gives the defaults.

    Every problem with the file (missing, not a regular file, larger than
    :data:`MAX_CONFIG_BYTES`, not UTF-8, not TOML, a bad key) raises
    :class:`~importhooks.errors.ConfigError`.
    """
    if path is None:
        return Settings()
    raw = _read_config(path)
    try:
        text = raw.decode("utf-8-sig")  # a byte order mark, as some editors write, is no error
    except UnicodeDecodeError as exc:
        raise ConfigError("config", f"not UTF-8 text: byte {exc.start} of {path}") from None
    import tomllib  # only a settings file needs it: the defaults load without

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError("config", "not valid TOML: arrays or tables nested too deeply") from None
    return settings_from_mapping(data)


def iter_setting_docs() -> list[tuple[str, object, str]]:
    """Return ``(dotted key, default, doc)`` for every setting, for the docs and ``--help``."""
    rows: list[tuple[str, object, str]] = []
    for spec in dataclasses.fields(Settings):
        if spec.name in _SECTIONS:
            for sub in dataclasses.fields(_SECTIONS[spec.name]):
                rows.append((f"{spec.name}.{sub.name}", sub.default, sub.metadata["doc"]))
        elif spec.name == "plugin":
            rows.append(("plugin.NAME.*", "(none)", spec.metadata["doc"]))
        else:
            rows.append((spec.name, spec.default, spec.metadata["doc"]))
    return rows


@dataclass(frozen=True, slots=True)
class PluginOption:
    """One option a plugin accepts in its ``[plugin.NAME]`` table.

    The value's type must match ``default``'s type (ints also accept sizes such as
    ``"4GiB"`` when ``size`` is true). ``parse``, if given, replaces that check: it
    takes the raw TOML value and returns the value to use, raising
    :class:`ValueError` with a message for a person if it is bad.
    """

    name: str
    default: Any
    doc: str
    size: bool = False
    parse: Callable[[object], Any] | None = None


@dataclass(frozen=True, slots=True)
class PluginOptions:
    """What ``importhooks_plugin_options`` returns: the plugin's section and its options."""

    section: str
    options: tuple[PluginOption, ...]

    def resolve(self, table: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``table`` (the user's ``[plugin.SECTION]``) and fill in the defaults."""
        known = {o.name: o for o in self.options}
        values = {o.name: o.default for o in self.options}
        for key, raw in table.items():
            dotted = f"plugin.{self.section}.{key}"
            option = known.get(key)
            if option is None:
                raise ConfigError(dotted, f"unknown option (known: {', '.join(sorted(known)) or 'none'})")
            values[key] = _coerce_option(option, raw, dotted)
        return values


def _coerce_option(option: PluginOption, raw: object, dotted: str) -> Any:
    default = option.default
    try:
        if option.parse is not None:
            return option.parse(raw)
        if option.size:
            return parse_size(raw)
        if isinstance(default, bool):
            return _bool(raw)
        if isinstance(default, int):
            return _int(raw)
        if isinstance(default, float):
            return parse_duration(raw)
        if isinstance(default, (tuple, list)):
            return _str_tuple(raw)
        if isinstance(default, str):
            return _str(raw)
    except ValueError as exc:
        raise ConfigError(dotted, str(exc)) from None
    return raw
