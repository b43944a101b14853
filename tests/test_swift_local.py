"""swift-local: a user's object read into staging with the user's own token, against a real Swift.

The Swift is the session's (tests/swift_harness.py: proxy, account, container and object
servers, tempauth with the projects ``alpha`` and ``beta``). What a real Swift never does
(lie about a length, trickle, never end, redirect, send a wrong Etag) is played by a small
local HTTP server at the end of this file, in place of the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from importhooks import Settings
from importhooks.errors import BadRequest, PayloadTooLarge, RequestError, RequestTimeout
from importhooks.server.staging import StagingArea
from importhooks.server.swift import (
    REQUEST_PARAMETERS,
    ObjectNotAllowed,
    ObjectNotFound,
    ObjectStoreUnavailable,
    fetch_object,
    fetch_object_sync,
)

from .swift_harness import ALPHA, BETA, POLICY, SwiftCluster

DATA = os.urandom(300_000) + b"importhooks swift-local"


@pytest.fixture
def staging(tmp_path: Path, settings: Settings) -> StagingArea:
    return StagingArea(tmp_path / "staging", settings)


@pytest.fixture(scope="module")
def stored(swift_cluster: SwiftCluster) -> SwiftCluster:
    """Alpha's objects: ``images/disk.raw`` (DATA) and ``big/big.raw`` (1 MiB)."""
    swift_cluster.put(ALPHA, "images", "disk.raw", DATA)
    swift_cluster.put(ALPHA, "big", "big.raw", bytes(1 << 20))
    return swift_cluster


def image() -> str:
    return str(uuid.uuid4())


def assert_nothing_staged(staging: StagingArea) -> None:
    assert list(staging.directory.iterdir()) == []


def assert_safe(error: RequestError, cluster: SwiftCluster, *names: str) -> None:
    """The user's message names no host, port, account, token or anything the user sent."""
    for text in ("127.0.0.1", str(cluster.ports["proxy"]), "AUTH_", "None", *names):
        assert text not in error.message, (text, error.message)


def test_swift_runs_on_its_own_configuration(swift_cluster: SwiftCluster) -> None:
    """The harness's swift.conf, not /etc/swift's: its storage policy is the one the proxy serves."""
    info = swift_cluster.info()
    assert [policy["name"] for policy in info["swift"]["policies"]] == [POLICY]
    assert "tempauth" in info


def test_own_token_reads_own_object(stored: SwiftCluster, staging: StagingArea, settings: Settings) -> None:
    url, token = stored.login(ALPHA)
    image_id = image()
    size = fetch_object_sync(url, token, "images", "disk.raw", staging, image_id, settings)
    assert size == len(DATA)
    assert staging.path(image_id).read_bytes() == DATA
    assert [p.name for p in staging.directory.iterdir()] == [image_id]  # no partial file left beside it


@pytest.mark.parametrize("name", ["dir/sub/disk image.qcow2", "../images/disk.raw", "a/./b/..", "ünïcødé ✓.raw",
                                  "100%25 %2F?#&+=;", "/leading//double", "x" * 1024])
def test_object_names_are_read_byte_exact(stored: SwiftCluster, staging: StagingArea, settings: Settings,
                                          name: str) -> None:
    """Names are quoted segment by segment: dot segments, '%', '?', '#' and '//' reach Swift as they are."""
    body = hashlib.sha256(name.encode()).digest() * 10
    stored.put(ALPHA, "names", name, body)
    url, token = stored.login(ALPHA)
    image_id = image()
    assert fetch_object_sync(url, token, "names", name, staging, image_id, settings) == len(body)
    assert staging.path(image_id).read_bytes() == body


def test_embedders_client_is_used_and_left_open(stored: SwiftCluster, staging: StagingArea,
                                                settings: Settings) -> None:
    url, token = stored.login(ALPHA)
    image_id = image()

    async def run() -> tuple[int, bool]:
        async with httpx.AsyncClient() as client:
            size = await fetch_object(url, token, "images", "disk.raw", staging, image_id, settings, client=client)
            return size, client.is_closed

    assert asyncio.run(run()) == (len(DATA), False)
    assert staging.path(image_id).read_bytes() == DATA


