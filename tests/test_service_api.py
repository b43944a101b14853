"""The Glance v2 calls the real clients use beyond the import: PATCH, tags, download, the list schema, media types.

Driven by the real ``openstack`` CLI (python-openstackclient, with the options that work
against a Glance 33 without Keystone: ``--os-auth-type admin_token --os-endpoint URL/v2``),
python-glanceclient's ``glance`` CLI, and httpx for the HTTP details the clients hide.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from . import images
from .service_harness import (
    ALICE,
    BOB,
    MiB,
    ServiceProcess,
    assert_error,
    glance,
    md5,
    new_image,
    openstack_cli,
    patch_image,
    sha512,
    stage,
    start_import,
    status_of,
    unique,
)


@pytest.fixture
def service(reference_service: ServiceProcess) -> ServiceProcess:
    """The session's reference service (caps 4 / 2 per project, 32 MiB and 2 s upload limits, the test plugins)."""
    return reference_service


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return images.qcow2_image(tmp_path_factory.mktemp("qcow2") / "disk.qcow2")


def active_image(service: ServiceProcess, token: str, data: bytes, **extra: object) -> str:
    with service.client(token) as client:
        image_id = new_image(client, unique("api"), **extra)["id"]
        assert stage(client, image_id, data).status_code == 204
        assert start_import(client, image_id).status_code == 202
    assert service.wait_for_image(token, image_id)["status"] == "active"
    return image_id


# -- the openstack CLI ------------------------------------------------------------------------------


