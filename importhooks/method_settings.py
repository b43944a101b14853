"""The import methods' own settings tables: ``[web_download]`` and ``[swift_local]``.

They are fields of :class:`~importhooks.settings.Settings` (the one entry point, which
loads and validates them like every other table); they live here so that each method's
knobs sit together, away from the pipeline's.
"""

from __future__ import annotations

import ipaddress
import string
from dataclasses import dataclass
from urllib.parse import urlsplit

from ._fields import _int, _setting, _str, _str_tuple

#: The one placeholder a ``[swift_local] storage_url`` may hold: the requester's project id.
PROJECT_PLACEHOLDER = "project_id"


def _port_tuple(value: object) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536 for v in value):
        raise ValueError(f"expected a list of port numbers (1 to 65535), got {value!r}")
    return tuple(value)


def _network_tuple(value: object) -> tuple[str, ...]:
    networks = _str_tuple(value)
    for text in networks:
        try:
            ipaddress.ip_network(text, strict=True)
        except ValueError:
            raise ValueError(f"expected networks such as 10.1.2.0/24 or fd00:1::/64, got {text!r}") from None
    return networks


def _storage_url_template(value: object) -> str:
    """An ``http(s)://host/...`` URL whose only placeholder is ``{project_id}``; empty: not configured."""
    text = _str(value)
    if not text:
        return text
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError:
        raise ValueError("unbalanced braces: the only placeholder is {project_id} (write {{ and }} for braces)"
                         ) from None
    for _literal, name, spec, conversion in parts:
        if name is not None and (name != PROJECT_PLACEHOLDER or spec or conversion):
            raise ValueError(f"the only placeholder is {{{PROJECT_PLACEHOLDER}}}, got {{{name}}}")
    url = urlsplit(text.format(project_id="p"))
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"expected http(s)://host/v1/AUTH_{{{PROJECT_PLACEHOLDER}}}, got {text!r}")
    if url.username is not None or url.password is not None or url.query or url.fragment:
        raise ValueError("the storage URL must not hold credentials, a query or a fragment")
    return text


@dataclass(frozen=True, slots=True)
class WebDownloadSettings:
    """web-download's URL filters (``[web_download]``), with Glance's names: a non-empty ``allowed_*`` list
    is all that is allowed (its ``disallowed_*`` twin is then ignored). Internal addresses are refused
    whatever they say, unless the host is in ``allowed_hosts`` or the address in ``allowed_networks``."""

    allowed_schemes: tuple[str, ...] = _setting(("http", "https"), "URL schemes web-download may fetch.",
                                                _str_tuple)
    disallowed_schemes: tuple[str, ...] = _setting((), "URL schemes refused (when allowed_schemes is empty).",
                                                   _str_tuple)
    allowed_hosts: tuple[str, ...] = _setting(
        (), "If not empty, the only hosts (names or addresses, exactly as in the URL) web-download may fetch "
        "from; an internal address or an unusual host form written here is allowed on purpose.", _str_tuple)
    disallowed_hosts: tuple[str, ...] = _setting((), "Hosts refused (when allowed_hosts is empty).", _str_tuple)
    allowed_ports: tuple[int, ...] = _setting((80, 443), "Ports web-download may connect to.", _port_tuple)
    disallowed_ports: tuple[int, ...] = _setting((), "Ports refused (when allowed_ports is empty).", _port_tuple)
    allowed_networks: tuple[str, ...] = _setting(
        (), "Internal networks (CIDR) web-download may fetch from anyway, e.g. an image mirror inside the cloud.",
        _network_tuple)
    max_redirects: int = _setting(5, "Redirects web-download follows, each one checked again, before it gives up.",
                                  _int)


@dataclass(frozen=True, slots=True)
class SwiftLocalSettings:
    """swift-local's object store (``[swift_local]``): where a user's objects are read, with that user's own
    token. The storage URL is the operator's, never the request's."""

    storage_url: str = _setting(
        "", "The object store account of the requester, e.g. "
        "\"https://swift.example.com:8080/v1/AUTH_{project_id}\": {project_id} is replaced with the requester's "
        "project id (quoted). Needed when enabled_import_methods includes swift-local; empty: not configured.",
        _storage_url_template)
