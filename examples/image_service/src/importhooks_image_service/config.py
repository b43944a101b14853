"""The service's configuration file (TOML): where it listens, its data, its tokens, the importhooks settings.

::

    host = "127.0.0.1"
    port = 9292
    data_dir = "/var/lib/image-service"    # relative: to the config file's directory
    log_level = "info"

    [tokens.SECRET]                        # X-Auth-Token: SECRET
    user = "alice"
    project = "4f0b1f5e"
    roles = ["member"]

    policy_file = "policy.yaml"            # oslo.policy rules under Glance's names; relative: to this file
    max_json_depth = 32                    # deepest nesting of a JSON request body (400 beyond)
    trusted_upload_checks = true           # PUT /file runs the import's checks too
    enabled_import_methods = ["glance-direct", "web-download"]   # Glance's names
    [web_download]                         # its URL filters: allowed_hosts, allowed_ports...
    allowed_ports = [80, 443]
    [swift_local]                          # swift-local reads the caller's objects from here, with their token
    storage_url = "https://swift.example.com/v1/AUTH_{project_id}"

    [importhooks]                          # passed to importhooks.settings.settings_from_mapping
    require_os_type = true
    halt_file = "HALT"                     # relative: inside data_dir

Every problem raises :class:`importhooks.ConfigError` naming the key; the service does not start.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from importhooks import ConfigError, Settings
from importhooks.settings import settings_from_mapping

DEFAULT_PORT = 9292
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_KEYS = ("host", "port", "data_dir", "log_level", "tokens", "importhooks", "policy_file", "max_json_depth",
         "trusted_upload_checks", "enabled_import_methods", "web_download", "swift_local")
#: Deepest nesting of arrays and objects accepted in a JSON request body (``max_json_depth``).
DEFAULT_MAX_JSON_DEPTH = 32
#: Glance's names, top-level as in glance-api.conf; they are importhooks settings (passed on into its table).
_IMPORT_KEYS = ("enabled_import_methods", "web_download", "swift_local")
_TOKEN_KEYS = ("user", "project", "roles")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a token stands for: the user, their project and roles."""

    user: str
    project: str
    roles: tuple[str, ...] = ()

    def has_role(self, *names: str) -> bool:
        """Whether the principal holds any of ``names`` (case-insensitive)."""
        held = {role.lower() for role in self.roles}
        return any(name.lower() in held for name in names)


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """The validated configuration of one service."""

    data_dir: Path
    importhooks: Settings
    tokens: Mapping[str, Principal] = field(default_factory=lambda: MappingProxyType({}))
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    log_level: str = "info"
    #: oslo.policy rules (YAML or JSON) overriding Glance's defaults; ``None``: the defaults.
    policy_file: Path | None = None
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    #: Run the import's checks on the trusted upload path (``PUT /file``) too.
    trusted_upload_checks: bool = True

    @property
    def staging_dir(self) -> Path:
        return self.data_dir / "staging"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def database(self) -> Path:
        return self.data_dir / "images.sqlite3"


def _str(data: Mapping[str, Any], key: str, default: str, prefix: str = "") -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{prefix}{key}", f"expected a non-empty string, got {value!r}")
    return value


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError("port", f"expected a port number (0 to 65535), got {value!r}")
    return value


def _path(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {value!r}")
    return value


def _depth(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ConfigError("max_json_depth", f"expected a nesting depth from 1 to 1000, got {value!r}")
    return value


def _tokens(raw: object) -> Mapping[str, Principal]:
    if not isinstance(raw, Mapping):
        raise ConfigError("tokens", "expected a table of tokens, e.g. [tokens.SECRET]")
    tokens: dict[str, Principal] = {}
    for token, entry in raw.items():
        prefix = f"tokens.{token}."
        if not isinstance(entry, Mapping):
            raise ConfigError(f"tokens.{token}", "expected a table with user, project and roles")
        unknown = sorted(set(entry) - set(_TOKEN_KEYS))
        if unknown:
            raise ConfigError(f"{prefix}{unknown[0]}", f"unknown key (known: {', '.join(_TOKEN_KEYS)})")
        roles = entry.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(role, str) and role for role in roles):
            raise ConfigError(f"{prefix}roles", f"expected a list of role names, got {roles!r}")
        tokens[token] = Principal(_str(entry, "user", "", prefix), _str(entry, "project", "", prefix), tuple(roles))
    return MappingProxyType(tokens)


def config_from_mapping(data: Mapping[str, Any], base: Path) -> ServiceConfig:
    """Validate parsed TOML into a :class:`ServiceConfig`; relative paths are relative to ``base``."""
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown setting (known: {', '.join(_KEYS)})")
    data_dir = _path(_str(data, "data_dir", "image-service-data"), base)
    log_level = _str(data, "log_level", "info").lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError("log_level", f"expected one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    table = data.get("importhooks", {})
    if not isinstance(table, Mapping):
        raise ConfigError("importhooks", "expected a table of importhooks settings")
    for key in _IMPORT_KEYS:
        if key in data:
            if key in table:
                raise ConfigError(key, "given both top-level and in [importhooks]; keep one")
            table = {**table, key: data[key]}
    try:
        settings = settings_from_mapping(table)
    except ConfigError as exc:
        top = exc.key.split(".", 1)[0] in _IMPORT_KEYS and exc.key.split(".", 1)[0] in data
        raise ConfigError(exc.key if top else f"importhooks.{exc.key}", exc.problem) from None
    # The halt file and the runs' scratch space live in data_dir unless given as absolute paths.
    changes: dict[str, Path] = {}
    if settings.halt_file is not None and not settings.halt_file.expanduser().is_absolute():
        changes["halt_file"] = data_dir / settings.halt_file
    if settings.work_dir is not None and not settings.work_dir.expanduser().is_absolute():
        changes["work_dir"] = data_dir / settings.work_dir
    return ServiceConfig(data_dir=data_dir, importhooks=settings.replace(**changes) if changes else settings,
                         tokens=_tokens(data.get("tokens", {})), host=_str(data, "host", "127.0.0.1"),
                         port=_port(data.get("port", DEFAULT_PORT)), log_level=log_level,
                         policy_file=_path(_str(data, "policy_file", ""), base) if "policy_file" in data else None,
                         max_json_depth=_depth(data.get("max_json_depth", DEFAULT_MAX_JSON_DEPTH)),
                         trusted_upload_checks=_bool(data, "trusted_upload_checks", True))


def default_config_text() -> str:
    """The TOML of the configuration shipped with the package."""
    return resources.files(__package__).joinpath("default.toml").read_text(encoding="utf-8")


def load_config(path: str | Path | None = None) -> ServiceConfig:
    """Load the configuration from ``path``, or the shipped default when ``None``."""
    if path is None:
        text, base = default_config_text(), Path.cwd()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
        base = Path(path).resolve().parent
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"not valid TOML: {exc}") from None
    return config_from_mapping(data, base)
