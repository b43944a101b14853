"""web-download cannot be turned against the cloud: the SSRF matrix, redirects, DNS rebinding, hostile servers.

The URL matrix runs :func:`check_url` with a test resolver (a plain function answering from a
table, passed where ``socket.getaddrinfo`` is by default); the fetch tests run the real
fetcher against real HTTP servers on loopback (tests/web_servers.py), allow-listed with
``allowed_networks = ["127.0.0.1/32"]`` and the server's port only where a test needs a server
it can reach. Every failure must leave the staging directory empty.
"""

from __future__ import annotations

import gzip
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from importhooks.errors import BadRequest, ImportHalted, PayloadTooLarge, RequestTimeout
from importhooks.server.methods._fetch import DownloadFailed, fetch_to_staging
from importhooks.server.methods._url_policy import RefusedURL, check_url
from importhooks.server.staging import StagingArea
from importhooks.settings import Settings, WebDownloadSettings

from .web_servers import TLSServer, WebServer, self_signed, web_server

PUBLIC_V4, PUBLIC_V6 = "93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"
DNS: dict[str, list[str]] = {
    "images.example.com": [PUBLIC_V4, PUBLIC_V6],
    "metadata.example.com": ["169.254.169.254"],
    "mixed.example.com": [PUBLIC_V4, "10.0.0.1"],
    "ula.example.com": ["fd00::1"],
    "mapped.example.com": ["::ffff:10.0.0.1"],
    "cgnat.example.com": ["100.64.1.1"],
    "localhost": ["127.0.0.1", "::1"],
}


