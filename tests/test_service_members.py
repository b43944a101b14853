"""Image sharing (``/v2/images/{id}/members``) in the reference image service, as Glance has it.

Driven by python-glanceclient's ``glance`` CLI (``member-create``, ``member-update``,
``member-list``, ``member-delete``: they need no Keystone, unlike ``openstack image add
project``, which looks the project up in the identity service), openstacksdk, and httpx for
the refusals.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .service_harness import (
    ADMIN,
    ALICE,
    BOB,
    CAROL,
    PROJECT,
    MiB,
    ServiceProcess,
    assert_error,
    glance,
    listed,
    md5,
    new_image,
    patch_image,
    sdk,
    stage,
    start_import,
    unique,
)

pytestmark = pytest.mark.filterwarnings("ignore::Warning:openstack")


@pytest.fixture
def service(reference_service: ServiceProcess) -> ServiceProcess:
    """The session's reference service (caps 4 / 2 per project, 32 MiB and 2 s upload limits, the test plugins)."""
    return reference_service


def test_glance_cli_shares_an_image_with_another_project(service: ServiceProcess, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    data = b"\1" * MiB
    with service.client(ALICE) as alice, service.client(BOB) as bob:
        image_id = new_image(alice, unique("shared"))["id"]  # visibility: shared, Glance's default
        assert stage(alice, image_id, data).status_code == 204
        assert start_import(alice, image_id).status_code == 202
        assert service.wait_for_image(ALICE, image_id)["status"] == "active"
        assert_error(bob.get(f"/v2/images/{image_id}"), 404)  # not shared yet

        run = glance(service, ALICE, home, "member-create", image_id, PROJECT[BOB])
        assert run.returncode == 0, run.stderr
        assert "pending" in run.stdout
        # A pending member sees the image but does not list it, unless it asks for pending ones.
        assert bob.get(f"/v2/images/{image_id}").status_code == 200
        assert image_id not in listed(bob) and image_id in listed(bob, member_status="pending")

        run = glance(service, BOB, home, "member-update", image_id, PROJECT[BOB], "accepted")
        assert run.returncode == 0, run.stderr
        assert image_id in listed(bob) and image_id in listed(bob, visibility="shared")
        download = bob.get(f"/v2/images/{image_id}/file")
        assert download.status_code == 200 and download.headers["Content-MD5"] == md5(data)
        run = glance(service, BOB, home, "member-list", "--image-id", image_id)
        assert run.returncode == 0 and "accepted" in run.stdout

        run = glance(service, ALICE, home, "member-delete", image_id, PROJECT[BOB])
        assert run.returncode == 0, run.stderr
        assert_error(bob.get(f"/v2/images/{image_id}"), 404)
        assert image_id not in listed(bob, member_status="all")


def test_member_refusals_as_in_glance(service: ServiceProcess) -> None:
    with service.client(ALICE) as alice, service.client(BOB) as bob, service.client(CAROL) as carol, \
            service.client(ADMIN) as admin:
        private = new_image(alice, unique("private"), visibility="private")["id"]
        assert_error(alice.post(f"/v2/images/{private}/members", json={"member": PROJECT[BOB]}), 403,
                     "Only shared images")
        image_id = new_image(alice, unique("shared-refusals"))["id"]
        members = f"/v2/images/{image_id}/members"
        assert_error(bob.post(members, json={"member": PROJECT[BOB]}), 404)  # bob does not see it
        assert_error(alice.post(members, json={"member": ""}), 400, "member")
        assert_error(alice.post(members, content=b"[" * 5000, headers={"Content-Type": "application/json"}), 400)
        assert alice.post(members, json={"member": PROJECT[BOB]}).json()["status"] == "pending"
        assert alice.post(members, json={"member": "project-c"}).status_code == 200
        assert_error(alice.post(members, json={"member": PROJECT[BOB]}), 409, "already")
        # Only the member project itself answers; not the owner, not another member.
        assert_error(alice.put(f"{members}/{PROJECT[BOB]}", json={"status": "accepted"}), 403, "member project")
        assert_error(carol.put(f"{members}/{PROJECT[BOB]}", json={"status": "accepted"}), 403)
        assert_error(bob.put(f"{members}/{PROJECT[BOB]}", json={"status": "maybe"}), 400, "accepted")
        assert bob.put(f"{members}/{PROJECT[BOB]}", json={"status": "rejected"}).json()["status"] == "rejected"
        # The owner and admins see every member, a member only its own membership.
        assert {m["member_id"] for m in alice.get(members).json()["members"]} == {PROJECT[BOB], "project-c"}
        assert {m["member_id"] for m in admin.get(members).json()["members"]} == {PROJECT[BOB], "project-c"}
        assert [m["member_id"] for m in bob.get(members).json()["members"]] == [PROJECT[BOB]]
        assert_error(bob.get(f"{members}/project-c"), 404)
        # A member may not remove members, change or delete the image.
        assert_error(bob.delete(f"{members}/project-c"), 403)
        assert_error(patch_image(bob, image_id, [{"op": "replace", "path": "/name", "value": "x"}]), 403)
        assert_error(bob.delete(f"/v2/images/{image_id}"), 403)
        # Made private, the image has no visible members any more.
        assert patch_image(alice, image_id, [{"op": "replace", "path": "/visibility", "value": "private"}]
                           ).status_code == 200
        assert_error(bob.get(f"/v2/images/{image_id}"), 404)
        assert_error(alice.get(members), 403, "Only shared images")


def test_openstacksdk_member_calls(service: ServiceProcess) -> None:
    with service.client(ALICE) as alice:
        image_id = new_image(alice, unique("sdk-shared"))["id"]
    owner, member = sdk(service, ALICE), sdk(service, BOB)
    added = owner.image.add_member(image_id, member_id=PROJECT[BOB])
    assert added.status == "pending"
    updated = member.image.update_member(PROJECT[BOB], image_id, status="accepted")
    assert updated.status == "accepted"
    assert [m.member_id for m in owner.image.members(image_id)] == [PROJECT[BOB]]
    assert image_id in {image.id for image in member.image.images()}
    owner.image.remove_member(PROJECT[BOB], image_id)
    assert list(owner.image.members(image_id)) == []


def test_member_schemas(service: ServiceProcess) -> None:
    with service.client(ALICE) as alice:
        member = alice.get("/v2/schemas/member").json()
        assert member["name"] == "member" and member["properties"]["status"]["enum"] == ["pending", "accepted",
                                                                                           "rejected"]
        assert alice.get("/v2/schemas/members").json()["properties"]["members"]["items"] == member
