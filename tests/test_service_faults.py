"""The reference image service under real faults: no 500, no stuck image, no orphaned file.

Each fault is real: JSON bodies nested tens of thousands deep, a data directory on a small
tmpfs filled to the last byte (the staging area, the image records and the store all on it),
a delete sent while an upload is still streaming. The service runs as a subprocess
(tests/service_harness.py) and is driven over raw HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from importhooks.server.runner import INTERRUPTED

from .service_harness import (
    ADMIN,
    ALICE,
    MiB,
    RawUpload,
    ServiceProcess,
    assert_error,
    chunk_parts,
    fill_up,
    new_image,
    stage,
    start_import,
    status_of,
    tmpfs,
    unique,
)

NOT_RECORDED = "could not record it"  # importhooks_image_service.finishing.NOT_RECORDED


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A service with an upload time limit long enough for the slow uploads of these tests."""
    svc = ServiceProcess(tmp_path_factory.mktemp("faults"), max_upload_time="120s")
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[ServiceProcess]:
    """A service whose data directory (records, staging, store) is a 4 MiB tmpfs; its runs' scratch space is not."""
    with tmpfs(tmp_path / "data", "4m") as data_dir:
        svc = ServiceProcess(tmp_path, data_dir=data_dir, work_dir=str(tmp_path / "work"), max_upload_time="60s")
        (tmp_path / "work").mkdir()
        svc.start()
        try:
            yield svc
        finally:
            svc.stop()


@pytest.fixture()
def split_disk(tmp_path: Path) -> Iterator[ServiceProcess]:
    """As :func:`small_disk`, with the staging area and the image store on filesystems of their own (32 MiB
    each): the records alone are on the small one, and removing data frees nothing for them."""
    with tmpfs(tmp_path / "data", "4m") as data_dir, tmpfs(data_dir / "staging", "32m"), \
            tmpfs(data_dir / "images", "32m"):
        svc = ServiceProcess(tmp_path, data_dir=data_dir, work_dir=str(tmp_path / "work"), max_upload_time="60s")
        (tmp_path / "work").mkdir()
        svc.start()
        try:
            yield svc
        finally:
            svc.stop()


def nested(depth: int) -> bytes:
    return b'{"name": ' + b"[" * depth + b"]" * depth + b"}"


# -- deeply nested JSON ------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [33, 1000, 30000])
def test_deeply_nested_bodies_are_400_not_500(service: ServiceProcess, depth: int) -> None:
    body = nested(depth)
    assert len(body) < 64 << 10  # under the size limit: only the depth refuses it
    with service.client(ALICE) as alice:
        headers = {"Content-Type": "application/json"}
        assert_error(alice.post("/v2/images", content=body, headers=headers), 400, "deeper than 32")
        image_id = new_image(alice, unique("nested"))["id"]
        assert_error(alice.post(f"/v2/images/{image_id}/import", content=body, headers=headers), 400, "deeper")
        patch = b"[" * depth + b"]" * depth
        assert_error(alice.patch(f"/v2/images/{image_id}", content=patch, headers={
            "Content-Type": "application/openstack-images-v2.1-json-patch"}), 400, "deeper")
        # Brackets inside strings do not count (escaped quotes do not end a string), and a body within the
        # depth reaches validation.
        assert alice.post("/v2/images", json={"name": "[" * 200, "disk_format": "raw"}).status_code == 201
        assert alice.post("/v2/images", json={"name": '\\"' + "[" * 100, "tags": ['"{' * 50]}).status_code == 201
        assert_error(alice.post("/v2/images", content=nested(31), headers=headers), 400, "Invalid name")
        assert status_of(alice, image_id) == "queued"


# -- a full disk -------------------------------------------------------------------------------------


