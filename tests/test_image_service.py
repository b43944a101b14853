"""End to end: the reference image service (examples/image_service) driven by the REAL OpenStack clients.

The service runs as a subprocess (``importhooks-image-service``, installed from
examples/image_service) on 127.0.0.1 with its own data directory; one instance serves the
whole module, the restart test runs its own. python-glanceclient's ``glance`` CLI and
openstacksdk talk to it exactly as they would to Glance; httpx and raw sockets cover the
HTTP details the clients hide (headers, error shapes, limits, trickling uploads). Images
are built with real tools (qemu-img, sfdisk and mkfs, tar, gzip). Nothing is mocked.

Two test plugins run inside the service (tests/svc_*.py, enabled through the importhooks
settings): one slows an import whose image is named ``slow-<seconds>...``, the other writes
every import event to a file, from which the caps on concurrent imports are checked.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openstack
import openstack.exceptions
import pytest
from importhooks_image_service.config import load_config

from importhooks.server.discovery import import_info, import_schema
from importhooks.server.runner import INTERRUPTED
from importhooks.settings import settings_from_mapping

from . import compression_images as ci
from . import guest_images, images, ova_images
from .service_harness import (
    ADMIN,
    ALICE,
    BOB,
    PROJECT,
    SERVICE_BIN,
    MiB,
    ServiceProcess,
    assert_error,
    glance,
    md5,
    new_image,
    sdk,
    sha512,
    stage,
    start_import,
    status_of,
    unique,
    upload_file,
)

UPLOAD_LIMIT = 32 * MiB  # max_upload_bytes of the tests' service
HALTED_MESSAGE = "Image import is halted by the operator; try again later."  # pipeline.halted's summary

# openstacksdk warns about its own deprecated internals (find_* ignore_missing, service_type) on each call.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:openstack")


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def service(reference_service: ServiceProcess) -> ServiceProcess:
    """The session's reference service (caps 4 / 2 per project, 32 MiB and 2 s upload limits, the test plugins)."""
    return reference_service


