"""web-download's URL policy: one strict reading of a URL, Glance's filters, then every address checked.

:func:`check_url` takes the URL a user gave (or a redirect's ``Location``) and returns a
:class:`Target`: the scheme, the host *as written*, the port, and the addresses the
connection may use, resolved once here (the fetcher connects to these and never resolves
again). It raises :class:`RefusedURL` (a 400 whose message never contains an address, or
anything else the user did not write) for:

* anything but printable ASCII (whitespace, control characters, Unicode: IDNA is refused),
  backslashes, credentials (``user:pass@``, any ``@`` in the authority), ``%`` in the
  authority (percent-encoded hosts, IPv6 zone ids), a port not written canonically;
* a host that is not a plain DNS name or a canonical address: ``2130706433``, ``0x7f.1``,
  ``0177.0.0.1``, ``127.1``, trailing dots, empty labels, ``xn--`` labels, underscores;
* Glance's scheme, host and port filters (``[web_download]``);
* a name that does not resolve, or any resolved address that is not public: loopback,
  private, link-local, shared (CGNAT), multicast, reserved, unspecified, documentation and
  benchmarking ranges, IPv4-mapped, -compatible and -translated IPv6, NAT64 (64:ff9b::/96,
  64:ff9b:1::/48), 6to4 and Teredo carrying such an IPv4 address, site-local and unique local.

The operator lifts the textual and address checks for one host by naming it exactly in
``allowed_hosts``, and the address checks for a network with ``allowed_networks``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from ...errors import BadRequest
from ...settings import WebDownloadSettings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``socket.getaddrinfo``'s signature; tests pass their own to play DNS.
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_LAST_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_DOTTED_QUAD = re.compile(r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|"
                          r"[1-9]?[0-9])){3}")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")

_V4_REFUSED = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32")]
_V6_REFUSED = [ipaddress.ip_network(n) for n in (
    "::/96",  # unspecified, loopback, IPv4-compatible
    "::ffff:0:0/96", "::ffff:0:0:0/96",  # IPv4-mapped, IPv4-translated
    "64:ff9b::/96", "64:ff9b:1::/48",  # NAT64
    "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20",  # discard, IETF protocols, documentation
    "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8")]


class RefusedURL(BadRequest):
    """A URL web-download will not fetch (400); ``reason`` is a stable word for logs and tests."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, field="method.uri")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: where the connection goes (``addresses``) and what it asks for (``url``)."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[Address, ...]


def _refuse(reason: str, message: str) -> RefusedURL:
    return RefusedURL(f"The URL cannot be used for web-download: {message}.", reason)


def _split(url: str) -> SplitResult:
    if not isinstance(url, str) or not url or len(url) > 4096:
        raise _refuse("syntax", "it is empty or longer than 4096 characters")
    if not _PRINTABLE.fullmatch(url):
        raise _refuse("characters", "it contains spaces, control or non-ASCII characters (write the URL encoded)")
    if "\\" in url:
        raise _refuse("characters", "it contains a backslash")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise _refuse("syntax", "it is not a valid URL") from None
    return parts


def _netloc_host_port(parts: SplitResult) -> tuple[str, str | None]:
    netloc = parts.netloc
    if "@" in netloc:
        raise _refuse("credentials", "URLs with credentials (user@ or user:password@) are not accepted")
    if "%" in netloc:
        raise _refuse("encoding", "percent-encoding and zone ids are not accepted in the host")
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise _refuse("syntax", "it is not a valid URL")
        return "[" + host.lower() + "]", rest[1:] if rest else None
    host, colon, port = netloc.partition(":")
    return host.lower(), port if colon else None


def _port(scheme: str, text: str | None) -> int:
    if text is None:
        return DEFAULT_PORTS[scheme]
    if not text.isdigit() or (text != "0" and text.startswith("0")) or not 0 < int(text) < 65536:
        raise _refuse("port", "the port is not a number from 1 to 65535 written plainly")
    return int(text)