def test_a_full_staging_disk_is_413_and_nothing_stays_staged(small_disk: ServiceProcess) -> None:
    svc = small_disk
    with svc.client(ALICE) as alice:
        image_id = new_image(alice, unique("full-staging"))["id"]
        upload = RawUpload(svc, "PUT", f"/v2/images/{image_id}/stage", ALICE,
                           {"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"},
                           chunk_parts(8 * MiB))  # twice the filesystem
        status, body = upload.answer()
        upload.close()
        assert status == 413, body
        assert "storage is full" in body["error"]["message"]
        assert status_of(alice, image_id) == "queued"
        assert svc.staged() == []
        # The space is back: the same image stages and imports.
        assert stage(alice, image_id, b"\0" * MiB).status_code == 204
        assert start_import(alice, image_id).status_code == 202
        assert svc.wait_for_image(ALICE, image_id)["status"] == "active"
    assert "Traceback" not in svc.log_tail(100_000)


def test_full_records_are_503_and_the_service_goes_on_once_space_is_back(small_disk: ServiceProcess) -> None:
    svc = small_disk
    with svc.client(ALICE) as alice:
        kept = new_image(alice, unique("before-full"))["id"]
        filler = fill_up(svc.data_dir)
        statuses = []
        for n in range(40):  # each record carries 30 KB: the database must grow, and cannot
            response = alice.post("/v2/images", json={"name": f"full-{n}", "disk_format": "raw",
                                                       "container_format": "bare", "notes": "x" * 30_000})
            statuses.append(response.status_code)
            if response.status_code == 503:
                assert_error(response, 503, "cannot save image records")
                break
        assert statuses[-1] == 503 and set(statuses) <= {201, 503}, statuses
        assert status_of(alice, kept) == "queued"  # reads go on
        assert alice.get("/v2/images").status_code == 200
        filler.unlink()
        created = new_image(alice, unique("after-full"))
        assert status_of(alice, created["id"]) == "queued"
    assert "Traceback" not in svc.log_tail(100_000)


def _import_and_fill_the_disk(svc: ServiceProcess, alice: httpx.Client) -> tuple[str, Path]:
    """Import a 1 MiB image slowed by 3 s, fill the data directory while it runs; the image and the filler."""
    name = unique("slow-3-full-at-finish")
    image_id = new_image(alice, name)["id"]
    assert stage(alice, image_id, b"\0" * MiB).status_code == 204
    assert start_import(alice, image_id).status_code == 202
    svc.wait_for_event(lambda e: e["event"] == "image.import.started" and e["name"] == name)
    filler = fill_up(svc.data_dir)
    svc.wait_for_event(lambda e: e["event"] == "image.import.finished" and e["name"] == name)
    time.sleep(1.0)  # the runner's store and finish callbacks run right after
    return image_id, filler


def test_a_full_disk_when_an_import_finishes_ends_the_image_killed_at_once(small_disk: ServiceProcess) -> None:
    svc = small_disk
    with svc.client(ALICE) as alice:
        image_id, filler = _import_and_fill_the_disk(svc, alice)
        # The accepted data was moved into the store, but its record could not say so: the data is
        # removed, which frees enough room to record the image killed, with the disk still full.
        image = svc.wait_for_image(ALICE, image_id, timeout=5)
        assert image["status"] == "killed" and NOT_RECORDED in image["message"]
        assert not (svc.store_dir / image_id).exists() and svc.staged() == []
        filler.unlink()
        # The service goes on: the next import is accepted and stored.
        again = new_image(alice, unique("after-full-finish"))["id"]
        assert stage(alice, again, b"\0" * MiB).status_code == 204
        assert start_import(alice, again).status_code == 202
        assert svc.wait_for_image(ALICE, again)["status"] == "active"
        assert (svc.store_dir / again).stat().st_size == MiB