def test_openstack_cli_create_set_unset_save_delete(service: ServiceProcess, qcow2: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    endpoint = f"{service.url}/v2"

    def osc(*args: str) -> str:
        run = openstack_cli(endpoint, ALICE, home, *args)
        assert run.returncode == 0, run.stderr
        return run.stdout

    name = unique("osc")
    created = json.loads(osc("image", "create", "--disk-format", "qcow2", "--container-format", "bare",
                             "--file", str(qcow2), "--import", "--property", "os_type=linux", name, "-f", "json"))
    image_id = created["id"]
    assert service.wait_for_image(ALICE, image_id)["status"] == "active"
    assert image_id in osc("image", "list", "-f", "value", "-c", "ID")

    osc("image", "set", "--name", f"{name}-renamed", "--property", "site=lab", "--tag", "gold", "--min-disk", "2",
        "--min-ram", "64", "--protected", image_id)
    shown = json.loads(osc("image", "show", image_id, "-f", "json"))
    assert shown["name"] == f"{name}-renamed" and shown["properties"]["site"] == "lab"
    assert shown["tags"] == ["gold"] and shown["min_disk"] == 2 and shown["min_ram"] == 64
    assert shown["protected"] is True
    assert openstack_cli(endpoint, ALICE, home, "image", "delete", image_id).returncode != 0  # protected

    osc("image", "unset", "--property", "site", "--tag", "gold", image_id)
    osc("image", "set", "--unprotected", image_id)
    shown = json.loads(osc("image", "show", image_id, "-f", "json"))
    assert "site" not in shown["properties"] and shown["tags"] == [] and shown["protected"] is False

    # `image save` downloads and checks the data against the checksum headers.
    out = tmp_path / "saved.qcow2"
    osc("image", "save", "--file", str(out), image_id)
    assert out.read_bytes() == qcow2.read_bytes()

    osc("image", "delete", image_id)
    with service.client(ALICE) as alice:
        assert_error(alice.get(f"/v2/images/{image_id}"), 404)
    assert not (service.store_dir / image_id).exists()


def test_an_endpoint_without_v2_gets_glances_version_choices(service: ServiceProcess, tmp_path: Path) -> None:
    """Glance's version negotiation answers a path naming no version with 300 and the versions document;
    ``openstack --os-endpoint URL`` then fails against Glance 33 and against this service alike, and
    ``--os-endpoint URL/v2`` works with both (the test above)."""
    with service.client(ALICE) as alice:
        for method, path in (("GET", "/images"), ("POST", "/images"), ("GET", "/v1/images")):
            response = alice.request(method, path, json={"name": "x"} if method == "POST" else None)
            assert response.status_code == 300, response.text
            assert response.json()["versions"][0]["links"][0]["href"] == f"{service.url}/v2/"
    home = tmp_path / "home"
    home.mkdir()
    # Measured against a Glance 33 (glance.wsgi.api served on 127.0.0.1): GET and POST /images answered
    # 300, `image list` failed printing 'images', as here; with URL/v2 the calls reached /v2/images.
    run = openstack_cli(service.url, ALICE, home, "image", "list")
    assert run.returncode != 0 and "'images'" in run.stdout + run.stderr
    assert "Traceback" not in service.log_tail(100_000)


# -- python-glanceclient ------------------------------------------------------------------------------


def test_glance_cli_update_tags_and_download(service: ServiceProcess, qcow2: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    data = qcow2.read_bytes()
    image_id = active_image(service, ALICE, data, disk_format="qcow2")

    update = glance(service, ALICE, home, "image-update", "--name", "renamed", "--property", "team=blue",
                    "--min-ram", "128", image_id)
    assert update.returncode == 0, update.stderr
    with service.client(ALICE) as alice:
        image = alice.get(f"/v2/images/{image_id}").json()
        assert image["name"] == "renamed" and image["team"] == "blue" and image["min_ram"] == 128
        assert glance(service, ALICE, home, "image-update", "--remove-property", "team", image_id).returncode == 0
        assert "team" not in alice.get(f"/v2/images/{image_id}").json()
        assert glance(service, ALICE, home, "image-tag-update", image_id, "blue").returncode == 0
        assert alice.get(f"/v2/images/{image_id}").json()["tags"] == ["blue"]
        assert glance(service, ALICE, home, "image-tag-delete", image_id, "blue").returncode == 0
        assert alice.get(f"/v2/images/{image_id}").json()["tags"] == []
        assert_error(alice.delete(f"/v2/images/{image_id}/tags/blue"), 404, "not found")

    out = tmp_path / "downloaded"
    download = glance(service, ALICE, home, "image-download", "--file", str(out), image_id)
    assert download.returncode == 0, download.stderr
    assert out.read_bytes() == data
    # The client checks the data against the image's os_hash_value (or Content-MD5 without one): the same
    # number of bytes, changed in the store, are refused.
    stored = service.store_dir / image_id
    stored.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
    corrupt = glance(service, ALICE, home, "image-download", "--file", str(tmp_path / "corrupt"), image_id)
    assert corrupt.returncode != 0
    assert "Corrupt image download" in corrupt.stderr and sha512(data) in corrupt.stderr


# -- raw HTTP ------------------------------------------------------------------------------------------


def test_download_headers_and_an_image_without_data(service: ServiceProcess) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    image_id = active_image(service, ALICE, data)
    with service.client(ALICE) as alice, service.client(BOB) as bob:
        response = alice.get(f"/v2/images/{image_id}/file")
        assert response.status_code == 200 and response.content == data
        assert response.headers["Content-MD5"] == md5(data)
        assert response.headers["Content-Length"] == str(MiB)
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert_error(bob.get(f"/v2/images/{image_id}/file"), 404)  # another project's private image
        queued = new_image(alice, unique("no-data"))["id"]
        empty = alice.get(f"/v2/images/{queued}/file")
        assert empty.status_code == 204 and empty.content == b""


def test_the_images_list_schema(service: ServiceProcess) -> None:
    with service.client(ALICE) as alice:
        schema = alice.get("/v2/schemas/images").json()
        assert schema["name"] == "images"
        assert schema["properties"]["images"]["items"] == alice.get("/v2/schemas/image").json()
        assert alice.get("/v2/images").json()["schema"] == "/v2/schemas/images"


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
def test_stage_and_upload_refuse_other_media_types(service: ServiceProcess, content_type: str | None) -> None:
    with service.client(ALICE) as alice, service.client("admin-token") as admin:
        image_id = new_image(alice, unique("media-type"))["id"]
        headers = {"Content-Type": content_type} if content_type else {}
        assert_error(alice.put(f"/v2/images/{image_id}/stage", content=b"\0" * 512, headers=headers), 415,
                     "application/octet-stream")
        assert status_of(alice, image_id) == "queued" and service.staged(image_id) == []
        mine = new_image(admin, unique("media-type-file"))["id"]
        assert_error(admin.put(f"/v2/images/{mine}/file", content=b"\0" * 512, headers=headers), 415)
        assert status_of(admin, mine) == "queued"


def test_patch_refusals_as_in_glance(service: ServiceProcess) -> None:
    image_id = active_image(service, ALICE, b"\0" * MiB)
    with service.client(ALICE) as alice:
        wrong = alice.patch(f"/v2/images/{image_id}", json=[{"op": "replace", "path": "/name", "value": "x"}])
        assert_error(wrong, 415, "json-patch")  # application/json is not a patch
        cases = [
            ([{"op": "replace", "path": "/status", "value": "active"}], 403, "read-only"),
            ([{"op": "replace", "path": "/checksum", "value": "0" * 32}], 403, "read-only"),
            ([{"op": "add", "path": "/os_glance_import_task", "value": "x"}], 403, "reserved"),
            ([{"op": "remove", "path": "/name"}], 403, "may not be removed"),
            ([{"op": "remove", "path": "/absent"}], 409, "does not exist"),
            ([{"op": "replace", "path": "/absent", "value": "x"}], 409, "does not exist"),
            ([{"op": "replace", "path": "/disk_format", "value": "qcow2"}], 403, "before the image has data"),
            ([{"op": "replace", "path": "/os_type", "value": "windows"}], 403, "before the image has data"),
            ([{"op": "replace", "path": "/min_ram", "value": -1}], 400, "min_ram"),
            ([{"op": "replace", "path": "/visibility", "value": "public"}], 403, "administrators"),
            ([{"op": "move", "path": "/name", "from": "/x"}], 400, "op"),
            ([{"op": "replace", "path": "/a/b", "value": "x"}], 400, "path"),
            ({"op": "replace"}, 400, "array"),
        ]
        before = alice.get(f"/v2/images/{image_id}").json()
        for changes, status, words in cases:
            assert_error(patch_image(alice, image_id, changes), status, words)  # type: ignore[arg-type]
        assert alice.get(f"/v2/images/{image_id}").json() == before  # nothing changed
        # The 2.0 patch media type (one member named by the operation) works too.
        older = alice.patch(f"/v2/images/{image_id}", json=[{"replace": "/name", "value": "older-style"}],
                            headers={"Content-Type": "application/openstack-images-v2.0-json-patch"})
        assert older.status_code == 200 and older.json()["name"] == "older-style"
        # Before it has data, an image's claims can still be changed.
        queued = new_image(alice, unique("claims"))["id"]
        changed = patch_image(alice, queued, [{"op": "replace", "path": "/os_type", "value": "windows"},
                                              {"op": "replace", "path": "/disk_format", "value": "qcow2"}])
        assert changed.status_code == 200
        assert changed.json()["os_type"] == "windows" and changed.json()["disk_format"] == "qcow2"