def _literal(host: str, strict: bool) -> Address | None:
    """The address a host written as an address stands for; :class:`RefusedURL` for ambiguous forms.

    ``strict`` false (the host is allow-listed) lets other numeric forms through to the resolver.
    """
    if host.startswith("["):
        try:
            return ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _refuse("host", "the IPv6 address is not valid") from None
    if _DOTTED_QUAD.fullmatch(host):
        return ipaddress.IPv4Address(host)
    labels = host.split(".")
    if strict and (_NUMERIC_LAST_LABEL.fullmatch(labels[-1]) or all(
            _NUMERIC_LAST_LABEL.fullmatch(label) for label in labels if label)):
        raise _refuse("host", "the host is a number in a form other than four plain decimal parts")
    return None


def _check_name(host: str) -> None:
    if not host:
        raise _refuse("host", "it names no host")
    if host.endswith(".") or len(host) > 253:
        raise _refuse("host", "the host name has a trailing dot or is too long")
    for label in host.split("."):
        if not _LABEL.fullmatch(label):
            raise _refuse("host", "the host name is not a plain DNS name (letters, digits, hyphens)")
        if label.startswith("xn--"):
            raise _refuse("host", "internationalised (IDNA) host names are not accepted")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a 6to4 or Teredo address carries, if any."""
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_public(address: Address) -> bool:
    """Whether ``address`` is a public unicast address, by the ranges of the module doc."""
    if isinstance(address, ipaddress.IPv4Address):
        return not any(address in net for net in _V4_REFUSED)
    if any(address in net for net in _V6_REFUSED):
        return False
    inner = embedded_ipv4(address)
    if inner is not None and not is_public(inner):
        return False
    return address.is_global and not address.is_multicast


def _filtered(value: Any, allowed: Sequence[Any], disallowed: Sequence[Any]) -> bool:
    """Glance's rule: a non-empty allow-list is all that is allowed; else anything not disallowed."""
    return value in allowed if allowed else value not in disallowed


def _resolve(host: str, port: int, resolver: Resolver) -> tuple[Address, ...]:
    try:
        answers = resolver(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise _refuse("resolve", "its host name does not resolve") from None
    found: list[Address] = []
    for family, _type, _proto, _name, sockaddr in answers:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if address not in found:
            found.append(address)
    if not found:
        raise _refuse("resolve", "its host name does not resolve")
    return tuple(found)


def check_url(url: str, policy: WebDownloadSettings,
              resolver: Resolver = socket.getaddrinfo) -> Target:
    """The checked :class:`Target` of ``url``; :class:`RefusedURL` with the reason otherwise."""
    parts = _split(url)
    scheme = parts.scheme.lower()
    schemes = [[name.lower() for name in names] for names in (policy.allowed_schemes, policy.disallowed_schemes)]
    if scheme not in DEFAULT_PORTS or not _filtered(scheme, *schemes):
        raise _refuse("scheme", "its scheme is not allowed")
    host, port_text = _netloc_host_port(parts)
    port = _port(scheme, port_text)
    allowed_hosts = [name.lower() for name in policy.allowed_hosts]
    listed = host in allowed_hosts
    literal = _literal(host, strict=not listed)
    if literal is None and not listed:
        _check_name(host)
    if not _filtered(host, allowed_hosts, [name.lower() for name in policy.disallowed_hosts]):
        raise _refuse("host-filter", "its host is not allowed")
    if not _filtered(port, policy.allowed_ports, policy.disallowed_ports):
        raise _refuse("port-filter", "its port is not allowed")
    if literal is not None:
        addresses: tuple[Address, ...] = (literal,)
    else:
        addresses = _resolve(host, port, resolver)
    if not listed:
        networks = [ipaddress.ip_network(text) for text in policy.allowed_networks]
        for address in addresses:
            if not is_public(address) and not any(address in net for net in networks):
                raise _refuse("address", "its host is, or resolves to, an address that is not public")
    return Target(parts.geturl(), scheme, host, port, addresses)