@pytest.fixture(scope="module")
def raw_disk(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A benign 1 MiB raw disk (all zeros: nothing tells its OS, so an os_type claim is accepted unverified)."""
    return images.raw_image(tmp_path_factory.mktemp("raw") / "disk.raw", MiB).read_bytes()


# -- the package and its configuration ------------------------------------------------------


def test_the_default_config_serves_127_0_0_1_9292_with_os_type_required() -> None:
    config = load_config(None)
    assert (config.host, config.port) == ("127.0.0.1", 9292)
    assert config.importhooks.require_os_type is True
    assert config.importhooks.container_formats == ("bare", "ova", "compressed")
    assert config.importhooks.halt_file == config.data_dir / "HALT"
    assert {principal.project for principal in config.tokens.values()} >= {"admin", "demo"}


def test_a_bad_config_stops_the_service_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('port = 9292\n[importhooks]\nmax_upload_bytes = "lots"\n')
    done = subprocess.run([str(SERVICE_BIN), "--config", str(config)], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert "importhooks.max_upload_bytes" in done.stderr


# -- discovery, authentication, the create call (plain HTTP) --------------------------------


def test_version_discovery_needs_no_token(service: ServiceProcess) -> None:
    with service.client(None) as anonymous:
        root, versions = anonymous.get("/"), anonymous.get("/versions")
    assert (root.status_code, versions.status_code) == (300, 200)
    for response in (root, versions):
        (version,) = response.json()["versions"]
        assert version["id"].startswith("v2") and version["status"] == "CURRENT"
        assert version["links"] == [{"rel": "self", "href": f"{service.url}/v2/"}]


def test_every_v2_call_needs_a_known_token(service: ServiceProcess) -> None:
    with service.client(None) as anonymous, service.client("not-a-token") as stranger:
        assert_error(anonymous.get("/v2/images"), 401, "X-Auth-Token")
        assert_error(anonymous.get("/v2/info/import"), 401)
        assert_error(anonymous.post("/v2/images", json={"name": "x"}), 401)
        assert_error(stranger.get("/v2/schemas/image"), 401, "not valid")
    with service.client(ALICE) as alice:
        # glanceclient sends Content-Type: application/octet-stream on its GETs: accepted.
        response = alice.get("/v2/images", headers={"Content-Type": "application/octet-stream"})
        assert response.status_code == 200 and "images" in response.json()
        assert_error(alice.get("/v2/no-such-thing"), 404)


def test_discovery_documents_come_from_the_settings(service: ServiceProcess) -> None:
    settings = settings_from_mapping(service.settings)
    with service.client(BOB) as bob:
        schema = bob.get("/v2/schemas/image").json()
        assert bob.get("/v2/schemas/import").json() == import_schema(settings)
        assert bob.get("/v2/info/import").json() == import_info(settings)
    assert schema["name"] == "image"
    assert schema["additionalProperties"] == {"type": "string"}
    fields = schema["properties"]
    for name in ("id", "status", "owner", "checksum", "size", "virtual_size", "os_hash_algo", "os_hash_value",
                 "message", "created_at", "updated_at", "self", "file", "schema"):
        assert fields[name].get("readOnly") is True, name
    for name in ("message", "size", "virtual_size", "checksum", "os_hash_algo", "os_hash_value"):
        assert "null" in fields[name]["type"], name
    assert "killed" in fields["status"]["enum"]
    assert fields["tags"]["type"] == "array"
    assert fields["min_ram"]["type"] == fields["min_disk"]["type"] == "integer"
    assert fields["protected"]["type"] == fields["os_hidden"]["type"] == "boolean"
    assert fields["os_type"]["enum"] == ["linux", "windows"] and not fields["os_type"].get("readOnly")


def test_create_answers_with_the_import_discovery_headers(service: ServiceProcess) -> None:
    with service.client(ALICE) as alice, service.client(BOB) as bob:
        name = unique("headers")
        response = alice.post("/v2/images", json={"name": name, "disk_format": "qcow2", "container_format": "bare",
                                                  "os_type": "linux", "purpose": "demo"})
        assert response.status_code == 201, response.text
        image = response.json()
        image_id = image["id"]
        assert response.headers["Location"] == f"/v2/images/{image_id}"
        assert response.headers["OpenStack-image-import-methods"] == "glance-direct"
        assert response.headers["OpenStack-image-glance-direct-url"] == f"{service.url}/v2/images/{image_id}/stage"
        assert image["status"] == "queued" and image["owner"] == PROJECT[ALICE]
        assert (image["os_type"], image["purpose"]) == ("linux", "demo")
        assert image["checksum"] is None and image["size"] is None and image["message"] is None

        listed = alice.get("/v2/images", params={"name": name}).json()["images"]
        assert [entry["id"] for entry in listed] == [image_id]
        # Another project's image does not exist for bob; neither does an id that is not a UUID.
        assert_error(bob.get(f"/v2/images/{image_id}"), 404)
        assert bob.get("/v2/images", params={"name": name}).json()["images"] == []
        assert_error(bob.delete(f"/v2/images/{image_id}"), 404)
        assert_error(alice.get(f"/v2/images/{name}"), 404)  # openstacksdk's find_image relies on this 404


@pytest.mark.parametrize(("body", "status", "word"), [
    ({"os_glance_import_task": "x"}, 403, "reserved"),
    ({"importhooks_os_type_detected": "linux"}, 403, "protected"),
    ({"status": "active"}, 403, "read-only"),
    ({"checksum": "0" * 32}, 403, "read-only"),
    ({"os_type": "plan9"}, 400, "os_type"),
    ({"disk_format": "floppy"}, 400, "disk_format"),
    ({"min_ram": "lots"}, 400, "min_ram"),
    ({"custom": 7}, 400, "custom"),
    ({"visibility": "public"}, 403, "administrators"),
])
def test_create_refuses_what_users_may_not_set(service: ServiceProcess, body: dict[str, Any], status: int,
                                               word: str) -> None:
    with service.client(ALICE) as alice:
        name = unique("refused")
        assert_error(alice.post("/v2/images", json={"name": name, **body}), status, word)
        assert alice.get("/v2/images", params={"name": name}).json()["images"] == []


@pytest.mark.parametrize(("content_type", "body", "status", "field"), [
    ("text/plain", b'{"method": {"name": "glance-direct"}}', 415, "JSON"),
    ("application/json", b"{not json", 400, "not valid JSON"),
    ("application/json", b"{}", 400, "method"),
    ("application/json", b'{"method": {}}', 400, "method.name"),
    ("application/json", b'{"method": {"name": "web-download"}}', 400, "method.name"),
    ("application/json", b'{"method": {"name": "glance-direct", "uri": "http://x/"}}', 400, "method.uri"),
    ("application/json", b'{"method": {"name": "glance-direct"}, "os_type": "plan9"}', 400, "os_type"),
    ("application/json", b'{"method": {"name": "glance-direct"}, "evil": 1}', 400, "evil"),
])
def test_import_request_is_validated_naming_the_field(service: ServiceProcess, raw_disk: bytes, content_type: str,
                                                      body: bytes, status: int, field: str) -> None:
    with service.client(ALICE) as alice:
        image = new_image(alice, unique("badbody"))
        assert stage(alice, image["id"], raw_disk).status_code == 204
        response = alice.post(f"/v2/images/{image['id']}/import", content=body, headers={"Content-Type": content_type})
        assert_error(response, status, field)
        assert status_of(alice, image["id"]) == "uploading"  # refused before anything changed
        assert alice.delete(f"/v2/images/{image['id']}").status_code == 204


# -- python-glanceclient's CLI ---------------------------------------------------------------


def test_glance_cli_image_create_via_import(service: ServiceProcess, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    disk = images.qcow2_image(tmp_path / "benign.qcow2")
    data = disk.read_bytes()

    # The CLI builds image-create's flags from the image schema it cached in ~/.glanceclient; with no
    # cache yet it uses a built-in schema without os_type, so any first call caches it (and shows the method).
    info = glance(service, ALICE, home, "import-info")
    assert info.returncode == 0, info.stderr
    assert '"glance-direct"' in re.sub(r"[\s|]", "", info.stdout)  # the table wraps long cells
    assert (home / ".glanceclient" / "image_schema.json").is_file()

    create = ("image-create-via-import", "--disk-format", "qcow2", "--container-format", "bare",
              "--import-method", "glance-direct", "--file", str(disk))
    # The schema's os_type enum is enforced by the client, before it sends anything.
    plan9 = glance(service, ALICE, home, *create, "--name", "cli-plan9", "--os-type", "plan9")
    assert plan9.returncode != 0 and "plan9" in plan9.stdout + plan9.stderr
    # With stdin open but not a TTY (here /dev/null) the CLI takes stdin for the data and refuses --file.
    piped = glance(service, ALICE, home, *create, "--name", "cli-piped", "--os-type", "linux", stdin_closed=False)
    assert piped.returncode != 0 and "cannot use both --file and stdin" in piped.stderr
    with service.client(ALICE) as alice:
        for name in ("cli-plan9", "cli-piped"):
            assert alice.get("/v2/images", params={"name": name}).json()["images"] == []

    name = unique("cli-benign")
    done = glance(service, ALICE, home, *create, "--name", name, "--os-type", "linux", "--property", "purpose=e2e")
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"\|\s*id\s*\|\s*([0-9a-f-]{36})\s*\|", done.stdout)
    assert match, done.stdout
    image = service.wait_for_image(ALICE, match.group(1))  # the CLI never polls: it printed "importing"
    assert image["status"] == "active", image
    assert image["name"] == name and image["owner"] == PROJECT[ALICE]
    assert image["checksum"] == md5(data)
    assert (image["os_hash_algo"], image["os_hash_value"]) == ("sha512", sha512(data))
    assert image["size"] == len(data) and image["virtual_size"] == 64 * MiB
    assert (image["disk_format"], image["container_format"]) == ("qcow2", "bare")
    assert image["os_type"] == "linux" and image["purpose"] == "e2e"
    assert image["importhooks_os_type_detected"] == "unknown"  # an empty disk: the claim is kept, unverified
    assert image["message"] is None
    assert (service.store_dir / image["id"]).read_bytes() == data


# -- openstacksdk -----------------------------------------------------------------------------


def test_sdk_imports_a_benign_ova(service: ServiceProcess, tmp_path: Path) -> None:
    vmdk = ova_images.stream_vmdk(tmp_path / "disk.vmdk")
    ova = ova_images.package(vmdk).write(tmp_path / "benign.ova")
    conn = sdk(service, BOB)
    image = conn.image.create_image(name=unique("sdk-ova"), filename=str(ova), disk_format="vmdk",
                                    container_format="ova", use_import=True, os_type="linux")
    image = conn.image.wait_for_status(image, status="active", failures=["killed"], interval=1, wait=120)
    assert image.status == "active"
    # What is stored is the disk unpacked from the OVA, checked and hashed by the pipeline.
    assert (image.disk_format, image.container_format) == ("vmdk", "bare")
    assert image.checksum == md5(vmdk) and image.size == len(vmdk)
    assert (image.hash_algo, image.hash_value) == ("sha512", sha512(vmdk))
    assert image.os_type == "linux" and image.owner == PROJECT[BOB]
    assert image.properties["importhooks_os_type_detected"] == "unknown"
    assert (service.store_dir / image.id).read_bytes() == vmdk


def _backing_file(tmp_path: Path) -> Path:
    return images.qcow2_with_backing_file(tmp_path / "backing.qcow2")  # backing file: /etc/passwd


def _gzip_bomb(tmp_path: Path) -> Path:
    # 0x01 bytes, not zeros: a zero run is a fresh empty disk, held to max_image_size; data is held to max_ratio
    return ci.write(tmp_path / "bomb.raw.gz", ci.gzip_zeros(256 * MiB, fill=1))  # about 250 KiB expanding 1000:1


def _ntfs_disk(tmp_path: Path) -> Path:
    raw = tmp_path / "windows.raw"
    guest_images.partitioned_disk(raw, "gpt", ["vfat", "ntfs"])
    images.qemu_img("convert", "-O", "qcow2", str(raw), str(tmp_path / "windows.qcow2"))
    return tmp_path / "windows.qcow2"


HOSTILE = {
    "backing-file": (_backing_file, "qcow2", "bare", ("backing file", "self-contained")),
    "gzip-bomb": (_gzip_bomb, "raw", "compressed", ("expands", "decompressed")),
    "ntfs-claimed-linux": (_ntfs_disk, "qcow2", "bare", ("Windows", "os_type windows")),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_sdk_hostile_images_end_killed_with_a_message(service: ServiceProcess, tmp_path: Path, case: str) -> None:
    build, disk_format, container_format, words = HOSTILE[case]
    path = build(tmp_path)
    conn = sdk(service, ALICE)
    image = conn.image.create_image(name=unique(f"sdk-{case}"), filename=str(path), disk_format=disk_format,
                                    container_format=container_format, use_import=True,
                                    properties={"os_type": "linux"})
    with pytest.raises(openstack.exceptions.ResourceFailure, match="killed"):
        conn.image.wait_for_status(image, status="active", failures=["killed"], interval=1, wait=120)
    image = conn.image.get_image(image.id)
    assert image.status == "killed"
    message = image.properties["message"]  # not a field the SDK knows: it lands in properties
    for word in words:
        assert word in message, message
    assert "/" not in message and "passwd" not in message and str(service.base) not in message  # no host path
    assert image.checksum is None and image.size is None
    assert not (service.store_dir / image.id).exists()
    assert service.staged(image.id) == []


# -- limits and the status machine --------------------------------------------------------------


def raw_stage(service: ServiceProcess, token: str, image_id: str, headers: dict[str, str],
              parts: Sequence[tuple[bytes, float]] = (), timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
    """``PUT /stage`` over a raw socket: the headers, then each ``(bytes, pause)``, then read the answer.

    httpx cannot send a body slower than it can, or stop halfway and wait for the answer; a
    socket can. Nothing more is sent once the parts are out, so the server has read all that
    was sent when it answers, and closing cannot reset the connection under the answer.
    """
    head = [f"PUT /v2/images/{image_id}/stage HTTP/1.1", f"Host: 127.0.0.1:{service.port}",
            f"X-Auth-Token: {token}", "Content-Type: application/octet-stream"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", service.port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        for data, pause in parts:
            sock.sendall(data)
            time.sleep(pause)
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {response!r}"
            response += chunk
        header, _, body = response.partition(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        fields = {key.strip().lower(): value.strip() for key, _, value in (line.partition(":") for line in lines[1:])}
        while len(body) < int(fields.get("content-length", "0")):
            chunk = sock.recv(65536)
            assert chunk, "connection closed in the middle of the answer"
            body += chunk
    return int(lines[0].split()[1]), json.loads(body) if body else {}


def chunked(total: int, size: int = MiB) -> list[tuple[bytes, float]]:
    """``total`` bytes as HTTP chunks, without the terminating empty chunk."""
    parts = []
    for start in range(0, total, size):
        length = min(size, total - start)
        parts.append((f"{length:x}\r\n".encode() + b"\0" * length + b"\r\n", 0.0))
    return parts


@pytest.mark.parametrize("how", ["content-length", "image-size-header", "chunked"])
def test_an_upload_over_max_upload_bytes_is_413_and_nothing_stays_staged(service: ServiceProcess, raw_disk: bytes,
                                                                         how: str) -> None:
    with service.client(ALICE) as alice:
        image = new_image(alice, unique(f"too-large-{how}"))
        image_id = image["id"]
        assert stage(alice, image_id, raw_disk).status_code == 204  # an earlier, complete upload
        assert status_of(alice, image_id) == "uploading" and (service.staging_dir / image_id).is_file()
        if how == "content-length":  # refused before a byte of the body is read
            status, body = raw_stage(service, ALICE, image_id, {"Content-Length": str(UPLOAD_LIMIT + 1)})
        elif how == "image-size-header":  # what glanceclient sends: chunked, the size in a header
            status, body = raw_stage(service, ALICE, image_id, {"Transfer-Encoding": "chunked",
                                                                 "X-OpenStack-Image-Size": str(UPLOAD_LIMIT + 1)})
        else:  # no size declared: stopped the moment the body passes the limit
            status, body = raw_stage(service, ALICE, image_id, {"Transfer-Encoding": "chunked"},
                                     chunked(UPLOAD_LIMIT + 1))
        assert status == 413, body
        assert body["error"]["code"] == 413 and str(UPLOAD_LIMIT) in body["error"]["message"]
        assert status_of(alice, image_id) == "queued"
        # Neither the refused upload nor the earlier one (and the module's other tests leave nothing staged).
        assert service.staged() == []


def test_a_trickling_upload_is_408_and_nothing_stays_staged(service: ServiceProcess) -> None:
    with service.client(ALICE) as alice:
        image_id = new_image(alice, unique("trickle"))["id"]
        started = time.monotonic()
        # A few bytes, then silence past max_upload_time (2 s): the server's timer ends the upload.
        status, body = raw_stage(service, ALICE, image_id, {"Content-Length": str(MiB)},
                                 [(b"x" * 10, 0.5), (b"y" * 10, 0.0)])
        elapsed = time.monotonic() - started
        assert status == 408, body
        assert body["error"]["code"] == 408 and "longer than" in body["error"]["message"]
        assert 1.5 < elapsed < 30, elapsed
        assert status_of(alice, image_id) == "queued"
        assert service.staged(image_id) == []  # no partial file left


def test_calls_in_the_wrong_status_are_409(service: ServiceProcess, raw_disk: bytes) -> None:
    with service.client(ADMIN) as admin, service.client(ALICE) as alice:
        queued = new_image(admin, unique("conflict-queued"))["id"]
        assert_error(start_import(admin, queued), 409, "stage data first")  # import from queued

        image_id = new_image(admin, unique("slow-3-conflicts"))["id"]
        assert stage(admin, image_id, raw_disk).status_code == 204
        assert start_import(admin, image_id).status_code == 202
        assert status_of(admin, image_id) == "importing"
        assert_error(start_import(admin, image_id), 409, "being imported")  # import twice
        assert_error(stage(admin, image_id, raw_disk), 409, "being imported")  # stage while importing
        assert_error(upload_file(admin, image_id, raw_disk), 409, "being imported")

        image = service.wait_for_image(ADMIN, image_id)
        assert image["status"] == "active", image
        for response in (stage(admin, image_id, raw_disk), start_import(admin, image_id),
                         upload_file(admin, image_id, raw_disk)):
            assert_error(response, 409, "active")  # active images are immutable

        # The trusted upload path is for admins and services only.
        mine = new_image(alice, unique("member-file"))["id"]
        assert_error(upload_file(alice, mine, raw_disk), 403, "administrators")
        assert status_of(alice, mine) == "queued"


def test_delete_removes_staged_and_stored_data(service: ServiceProcess, raw_disk: bytes) -> None:
    with service.client(BOB) as bob:
        staged_id = new_image(bob, unique("delete-staged"))["id"]
        assert stage(bob, staged_id, raw_disk).status_code == 204
        assert (service.staging_dir / staged_id).is_file()
        assert bob.delete(f"/v2/images/{staged_id}").status_code == 204
        assert not (service.staging_dir / staged_id).exists()
        assert_error(bob.get(f"/v2/images/{staged_id}"), 404)

        active_name = unique("delete-active")
        active_id = new_image(bob, active_name)["id"]
        assert stage(bob, active_id, raw_disk).status_code == 204
        assert start_import(bob, active_id).status_code == 202
        assert service.wait_for_image(BOB, active_id)["status"] == "active"
        assert (service.store_dir / active_id).read_bytes() == raw_disk
        assert bob.delete(f"/v2/images/{active_id}").status_code == 204
        assert not (service.store_dir / active_id).exists()
        assert bob.get("/v2/images", params={"name": active_name}).json()["images"] == []


def test_delete_during_an_import_stores_nothing(service: ServiceProcess, raw_disk: bytes) -> None:
    with service.client(BOB) as bob:
        name = unique("slow-2-deleted")
        image_id = new_image(bob, name)["id"]
        assert stage(bob, image_id, raw_disk).status_code == 204
        assert start_import(bob, image_id).status_code == 202
        service.wait_for_event(lambda e: e["event"] == "image.import.started" and e["name"] == name)
        assert bob.delete(f"/v2/images/{image_id}").status_code == 204
        assert_error(bob.get(f"/v2/images/{image_id}"), 404)
        # The run finishes (its data was unlinked under it, or it is accepted and then finds the image gone) ...
        service.wait_for_event(lambda e: e["event"] == "image.import.finished" and e["name"] == name)
        time.sleep(0.5)  # ... and the runner's store and finish callbacks run right after
        assert_error(bob.get(f"/v2/images/{image_id}"), 404)
        assert not (service.store_dir / image_id).exists()
        assert service.staged(image_id) == []


# -- the kill switch ---------------------------------------------------------------------------


def test_the_halt_file_stops_imports_but_not_trusted_uploads(service: ServiceProcess, raw_disk: bytes) -> None:
    with service.client(ALICE) as alice, service.client(ADMIN) as admin:
        inflight_name = unique("slow-60-halt")
        inflight = new_image(alice, inflight_name)["id"]
        assert stage(alice, inflight, raw_disk).status_code == 204
        waiting = new_image(alice, unique("after-halt"))["id"]
        assert stage(alice, waiting, raw_disk).status_code == 204
        assert start_import(alice, inflight).status_code == 202
        service.wait_for_event(lambda e: e["event"] == "image.import.started" and e["name"] == inflight_name)

        service.halt_file.touch()  # what an operator does: no restart, no API call
        try:
            info = alice.get("/v2/info/import").json()
            assert info["import-methods"]["value"] == []
            assert_error(start_import(alice, waiting), 503, "halted")
            assert status_of(alice, waiting) == "uploading" and (service.staging_dir / waiting).is_file()
            fresh = alice.post("/v2/images", json={"name": unique("halted-create"), "disk_format": "raw",
                                                   "container_format": "bare", "os_type": "linux"})
            assert fresh.status_code == 201  # records can still be made, but no import is offered
            assert "OpenStack-image-import-methods" not in fresh.headers
            assert_error(stage(alice, fresh.json()["id"], raw_disk), 503, "halted")
            assert status_of(alice, fresh.json()["id"]) == "queued"

            started = time.monotonic()
            killed = service.wait_for_image(ALICE, inflight, timeout=30)
            assert killed["status"] == "killed" and killed["message"] == HALTED_MESSAGE
            assert time.monotonic() - started < 30  # stopped at the next check, not after its 60 s
            finished = service.wait_for_event(lambda e: e["event"] == "image.import.finished"
                                              and e["name"] == inflight_name)
            assert finished["verdict"] == "reject" and finished["codes"] == ["pipeline.halted"]

            # The trusted path keeps working: an admin uploads data to a new image, which goes active.
            trusted = new_image(admin, unique("trusted-while-halted"))["id"]
            response = admin.put(f"/v2/images/{trusted}/file", content=raw_disk,
                                 headers={"Content-Type": "application/octet-stream"})
            assert response.status_code == 204, response.text
            image = admin.get(f"/v2/images/{trusted}").json()
            assert image["status"] == "active" and image["size"] == len(raw_disk)
            assert image["checksum"] == md5(raw_disk) and image["os_hash_value"] == sha512(raw_disk)
            assert (service.store_dir / trusted).read_bytes() == raw_disk
        finally:
            service.halt_file.unlink(missing_ok=True)

        assert alice.get("/v2/info/import").json()["import-methods"]["value"] == ["glance-direct"]
        assert start_import(alice, waiting).status_code == 202
        assert service.wait_for_image(ALICE, waiting)["status"] == "active"


# -- the caps on concurrent imports -------------------------------------------------------------


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at the same instant as a start closes first)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def test_twenty_concurrent_imports_respect_the_caps(service: ServiceProcess, raw_disk: bytes) -> None:
    tokens = [ALICE, BOB, ADMIN]
    tag = uuid.uuid4().hex[:8]
    jobs: list[tuple[str, str]] = []
    for number in range(20):
        token = tokens[number % len(tokens)]
        with service.client(token) as client:
            image_id = new_image(client, f"slow-1.5-cap-{tag}-{number}")["id"]
            assert stage(client, image_id, raw_disk).status_code == 204
        jobs.append((token, image_id))

    barrier = threading.Barrier(len(jobs))

    def submit(job: tuple[str, str]) -> int:
        token, image_id = job
        with service.client(token) as client:
            barrier.wait(30)
            return start_import(client, image_id).status_code

    with ThreadPoolExecutor(len(jobs)) as pool:
        assert list(pool.map(submit, jobs)) == [202] * len(jobs)
    for token, image_id in jobs:
        image = service.wait_for_image(token, image_id, timeout=240)
        assert image["status"] == "active", image

    runs: dict[str, dict[str, Any]] = {}
    for event in service.events():
        if event["name"] and event["name"].startswith(f"slow-1.5-cap-{tag}-"):
            run = runs.setdefault(event["request_id"], {"project": event["project"]})
            run[event["event"]] = event["t"]
    assert len(runs) == 20
    intervals = {rid: (run["image.import.started"], run["image.import.finished"]) for rid, run in runs.items()}
    overall = max_overlap(list(intervals.values()))
    per_project = {project: max_overlap([intervals[rid] for rid, run in runs.items() if run["project"] == project])
                   for project in {run["project"] for run in runs.values()}}
    assert overall == 4, (overall, per_project)  # max_concurrent_imports: reached, never passed
    assert set(per_project) == {PROJECT[token] for token in tokens}
    assert max(per_project.values()) == 2 and all(n <= 2 for n in per_project.values()), per_project


# -- a crash in the middle of imports -----------------------------------------------------------


def test_a_restart_leaves_no_image_importing(tmp_path: Path, raw_disk: bytes) -> None:
    svc = ServiceProcess(tmp_path)
    svc.start()
    try:
        with svc.client(ALICE) as alice:
            resumed_name = "slow-4-resumed"
            resumed = new_image(alice, resumed_name)["id"]
            lost = new_image(alice, "slow-4-lost")["id"]
            for image_id in (resumed, lost):
                assert stage(alice, image_id, raw_disk).status_code == 204
                assert start_import(alice, image_id).status_code == 202
            for name in (resumed_name, "slow-4-lost"):
                svc.wait_for_event(lambda e, n=name: e["event"] == "image.import.started" and e["name"] == n)

        svc.kill()  # SIGKILL mid-import: no shutdown code runs
        claimed = {image_id: svc.staging_dir / f".import-{image_id}" for image_id in (resumed, lost)}
        assert all(path.is_file() for path in claimed.values())  # each import's data, claimed from staging
        claimed[lost].unlink()  # this one's data does not survive (e.g. staging on tmpfs)
        # What else a crash leaves: a run's temporary directory, a partial upload.
        (svc.data_dir / "work" / "importhooks-crashed").mkdir()
        (svc.data_dir / "work" / "importhooks-crashed" / "layer-1.raw").write_bytes(b"x")
        (svc.staging_dir / f".partial-{uuid.uuid4()}-{uuid.uuid4().hex}").write_bytes(b"x")
        svc.start()

        with svc.client(ALICE) as alice:
            assert status_of(alice, lost) == "killed"  # decided during start-up, before the first request
            assert alice.get(f"/v2/images/{lost}").json()["message"] == INTERRUPTED
            image = svc.wait_for_image(ALICE, resumed)
            assert image["status"] == "active", image
            assert image["checksum"] == md5(raw_disk)
            assert alice.get("/v2/images", params={"status": "importing"}).json()["images"] == []
        starts = [e for e in svc.events() if e["event"] == "image.import.started" and e["name"] == resumed_name]
        assert len(starts) == 2 and starts[0]["request_id"] == starts[1]["request_id"]  # resubmitted, same request
        assert svc.staged() == [] and list((svc.data_dir / "work").iterdir()) == []
    finally:
        svc.stop()
