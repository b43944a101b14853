"""swift-local against an object store that misbehaves as a real Swift never does.

A small local HTTP server plays the store: it lies about a length, declares 1 TiB, never
ends, trickles, sends another object's Etag, redirects, answers other statuses, and sends
a good body in writes of 1, 17, 512 and 64 KiB bytes. tests/test_swift_local.py has the
tests against the real Swift.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from importhooks import Settings
from importhooks.errors import BadRequest, PayloadTooLarge, RequestError, RequestTimeout
from importhooks.server.staging import StagingArea
from importhooks.server.swift import ObjectStoreUnavailable, fetch_object_sync


@pytest.fixture
def staging(tmp_path: Path, settings: Settings) -> StagingArea:
    return StagingArea(tmp_path / "staging", settings)


def image() -> str:
    return str(uuid.uuid4())


def assert_nothing_staged(staging: StagingArea) -> None:
    assert list(staging.directory.iterdir()) == []


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