def test_records_full_at_the_finish_kill_the_image_as_soon_as_space_is_back(split_disk: ServiceProcess) -> None:
    svc = split_disk
    with svc.client(ALICE) as alice:
        image_id, filler = _import_and_fill_the_disk(svc, alice)
        assert not (svc.store_dir / image_id).exists()  # stored (a copy, across filesystems), then removed
        time.sleep(2.0)
        assert status_of(alice, image_id) == "importing"  # the records still cannot be written
        filler.unlink()
        started = time.monotonic()
        image = svc.wait_for_image(ALICE, image_id, timeout=10)
        assert time.monotonic() - started < 5
        assert image["status"] == "killed" and NOT_RECORDED in image["message"]
        assert list(svc.store_dir.iterdir()) == [] and svc.staged() == []


def test_a_restart_after_an_unrecorded_finish_leaves_no_orphan_and_nothing_importing(
        split_disk: ServiceProcess) -> None:
    svc = split_disk
    with svc.client(ALICE) as alice:
        image_id, filler = _import_and_fill_the_disk(svc, alice)
        assert status_of(alice, image_id) == "importing"
    svc.kill()
    filler.unlink()
    svc.start()
    image = svc.wait_for_image(ALICE, image_id, timeout=10)
    assert image["status"] == "killed" and image["message"] == INTERRUPTED
    assert list(svc.store_dir.iterdir()) == [] and svc.staged() == []


# -- a delete during an upload -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["stage", "file"])
def test_deleting_an_image_cuts_its_upload_off(service: ServiceProcess, path: str) -> None:
    token = ALICE if path == "stage" else ADMIN
    with service.client(token) as client:
        image_id = new_image(client, unique(f"deleted-while-{path}"))["id"]
        # 64 KiB every 0.1 s: 60 s for the whole body, unless the delete cuts it off.
        upload = RawUpload(service, "PUT", f"/v2/images/{image_id}/{path}", token,
                           {"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"},
                           chunk_parts(40 * MiB, pause=0.1))
        try:
            deadline = time.monotonic() + 20
            while upload.sent < MiB and time.monotonic() < deadline:
                time.sleep(0.05)
            assert upload.sent >= MiB
            assert client.delete(f"/v2/images/{image_id}").status_code == 204
            cut = time.monotonic()
            status, body = upload.answer()
            assert time.monotonic() - cut < 5
            assert status in (404, None), body  # the answer, or the connection closed under the sender
            if status == 404:
                assert "deleted during its upload" in body["error"]["message"]
            time.sleep(0.3)
            sent = upload.sent
            time.sleep(1.0)
            assert upload.sent == sent or upload.send_error is not None  # nobody reads it any more
        finally:
            upload.close()
        assert_error(client.get(f"/v2/images/{image_id}"), 404)
        assert service.staged(image_id) == []
        assert not (service.store_dir / image_id).exists()
        assert not list((service.data_dir / "uploads").glob(f"*{image_id}*"))


def test_deleting_an_image_while_its_trusted_upload_is_checked_stores_nothing(service: ServiceProcess) -> None:
    name = unique("slow-3-checked-then-deleted")  # the test plugin slows the checks by 3 s
    with service.client(ADMIN) as admin:
        image_id = new_image(admin, name)["id"]
        upload = RawUpload(service, "PUT", f"/v2/images/{image_id}/file", ADMIN,
                           {"Content-Type": "application/octet-stream", "Content-Length": str(MiB)},
                           [(b"\0" * MiB, 0.0)])
        try:
            service.wait_for_event(lambda e: e["event"] == "image.import.started" and e["name"] == name)
            assert admin.delete(f"/v2/images/{image_id}").status_code == 204
            cut = time.monotonic()
            status, body = upload.answer()
            assert time.monotonic() - cut < 2  # not after the 3 s of checks
            assert status in (404, None), body
        finally:
            upload.close()
        # The checks finish in their thread and find the image gone: nothing is stored.
        service.wait_for_event(lambda e: e["event"] == "image.import.finished" and e["name"] == name)
        time.sleep(1.0)
        assert not (service.store_dir / image_id).exists()
        assert list((service.data_dir / "uploads").iterdir()) == []
        assert_error(admin.get(f"/v2/images/{image_id}"), 404)
    assert "Traceback" not in service.log_tail(100_000)