class Resolver:
    """A DNS of our own: answers from ``table``, counts the questions."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = DNS if table is None else table
        self.asked: list[str] = []

    def __call__(self, host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        self.asked.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port, 0, 0) if ":" in a else (a, port)) for a in self.table[host]]


REFUSED: list[tuple[str, str]] = [
    # numbers in other forms than four plain decimal parts (OSSA-2026-004)
    ("http://2130706433/", "host"), ("http://0x7f.1/", "host"), ("http://0177.0.0.1/", "host"),
    ("http://127.1/", "host"), ("http://0x7f000001/", "host"), ("http://017700000001/", "host"),
    ("http://0/", "host"), ("http://127.0.0.01/", "host"), ("http://1.2.3.4.5/", "host"),
    ("http://0xa9.0xfe.0xa9.0xfe/", "host"), ("http://images.example.com.123/", "host"),
    # trailing dots, odd names, IDNA
    ("http://127.0.0.1./", "host"), ("http://images.example.com./", "host"), ("http://exa_mple.com/", "host"),
    ("http://xn--bcher-kva.example/", "host"), ("http://b\u00fccher.example/", "characters"),
    ("http://-bad.example.com/", "host"), ("http://a..b.example.com/", "host"), ("http:///x", "host"),
    # userinfo, percent-encoding, zone ids, backslashes, whitespace and control characters
    ("http://user:pass@images.example.com/", "credentials"), ("http://images.example.com@169.254.169.254/",
                                                              "credentials"),
    ("http://@images.example.com/", "credentials"), ("http://user@images.example.com/", "credentials"),
    ("http://%31%32%37.0.0.1/", "encoding"), ("http://images%2eexample.com/", "encoding"),
    ("http://[fe80::1%25eth0]/", "encoding"), ("http://images.example.com\\@169.254.169.254/", "characters"),
    ("http://exa mple.com/", "characters"), ("http://images.example.com/\n", "characters"),
    ("\thttp://images.example.com/", "characters"), ("http://images.example.com/\x00", "characters"),
    ("http://images.example.com/\x7f", "characters"),
    # schemes and ports
    ("ftp://images.example.com/", "scheme"), ("file:///etc/passwd", "scheme"), ("gopher://images.example.com/",
                                                                               "scheme"),
    ("javascript:alert(1)", "scheme"), ("dict://images.example.com:11211/", "scheme"), ("", "syntax"),
    ("http://images.example.com:080/", "port"), ("http://images.example.com:0/", "port"),
    ("http://images.example.com:65536/", "syntax"), ("http://images.example.com:8o/", "syntax"),
    ("http://[::1/", "syntax"), ("http://images.example.com:8080/", "port-filter"),
    ("http://images.example.com:22/", "port-filter"),
    # internal addresses written as addresses
    ("http://127.0.0.1/", "address"), ("http://0.0.0.0/", "address"), ("http://10.0.0.1/", "address"),
    ("http://172.16.0.1/", "address"), ("http://192.168.1.1/", "address"), ("http://169.254.169.254/", "address"),
    ("http://100.64.0.1/", "address"), ("http://224.0.0.1/", "address"), ("http://240.0.0.1/", "address"),
    ("http://255.255.255.255/", "address"), ("http://192.0.2.1/", "address"), ("http://198.51.100.1/", "address"),
    ("http://203.0.113.1/", "address"), ("http://198.18.0.1/", "address"), ("http://192.0.0.8/", "address"),
    ("http://[::1]/", "address"), ("http://[::]/", "address"), ("http://[::ffff:127.0.0.1]/", "address"),
    ("http://[::ffff:7f00:1]/", "address"), ("http://[::ffff:a9fe:a9fe]/", "address"),
    ("http://[::127.0.0.1]/", "address"), ("http://[64:ff9b::a9fe:a9fe]/", "address"),
    ("http://[64:ff9b::8.8.8.8]/", "address"), ("http://[64:ff9b:1::a00:1]/", "address"),
    ("http://[2002:a9fe:a9fe::1]/", "address"), ("http://[2002:7f00:1::]/", "address"),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "address"), ("http://[fec0::1]/", "address"),
    ("http://[fd00::1]/", "address"), ("http://[fc00::1]/", "address"), ("http://[fe80::1]/", "address"),
    ("http://[ff02::1]/", "address"), ("http://[2001:db8::1]/", "address"), ("http://[100::1]/", "address"),
    ("http://[3fff::1]/", "address"),
    # names whose answers are internal, or no answer
    ("http://metadata.example.com/", "address"), ("http://mixed.example.com/", "address"),
    ("http://ula.example.com/", "address"), ("http://mapped.example.com/", "address"),
    ("http://cgnat.example.com/", "address"), ("http://localhost/", "address"),
    ("http://nowhere.example.com/", "resolve"),
]

ACCEPTED: list[tuple[str, tuple[str, ...]]] = [
    ("http://images.example.com/disk.img", (PUBLIC_V4, PUBLIC_V6)),
    ("https://IMAGES.example.com/a%20b.qcow2?x=1#frag", (PUBLIC_V4, PUBLIC_V6)),
    ("http://8.8.8.8/disk.img", ("8.8.8.8",)),
    ("https://[2606:4700::1111]/disk.img", ("2606:4700::1111",)),
    ("http://images.example.com:80/disk.img", (PUBLIC_V4, PUBLIC_V6)),
    ("HTTPS://images.example.com:443/disk.img", (PUBLIC_V4, PUBLIC_V6)),
]


def test_the_matrix_has_at_least_60_url_forms() -> None:
    assert len(REFUSED) + len(ACCEPTED) >= 60


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_refused_url_forms(url: str, reason: str) -> None:
    resolver = Resolver()
    with pytest.raises(RefusedURL) as refused:
        check_url(url, WebDownloadSettings(), resolver)
    assert refused.value.reason == reason
    assert refused.value.status == 400
    message = refused.value.message
    for internal in ("169.254", "127.0", "10.0.0", "::1", "fd00", "localhost"):  # nothing echoed back
        assert internal not in message, message
    if reason not in ("address", "resolve"):
        assert resolver.asked == []  # refused on its text, before any DNS question


@pytest.mark.parametrize(("url", "addresses"), ACCEPTED)
def test_accepted_url_forms(url: str, addresses: tuple[str, ...]) -> None:
    target = check_url(url, WebDownloadSettings(), Resolver())
    assert tuple(str(a) for a in target.addresses) == addresses
    assert target.port in (80, 443) and target.host == target.host.lower()


def test_an_internal_address_in_a_refused_url_is_not_echoed() -> None:
    with pytest.raises(RefusedURL) as refused:
        check_url("http://metadata.example.com/latest/meta-data/", WebDownloadSettings(), Resolver())
    assert "169.254" not in refused.value.message and "metadata" not in refused.value.message


def test_glance_filters_allowed_lists_win_and_disallowed_lists_refuse() -> None:
    resolver = Resolver()
    only = WebDownloadSettings(allowed_hosts=("images.example.com",))
    assert check_url("http://images.example.com/x", only, resolver).host == "images.example.com"
    with pytest.raises(RefusedURL, match="host is not allowed"):
        check_url("http://8.8.8.8/x", only, resolver)
    deny = WebDownloadSettings(disallowed_hosts=("images.example.com",))
    with pytest.raises(RefusedURL, match="host is not allowed"):
        check_url("http://IMAGES.example.com/x", deny, resolver)
    schemes = WebDownloadSettings(allowed_schemes=(), disallowed_schemes=("http",))
    with pytest.raises(RefusedURL, match="scheme"):
        check_url("http://images.example.com/x", schemes, resolver)
    assert check_url("https://images.example.com/x", schemes, resolver).scheme == "https"
    ports = WebDownloadSettings(allowed_ports=(), disallowed_ports=(443,))
    assert check_url("http://images.example.com:8080/x", ports, resolver).port == 8080
    with pytest.raises(RefusedURL, match="port"):
        check_url("https://images.example.com/x", ports, resolver)


def test_an_operator_may_allow_list_an_internal_host_or_an_odd_form_explicitly() -> None:
    mirror = WebDownloadSettings(allowed_hosts=("127.1", "metadata.example.com"))
    # 127.1 is the operator's own choice: the real resolver reads it (as inet_aton does).
    assert [str(a) for a in check_url("http://127.1/x", mirror).addresses] == ["127.0.0.1"]
    assert check_url("http://metadata.example.com/x", mirror, Resolver()).host == "metadata.example.com"
    networks = WebDownloadSettings(allowed_networks=("10.0.0.0/8",))
    assert check_url("http://mixed.example.com/x", networks, Resolver()).port == 80
    with pytest.raises(RefusedURL):  # the rest of the internal ranges stay refused
        check_url("http://metadata.example.com/x", networks, Resolver())


# -- the fetcher against real servers -----------------------------------------------------------


@pytest.fixture
def server() -> Iterator[WebServer]:
    with web_server() as srv:
        yield srv


@pytest.fixture
def other() -> Iterator[WebServer]:
    """A server on 127.0.0.2: loopback too, and NOT allow-listed."""
    with web_server("127.0.0.2") as srv:
        yield srv


def settings_for(*servers: WebServer, limit: int = 4 << 20, seconds: float = 2.0, redirects: int = 5) -> Settings:
    policy = WebDownloadSettings(allowed_networks=("127.0.0.1/32",), allowed_ports=tuple(s.port for s in servers),
                                 max_redirects=redirects)
    return Settings(max_upload_bytes=limit, max_upload_time=seconds, web_download=policy)


def fetch(url: str, settings: Settings, staging_dir: Path, resolver: Any = socket.getaddrinfo) -> tuple[str, int]:
    image_id = str(uuid.uuid4())
    staging = StagingArea(staging_dir, settings)
    return image_id, fetch_to_staging(url, image_id, staging, settings, resolver)


def assert_nothing_staged(staging_dir: Path) -> None:
    assert list(staging_dir.iterdir()) == []


@pytest.mark.parametrize("chunked", [False, True])
def test_a_benign_download_is_staged_byte_for_byte(server: WebServer, tmp_path: Path, chunked: bool) -> None:
    data = bytes(range(256)) * 4099
    url = server.body("/disk.img", data, chunked=chunked)
    image_id, size = fetch(url, settings_for(server), tmp_path)
    assert size == len(data)
    assert (tmp_path / image_id).read_bytes() == data
    assert server.hits == [("/disk.img", f"127.0.0.1:{server.port}")]


def test_a_compressed_body_is_staged_as_sent_not_inflated(server: WebServer, tmp_path: Path) -> None:
    packed = gzip.compress(b"\0" * (1 << 20))
    url = server.body("/disk.gz", packed, headers={"Content-Encoding": "gzip"})
    image_id, size = fetch(url, settings_for(server, limit=64 << 10), tmp_path)
    assert (tmp_path / image_id).read_bytes() == packed and size == len(packed)


def test_redirects_within_the_allow_list_are_followed_each_checked(server: WebServer, tmp_path: Path) -> None:
    server.body("/final", b"data")
    server.redirect("/two", "/final", 307)
    url = server.redirect("/one", server.url("/two"), 301)
    _image_id, size = fetch(url, settings_for(server), tmp_path)
    assert size == 4 and [path for path, _ in server.hits] == ["/one", "/two", "/final"]


@pytest.mark.parametrize("location", [
    "http://127.0.0.2:{port}/x", "http://169.254.169.254/latest/meta-data/", "http://[::1]:{port}/x",
    "http://2130706433:{port}/x", "http://0x7f.1:{port}/x", "http://0177.0.0.2:{port}/x", "file:///etc/passwd",
    "http://user:secret@127.0.0.1:{port}/x", "http://10.0.0.1/x", "http://[::ffff:127.0.0.2]:{port}/x",
])
def test_redirects_into_refused_ranges_are_refused(server: WebServer, other: WebServer, tmp_path: Path,
                                                  location: str) -> None:
    other.body("/x", b"internal secret")
    server.redirect("/hop2", location.format(port=other.port))
    url = server.redirect("/hop1", "/hop2")
    with pytest.raises(RefusedURL):
        fetch(url, settings_for(server, other), tmp_path)
    assert other.hits == []
    assert_nothing_staged(tmp_path)


def test_a_redirect_loop_stops_at_the_hop_limit(server: WebServer, tmp_path: Path) -> None:
    url = server.redirect("/loop", "/loop")
    with pytest.raises(RefusedURL, match="redirects more than 3 times") as refused:
        fetch(url, settings_for(server, redirects=3), tmp_path)
    assert refused.value.reason == "redirects" and len(server.hits) == 4
    assert_nothing_staged(tmp_path)


def test_a_name_whose_answer_changes_is_resolved_once_and_the_connection_pinned(
        server: WebServer, other: WebServer, tmp_path: Path) -> None:
    server.body("/disk.img", b"checked")
    other.body("/disk.img", b"internal secret")
    answers: Sequence[str] = ["127.0.0.1", "127.0.0.2", "127.0.0.2"]  # a DNS rebinding attack
    asked: list[str] = []

    def rebinding(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        address = answers[min(len(asked), len(answers) - 1)]
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    policy = settings_for(server, other)
    port = server.port
    # A second lookup would send the connection to 127.0.0.2, which is not allow-listed.
    image_id, _size = fetch(f"http://rebind.example.com:{port}/disk.img", policy, tmp_path, rebinding)
    assert (tmp_path / image_id).read_bytes() == b"checked"
    assert asked == ["rebind.example.com"]  # one lookup: httpx never resolved the name itself
    assert server.hits == [("/disk.img", f"rebind.example.com:{port}")]  # Host stays the name
    assert other.hits == []
    with pytest.raises(RefusedURL):  # and the next import's lookup, now internal, is refused
        fetch(f"http://rebind.example.com:{port}/disk.img", policy, tmp_path / "next", rebinding)


def test_a_content_length_over_the_limit_is_refused_before_the_body(server: WebServer, tmp_path: Path) -> None:
    url = server.body("/big", b"\0" * (2 << 20))
    with pytest.raises(PayloadTooLarge):
        fetch(url, settings_for(server, limit=1 << 20), tmp_path)
    assert_nothing_staged(tmp_path)


def test_an_endless_body_stops_at_the_limit(server: WebServer, tmp_path: Path) -> None:
    url = server.endless("/endless")
    started = time.monotonic()
    with pytest.raises(PayloadTooLarge):
        fetch(url, settings_for(server, limit=1 << 20, seconds=20), tmp_path)
    assert time.monotonic() - started < 10
    assert_nothing_staged(tmp_path)


def test_a_server_that_lies_about_content_length_fails_cleanly(server: WebServer, tmp_path: Path) -> None:
    url = server.lying("/short", b"x" * 1000, declared=5000)
    with pytest.raises((DownloadFailed, BadRequest)):
        fetch(url, settings_for(server), tmp_path)
    assert_nothing_staged(tmp_path)


@pytest.mark.parametrize("route", ["trickle", "stall"])
def test_slow_servers_end_in_a_timeout_within_the_budget(server: WebServer, tmp_path: Path, route: str) -> None:
    url = server.trickle("/slow") if route == "trickle" else server.stall("/slow")
    started = time.monotonic()
    with pytest.raises(RequestTimeout) as timeout:
        fetch(url, settings_for(server, seconds=1.0), tmp_path)
    assert 0.9 < time.monotonic() - started < 3.0
    assert timeout.value.status == 408
    assert_nothing_staged(tmp_path)


def test_an_http_error_and_a_closed_port_fail_without_data(server: WebServer, tmp_path: Path) -> None:
    url = server.status("/missing", 404)
    with pytest.raises(DownloadFailed, match="HTTP 404") as failed:
        fetch(url, settings_for(server), tmp_path)
    assert failed.value.status == 502
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    closed_settings = settings_for(server).replace(web_download=WebDownloadSettings(
        allowed_networks=("127.0.0.1/32",), allowed_ports=(closed,)))
    with pytest.raises(DownloadFailed, match="could not be reached"):
        fetch(f"http://127.0.0.1:{closed}/x", closed_settings, tmp_path)
    assert_nothing_staged(tmp_path)


def test_credentials_are_refused_and_never_logged(server: WebServer, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    server.body("/x", b"data")
    caplog.set_level("DEBUG")
    with pytest.raises(RefusedURL, match="credentials"):
        fetch(f"http://alice:hunter2@127.0.0.1:{server.port}/x", settings_for(server), tmp_path)
    assert "hunter2" not in caplog.text and server.hits == []


def test_the_kill_switch_stops_a_download_in_progress(server: WebServer, tmp_path: Path) -> None:
    url = server.trickle("/slow", piece=b"x" * 1024, interval=0.05)
    stop_at = time.monotonic() + 0.3
    settings = settings_for(server, seconds=20)
    with pytest.raises(ImportHalted) as halted:
        fetch_to_staging(url, str(uuid.uuid4()), StagingArea(tmp_path, settings), settings,
                         halted=lambda: time.monotonic() > stop_at)
    assert halted.value.status == 503 and time.monotonic() < stop_at + 5
    assert_nothing_staged(tmp_path)


#: The matrix's forms a server can send in a Location header (no whitespace, controls or Unicode), except
#: those a redirect resolves against the redirecting URL ("" and "http:///x" point back to the same server)
#: and 127.0.0.1, allow-listed here.
LOCATIONS = [(url, reason) for url, reason in REFUSED
             if reason != "characters" and url not in ("", "http:///x", "http://127.0.0.1/")]


@pytest.mark.parametrize(("location", "reason"), LOCATIONS)
def test_every_refused_form_is_refused_as_a_redirect_from_a_live_server(
        server: WebServer, tmp_path: Path, location: str, reason: str) -> None:
    url = server.redirect("/hop", location)
    settings = settings_for(server)
    settings = settings.replace(web_download=WebDownloadSettings(
        allowed_networks=("127.0.0.1/32",), allowed_ports=(server.port, 80, 443)))
    with pytest.raises(RefusedURL) as refused:
        fetch(url, settings, tmp_path, Resolver())
    assert refused.value.reason == reason
    assert server.hits == [("/hop", f"127.0.0.1:{server.port}")]
    assert_nothing_staged(tmp_path)


@pytest.mark.parametrize("size", [1, 17, 512, 65536])
def test_a_body_sent_in_pieces_of_any_size_is_staged_whole(server: WebServer, tmp_path: Path, size: int) -> None:
    data = bytes(range(256)) * min(300, size * 12)  # 3 KiB in 1-byte chunks, 75 KiB in the larger ones
    url = server.body("/pieces", data, chunked=True, piece=size)
    image_id, staged = fetch(url, settings_for(server), tmp_path)
    assert staged == len(data) and (tmp_path / image_id).read_bytes() == data


def test_https_keeps_the_name_for_sni_and_the_certificate_check(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "images.example.com")
    tls = TLSServer(cert, key)
    try:
        settings = Settings(max_upload_time=5.0, web_download=WebDownloadSettings(
            allowed_networks=("127.0.0.1/32",), allowed_ports=(tls.port,)))
        resolver = Resolver({"images.example.com": ["127.0.0.1"]})
        staging_dir = tmp_path / "staging"
        with pytest.raises(DownloadFailed):  # the certificate is not trusted: no data is read
            fetch(f"https://images.example.com:{tls.port}/disk.img", settings, staging_dir, resolver)
        assert tls.names == ["images.example.com"]  # SNI is the name, not the pinned address
        assert resolver.asked == ["images.example.com"]
        assert_nothing_staged(staging_dir)
    finally:
        tls.close()