def test_stored_encoding_is_not_undone(stored: SwiftCluster, staging: StagingArea, settings: Settings) -> None:
    """An object stored with Content-Encoding: gzip is staged as stored, for the pipeline to judge."""
    packed = gzip.compress(DATA[:50_000])
    stored.put(ALPHA, "images", "packed.raw", packed, {"Content-Encoding": "gzip"})
    url, token = stored.login(ALPHA)
    image_id = image()
    assert fetch_object_sync(url, token, "images", "packed.raw", staging, image_id, settings) == len(packed)
    assert staging.path(image_id).read_bytes() == packed


def test_other_projects_container_is_refused(stored: SwiftCluster, staging: StagingArea, settings: Settings) -> None:
    """Bob knows alpha's storage URL and names: Swift itself refuses his token (403), nothing is staged."""
    alpha_url, _ = stored.login(ALPHA)
    _, bob_token = stored.login(BETA)
    with pytest.raises(ObjectNotAllowed) as caught:
        fetch_object_sync(alpha_url, bob_token, "images", "disk.raw", staging, image(), settings)
    assert caught.value.status == 403
    assert "do not allow" in caught.value.message
    assert_safe(caught.value, stored, "images", "disk.raw")
    assert_nothing_staged(staging)


def test_same_names_in_own_account_are_not_found(stored: SwiftCluster, staging: StagingArea,
                                                 settings: Settings) -> None:
    """Bob's own storage URL with alpha's names: his account has no such container."""
    bob_url, bob_token = stored.login(BETA)
    with pytest.raises(ObjectNotFound) as caught:
        fetch_object_sync(bob_url, bob_token, "images", "disk.raw", staging, image(), settings)
    assert caught.value.status == 400 and caught.value.field == "method.object"
    assert_nothing_staged(staging)


def test_read_acl_is_swifts_decision(stored: SwiftCluster, staging: StagingArea, settings: Settings) -> None:
    """With alpha's read ACL for bob, bob's token reads the object: Swift decides, not importhooks."""
    stored.put(ALPHA, "shared", "disk.raw", DATA[:1000])
    alpha_url, _ = stored.login(ALPHA)
    _, bob_token = stored.login(BETA)
    with pytest.raises(ObjectNotAllowed):
        fetch_object_sync(alpha_url, bob_token, "shared", "disk.raw", staging, image(), settings)
    assert stored.request("POST", ALPHA, "shared", b"", {"X-Container-Read": BETA.login}) == 204
    image_id = image()
    assert fetch_object_sync(alpha_url, bob_token, "shared", "disk.raw", staging, image_id, settings) == 1000
    assert staging.path(image_id).read_bytes() == DATA[:1000]


@pytest.mark.parametrize(("container", "name"), [("images", "missing.raw"), ("no-such-container", "disk.raw")])
def test_missing_object_or_container(stored: SwiftCluster, staging: StagingArea, settings: Settings,
                                     container: str, name: str) -> None:
    url, token = stored.login(ALPHA)
    image_id = image()
    assert fetch_object_sync(url, token, "images", "disk.raw", staging, image_id, settings) == len(DATA)
    with pytest.raises(ObjectNotFound) as caught:
        fetch_object_sync(url, token, container, name, staging, image_id, settings)
    assert caught.value.message == "Your object store has no such container or object."
    assert_safe(caught.value, stored, container, name)
    assert_nothing_staged(staging)


def test_object_over_the_limit(stored: SwiftCluster, staging: StagingArea, settings: Settings) -> None:
    """Swift declares 1 MiB; the limit is 512 KiB: 413 before a byte is staged, and earlier staged data goes too."""
    url, token = stored.login(ALPHA)
    image_id = image()
    assert fetch_object_sync(url, token, "images", "disk.raw", staging, image_id, settings) == len(DATA)
    small = dataclasses.replace(settings, max_upload_bytes=512 << 10)
    with pytest.raises(PayloadTooLarge) as caught:
        fetch_object_sync(url, token, "big", "big.raw", StagingArea(staging.directory, small), image_id, small)
    assert caught.value.status == 413
    assert_nothing_staged(staging)


