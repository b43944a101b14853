"""swift-local: a user's object read into staging with the user's own token, against a real Swift.

The Swift is the session's (tests/swift_harness.py: proxy, account, container and object
servers, tempauth with the projects ``alpha`` and ``beta``). What a real Swift never does
(lie about a length, trickle, never end, redirect, send a wrong Etag) is in
tests/test_swift_local_hostile.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import hashlib
import json
import os
import socket
import time
import uuid
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


def test_static_large_object_is_read_whole(stored: SwiftCluster, staging: StagingArea, settings: Settings) -> None:
    """A manifest (as ``swift upload --use-slo`` makes for big images) is read as its segments, within the limit."""
    segments = [DATA[at:at + 100_000] for at in range(0, 300_000, 100_000)]
    for number, segment in enumerate(segments):
        stored.put(ALPHA, "segments", f"disk/{number}", segment)
    manifest = json.dumps([{"path": f"/segments/disk/{number}"} for number in range(len(segments))]).encode()
    stored.put(ALPHA, "images", "large.raw", manifest, query="multipart-manifest=put")
    url, token = stored.login(ALPHA)
    image_id = image()
    assert fetch_object_sync(url, token, "images", "large.raw", staging, image_id, settings) == 300_000
    assert staging.path(image_id).read_bytes() == DATA[:300_000]
    small = dataclasses.replace(settings, max_upload_bytes=250_000)
    with pytest.raises(PayloadTooLarge):
        fetch_object_sync(url, token, "images", "large.raw", StagingArea(staging.directory, small), image_id, small)
    assert_nothing_staged(staging)


def test_symlink_into_other_project_is_refused(stored: SwiftCluster, staging: StagingArea,
                                               settings: Settings) -> None:
    """Alpha links to beta's private object: Swift checks the target with alpha's token and refuses it."""
    stored.put(BETA, "private", "secret.raw", b"beta's data")
    stored.put(ALPHA, "images", "link.raw", b"", {"X-Symlink-Target": "private/secret.raw",
                                                   "X-Symlink-Target-Account": "AUTH_beta"})
    url, token = stored.login(ALPHA)
    with pytest.raises(ObjectNotAllowed) as caught:
        fetch_object_sync(url, token, "images", "link.raw", staging, image(), settings)
    assert caught.value.message.startswith("Your credentials do not allow")
    assert_nothing_staged(staging)
    assert stored.request("POST", BETA, "private", b"", {"X-Container-Read": ALPHA.login}) == 204
    image_id = image()  # once beta shares the container, the same link reads beta's object
    assert fetch_object_sync(url, token, "images", "link.raw", staging, image_id, settings) == 11
    assert staging.path(image_id).read_bytes() == b"beta's data"


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

