"""The reference image service's authorization: oslo.policy under Glance's rule names, admins, visibility,
protected property names, and the checks on the trusted upload path.

One service loads a policy file that restricts image import (``import_image``) to the
``importer`` role, as the seed's "Policy impact" asks a site be able to; everything else is
Glance's defaults. Driven over HTTP with httpx and with openstacksdk.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import images
from .service_harness import (
    ADMIN,
    ALICE,
    BOB,
    CAROL,
    PROJECT,
    SERVICE_BIN,
    MiB,
    ServiceProcess,
    assert_error,
    listed,
    md5,
    new_image,
    patch_image,
    sdk,
    stage,
    start_import,
    status_of,
    unique,
    upload_file,
)

# openstacksdk warns about its own deprecated internals on each call.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:openstack")

POLICY = '# Only holders of the importer role import images; the rest are Glance\'s defaults.\n' \
         '"import_image": "role:importer"\n'


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    base = tmp_path_factory.mktemp("policy")
    (base / "policy.yaml").write_text(POLICY)
    svc = ServiceProcess(base, service_config={"policy_file": "policy.yaml"})  # relative: to the config file
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def raw_disk(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return images.raw_image(tmp_path_factory.mktemp("raw") / "disk.raw", MiB).read_bytes()


def test_a_policy_file_restricts_import_to_a_role(service: ServiceProcess, raw_disk: bytes) -> None:
    with service.client(ALICE) as alice, service.client(CAROL) as carol:
        image_id = new_image(alice, unique("policy-import"))["id"]  # add_image: Glance's default, a member may
        assert_error(stage(alice, image_id, raw_disk), 403, "not allowed to import")
        assert status_of(alice, image_id) == "queued" and service.staged(image_id) == []
        # carol is in the same project and holds the importer role: she stages and imports alice's image.
        assert stage(carol, image_id, raw_disk).status_code == 204
        assert_error(start_import(alice, image_id), 403, "not allowed to import")
        assert status_of(alice, image_id) == "uploading"
        assert start_import(carol, image_id).status_code == 202
        assert service.wait_for_image(ALICE, image_id)["status"] == "active"


def test_a_missing_policy_file_stops_the_service_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "service.toml"
    config.write_text(f'data_dir = "data"\npolicy_file = "{tmp_path / "nowhere.yaml"}"\n')
    run = subprocess.run([str(SERVICE_BIN), "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "policy_file" in run.stderr


def test_admins_act_on_every_projects_images(service: ServiceProcess) -> None:
    with service.client(ALICE) as alice, service.client(BOB) as bob, service.client(ADMIN) as admin:
        image = new_image(alice, unique("protected-by-alice"), protected=True)
        image_id = image["id"]
        assert_error(bob.get(f"/v2/images/{image_id}"), 404)  # another project's private image: not revealed
        assert_error(bob.delete(f"/v2/images/{image_id}"), 404)
        shown = admin.get(f"/v2/images/{image_id}")
        assert shown.status_code == 200 and shown.json()["owner"] == PROJECT[ALICE]
        assert image_id in listed(admin) and image_id not in listed(bob)
        assert_error(admin.delete(f"/v2/images/{image_id}"), 403, "protected")
        # The admin lifts the protection of the member's image, then deletes it.
        unprotect = patch_image(admin, image_id, [{"op": "replace", "path": "/protected", "value": False}])
        assert unprotect.status_code == 200 and unprotect.json()["protected"] is False
        assert unprotect.json()["owner"] == PROJECT[ALICE]  # still alice's
        assert admin.delete(f"/v2/images/{image_id}").status_code == 204
        assert_error(alice.get(f"/v2/images/{image_id}"), 404)


@pytest.mark.parametrize("name", ["IMPORTHOOKS_os_type_detected", "Importhooks_checked", "importhooks_verified",
                                  "OS_GLANCE_import_task"])
def test_protected_property_names_match_case_insensitively(service: ServiceProcess, name: str) -> None:
    with service.client(ALICE) as alice:
        body = {"name": unique("case"), "disk_format": "raw", "container_format": "bare", name: "windows"}
        assert_error(alice.post("/v2/images", json=body), 403, name)
        image_id = new_image(alice, unique("case-patch"))["id"]
        patch = patch_image(alice, image_id, [{"op": "add", "path": f"/{name}", "value": "x"}])
        assert_error(patch, 403, name)
        assert name not in alice.get(f"/v2/images/{image_id}").json()


def test_visibility_public_community_private_as_in_glance(service: ServiceProcess, raw_disk: bytes) -> None:
    with service.client(ALICE) as alice, service.client(BOB) as bob, service.client(ADMIN) as admin, \
            service.client(CAROL) as carol:
        assert_error(alice.post("/v2/images", json={"name": unique("pub"), "visibility": "public"}), 403,
                     "administrators")  # publicize_image: admins only
        community = new_image(alice, unique("community"), visibility="community")["id"]
        private = new_image(alice, unique("private"), visibility="private")["id"]
        public = new_image(admin, unique("public"), visibility="public")["id"]
        assert stage(carol, community, raw_disk).status_code == 204
        assert_error(start_import(admin, community), 403, "not allowed to import")  # no importer role
        assert start_import(carol, community).status_code == 202
        assert service.wait_for_image(ALICE, community)["status"] == "active"

        default = listed(bob)
        assert public in default and community not in default and private not in default  # Glance's default list
        assert community in listed(bob, visibility="community") and public in listed(bob, visibility="all")
        assert bob.get(f"/v2/images/{community}").status_code == 200
        download = bob.get(f"/v2/images/{community}/file")
        assert download.status_code == 200 and download.content == raw_disk
        assert download.headers["Content-MD5"] == md5(raw_disk)
        assert_error(bob.get(f"/v2/images/{private}"), 404)
        assert_error(bob.get(f"/v2/images/{private}/file"), 404)
        # Seeing is not owning: bob may not change or delete alice's community image.
        patch = patch_image(bob, community, [{"op": "replace", "path": "/name", "value": "bob's"}])
        assert_error(patch, 403, "not allowed to modify")
        assert_error(bob.delete(f"/v2/images/{community}"), 403, "not allowed to delete")
        # The owner makes it private again: bob loses it.
        patch = patch_image(alice, community, [{"op": "replace", "path": "/visibility", "value": "private"}])
        assert patch.status_code == 200 and patch.json()["visibility"] == "private"
        assert_error(bob.get(f"/v2/images/{community}"), 404)


def test_the_sdk_sees_other_projects_public_images(service: ServiceProcess) -> None:
    with service.client(ADMIN) as admin:
        public = new_image(admin, unique("sdk-public"), visibility="public")["id"]
    conn = sdk(service, BOB)
    assert public in {image.id for image in conn.image.images()}
    assert conn.image.get_image(public).visibility == "public"


# -- the trusted upload path's checks --------------------------------------------------------------


def test_trusted_uploads_are_checked_like_imports(service: ServiceProcess, tmp_path: Path) -> None:
    hostile = images.qcow2_with_backing_file(tmp_path / "backing.qcow2").read_bytes()
    benign = images.qcow2_image(tmp_path / "benign.qcow2").read_bytes()
    raw = images.raw_image(tmp_path / "disk.raw", MiB).read_bytes()
    with service.client(ADMIN) as admin:
        # An admin's qcow2 with a backing file: refused, as an import would be; nothing stored.
        image_id = new_image(admin, unique("trusted-backing"), disk_format="qcow2")["id"]
        message = assert_error(upload_file(admin, image_id, hostile), 400, "backing file")
        assert "passwd" not in message and "/" not in message
        assert status_of(admin, image_id) == "queued"
        assert not (service.store_dir / image_id).exists()
        assert list((service.data_dir / "uploads").iterdir()) == []
        # Raw data claimed qcow2: the format must match the claim.
        image_id = new_image(admin, unique("trusted-mismatch"), disk_format="qcow2")["id"]
        assert_error(upload_file(admin, image_id, raw), 400)
        assert status_of(admin, image_id) == "queued"
        # A benign qcow2 goes active, with the checksums and the verified properties of an import.
        image_id = new_image(admin, unique("trusted-benign"), disk_format="qcow2")["id"]
        assert upload_file(admin, image_id, benign).status_code == 204
        image = admin.get(f"/v2/images/{image_id}").json()
        assert image["status"] == "active" and image["checksum"] == md5(benign) and image["size"] == len(benign)
        assert image["virtual_size"] and image["importhooks_os_type_detected"]
        assert (service.store_dir / image_id).read_bytes() == benign


def test_trusted_upload_checks_can_be_turned_off(tmp_path: Path) -> None:
    hostile = images.qcow2_with_backing_file(tmp_path / "backing.qcow2").read_bytes()
    svc = ServiceProcess(tmp_path, service_config={"trusted_upload_checks": False})
    svc.start()
    try:
        with svc.client(ADMIN) as admin:
            image_id = new_image(admin, unique("unchecked"), disk_format="qcow2")["id"]
            assert upload_file(admin, image_id, hostile).status_code == 204  # the operator's choice
            image = admin.get(f"/v2/images/{image_id}").json()
            assert image["status"] == "active" and image["checksum"] == md5(hostile)
    finally:
        svc.stop()