@pytest.mark.parametrize("kind", ["unknown", "revoked", "empty", "header-injection", "too-long"])
def test_invalid_or_expired_token(stored: SwiftCluster, staging: StagingArea, settings: Settings,
                                  kind: str) -> None:
    url, token = stored.login(ALPHA)
    if kind == "revoked":
        stored.revoke(token)  # what tempauth sees of an expired token: it is gone from its cache
    else:
        token = {"unknown": f"AUTH_tk{uuid.uuid4().hex}", "empty": "",
                 "header-injection": f"{token}\r\nX-Auth-Token: other", "too-long": "A" * 8193}[kind]
    with pytest.raises(ObjectNotAllowed) as caught:
        fetch_object_sync(url, token, "images", "disk.raw", staging, image(), settings)
    assert caught.value.status == 403
    assert "invalid or expired" in caught.value.message
    assert_safe(caught.value, stored, token or "AUTH_")
    assert_nothing_staged(staging)


@pytest.mark.parametrize(("container", "name", "field"), [
    ("", "disk.raw", "method.container"),
    ("a/b", "disk.raw", "method.container"),
    ("é" * 129, "disk.raw", "method.container"),  # 258 bytes of UTF-8 in 129 characters
    ("nul\x00", "disk.raw", "method.container"),
    ("images", "", "method.object"),
    ("images", "x" * 1025, "method.object"),
    ("images", "lone\udc80surrogate", "method.object"),
    ("images", "nul\x00.raw", "method.object"),
    ("images", None, "method.object"),
])
def test_names_checked_before_any_request(staging: StagingArea, settings: Settings, container: str, name: str,
                                          field: str) -> None:
    """A closed port as the store: a request made would end in 502, not in the 400 naming the field.

    Data staged before (by an earlier upload) is gone too: a failed fetch leaves nothing staged.
    """
    image_id = image()
    staging.receive_sync(image_id, [b"earlier upload"])
    with pytest.raises(BadRequest) as caught:
        fetch_object_sync("http://127.0.0.1:9/v1/AUTH_x", "AUTH_tkx", container, name, staging, image_id, settings)
    assert caught.value.status == 400 and caught.value.field == field
    assert_nothing_staged(staging)


def test_image_id_must_be_a_uuid(staging: StagingArea, settings: Settings) -> None:
    with pytest.raises(BadRequest):
        fetch_object_sync("http://127.0.0.1:9/v1/AUTH_x", "AUTH_tkx", "c", "o", staging, "../x", settings)
    assert_nothing_staged(staging)


@pytest.mark.parametrize("storage_url", ["ftp://127.0.0.1/v1/AUTH_x", "http://user:pw@127.0.0.1:9/v1/AUTH_x",
                                         "http://127.0.0.1:9/v1/AUTH_x?redirect=1", "not a url", "http:///v1"])
def test_unusable_storage_url(staging: StagingArea, settings: Settings, storage_url: str) -> None:
    with pytest.raises(ObjectStoreUnavailable) as caught:
        fetch_object_sync(storage_url, "AUTH_tkx", "c", "o", staging, image(), settings)
    assert caught.value.status == 502 and "pw" not in caught.value.message
    assert_nothing_staged(staging)


def test_store_down(staging: StagingArea, settings: Settings) -> None:
    with pytest.raises(ObjectStoreUnavailable) as caught:
        fetch_object_sync("http://127.0.0.1:9/v1/AUTH_x", "AUTH_tkx", "c", "o", staging, image(), settings)
    assert "try again later" in caught.value.message
    assert_nothing_staged(staging)


def test_request_schema_fragment() -> None:
    properties, required = REQUEST_PARAMETERS
    assert set(properties) == {"container", "object"} and required == ("container", "object")
    assert properties["container"]["pattern"] == "^[^/]+$"


def test_timeout_bounds_the_whole_read(staging: StagingArea, settings: Settings) -> None:
    """RequestTimeout's message is the upload's, with the limit; this one from a server that never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts (the kernel does) and never answers
        port = listener.getsockname()[1]
        quick = dataclasses.replace(settings, max_upload_time=0.5)
        start = time.monotonic()
        with pytest.raises(RequestTimeout) as caught:
            fetch_object_sync(f"http://127.0.0.1:{port}/v1/AUTH_x", "AUTH_tkx", "c", "o",
                              StagingArea(staging.directory, quick), image(), quick)
    assert time.monotonic() - start < 3
    assert caught.value.status == 408 and "0.5 s" in caught.value.message
    assert_nothing_staged(staging)


# --- a store that misbehaves ------------------------------------------------------------------------------------
BODY = os.urandom(40_000)
HOSTILE_LIMIT = 10.0  # no handler of the hostile store runs longer, whatever the client does


class Hostile(BaseHTTPRequestHandler):
    """Answers GET /v1/AUTH_x/c/BEHAVIOUR[-ARG]; records each request's path and headers."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, dict[str, str]]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def do_GET(self) -> None:
        Hostile.seen.append((self.path, dict(self.headers)))
        behaviour, _, arg = self.path.rsplit("/", 1)[-1].partition("-")
        etag = hashlib.md5(BODY).hexdigest()
        try:
            if behaviour == "ok":  # BODY in writes of ARG bytes, with its length and Etag
                self.send(200, {"Content-Length": str(len(BODY)), "Etag": etag})
                self.write_slowly(BODY, int(arg), 0)
            elif behaviour == "chunked":  # BODY chunked, ARG bytes a chunk, no length
                self.send(200, {"Transfer-Encoding": "chunked", "Etag": etag})
                for at in range(0, len(BODY), int(arg)):
                    piece = BODY[at:at + int(arg)]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            elif behaviour == "short":  # declares all of BODY, sends half, hangs up
                self.send(200, {"Content-Length": str(len(BODY)), "Connection": "close"})
                self.wfile.write(BODY[: len(BODY) // 2])
                self.close_connection = True
            elif behaviour == "huge":  # declares 1 TiB
                self.send(200, {"Content-Length": str(1 << 40)})
                self.write_slowly(bytes(1 << 20), 1 << 16, 0)
            elif behaviour == "endless":  # chunked, never ends (until HOSTILE_LIMIT)
                self.send(200, {"Transfer-Encoding": "chunked"})
                self.write_slowly(b"%x\r\n%s\r\n" % (1 << 16, bytes(1 << 16)), 1 << 30, 0, endless=True)
            elif behaviour == "trickle":  # one byte every ARG ms
                self.send(200, {"Content-Length": str(len(BODY))})
                self.write_slowly(BODY, 1, int(arg) / 1000)
            elif behaviour == "etag":  # BODY with another object's Etag
                self.send(200, {"Content-Length": str(len(BODY)), "Etag": hashlib.md5(b"other").hexdigest()})
                self.wfile.write(BODY)
            elif behaviour == "redirect":  # to an object that exists
                self.send(302, {"Location": self.path.replace("redirect", "ok-65536"), "Content-Length": "0"})
            else:  # status ARG
                self.send(int(arg), {"Content-Length": "2"})
                self.wfile.write(b"no")
        except OSError:  # the client hung up: expected whenever it refuses the body
            self.close_connection = True

    def write_slowly(self, data: bytes, size: int, pause: float, endless: bool = False) -> None:
        deadline = time.monotonic() + HOSTILE_LIMIT
        while time.monotonic() < deadline:
            for at in range(0, len(data), size):
                self.wfile.write(data[at:at + size])
                if pause:
                    time.sleep(pause)
                if time.monotonic() > deadline:
                    return
            if not endless:
                return


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hangs up on a hostile answer is what the tests expect


@pytest.fixture(scope="module")
def hostile() -> Iterator[str]:
    """The storage URL of the misbehaving store."""
    server = HostileServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/AUTH_x"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("size", [1, 17, 512, 65536])
@pytest.mark.parametrize("framing", ["ok", "chunked"])
def test_any_chunking_stages_the_same_bytes(hostile: str, staging: StagingArea, settings: Settings, size: int,
                                            framing: str) -> None:
    """The server's writes of 1, 17, 512 and 64 KiB bytes, with a length or chunked: the same staged file."""
    image_id = image()
    assert fetch_object_sync(hostile, "AUTH_tkx", "c", f"{framing}-{size}", staging, image_id, settings) == len(BODY)
    assert staging.path(image_id).read_bytes() == BODY
    path, headers = Hostile.seen[-1]
    assert path == f"/v1/AUTH_x/c/{framing}-{size}"
    assert headers["X-Auth-Token"] == "AUTH_tkx" and headers["Accept-Encoding"] == "identity"


def test_length_that_lies(hostile: str, staging: StagingArea, settings: Settings) -> None:
    with pytest.raises(ObjectStoreUnavailable):
        fetch_object_sync(hostile, "AUTH_tkx", "c", "short", staging, image(), settings)
    assert_nothing_staged(staging)


def test_declared_size_over_the_limit_reads_nothing(hostile: str, staging: StagingArea, settings: Settings) -> None:
    """1 TiB declared, 1 MiB allowed: refused on the headers, without waiting for the body."""
    small = dataclasses.replace(settings, max_upload_bytes=1 << 20)
    start = time.monotonic()
    with pytest.raises(PayloadTooLarge):
        fetch_object_sync(hostile, "AUTH_tkx", "c", "huge", StagingArea(staging.directory, small), image(), small)
    assert time.monotonic() - start < 5
    assert_nothing_staged(staging)


def test_endless_body_stops_at_the_limit(hostile: str, staging: StagingArea, settings: Settings) -> None:
    small = dataclasses.replace(settings, max_upload_bytes=2 << 20)
    with pytest.raises(PayloadTooLarge):
        fetch_object_sync(hostile, "AUTH_tkx", "c", "endless", StagingArea(staging.directory, small), image(), small)
    assert_nothing_staged(staging)


def test_trickle_stops_at_the_time_limit(hostile: str, staging: StagingArea, settings: Settings) -> None:
    quick = dataclasses.replace(settings, max_upload_time=1.0)
    start = time.monotonic()
    with pytest.raises(RequestTimeout) as caught:
        fetch_object_sync(hostile, "AUTH_tkx", "c", "trickle-50", StagingArea(staging.directory, quick), image(),
                          quick)
    assert 0.9 < time.monotonic() - start < 4
    assert caught.value.status == 408
    assert_nothing_staged(staging)


def test_wrong_etag(hostile: str, staging: StagingArea, settings: Settings) -> None:
    image_id = image()
    assert fetch_object_sync(hostile, "AUTH_tkx", "c", "ok-65536", staging, image_id, settings) == len(BODY)
    with pytest.raises(ObjectStoreUnavailable) as caught:
        fetch_object_sync(hostile, "AUTH_tkx", "c", "etag", staging, image_id, settings)
    assert "checksum" in caught.value.message
    assert_nothing_staged(staging)  # the earlier, good data is gone too: a failed fetch leaves nothing


def test_redirect_is_not_followed(hostile: str, staging: StagingArea, settings: Settings) -> None:
    before = len(Hostile.seen)
    with pytest.raises(ObjectStoreUnavailable):
        fetch_object_sync(hostile, "AUTH_tkx", "c", "redirect", staging, image(), settings)
    assert [path for path, _ in Hostile.seen[before:]] == ["/v1/AUTH_x/c/redirect"]
    assert_nothing_staged(staging)


@pytest.mark.parametrize(("status", "error", "http"), [(500, ObjectStoreUnavailable, 502),
                                                       (503, ObjectStoreUnavailable, 502),
                                                       (429, ObjectStoreUnavailable, 502),
                                                       (400, BadRequest, 400), (416, BadRequest, 400)])
def test_other_answers(hostile: str, staging: StagingArea, settings: Settings, status: int,
                       error: type[RequestError], http: int) -> None:
    with pytest.raises(error) as caught:
        fetch_object_sync(hostile, "AUTH_tkx", "c", f"status-{status}", staging, image(), settings)
    assert type(caught.value) is error and caught.value.status == http
    assert "127.0.0.1" not in caught.value.message
    assert_nothing_staged(staging)
