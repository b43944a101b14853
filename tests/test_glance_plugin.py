"""importhooks inside a real OpenStack Glance 33 (issue 13), driven by the real glance CLI.

One glance-api (uWSGI, SQLite, filesystem stores, ``image_import_plugins = [importhooks]``)
serves the whole module; a loopback web server serves the web-download samples. Every
expected task message comes from running the same pipeline on the same file here: what
Glance's users read is importhooks' own user-safe message.
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from importhooks import Claims, ImportRequest, ImportResult, Pipeline, load_settings

from . import compression_images as ci
from . import guest_images, images, ova_images, vmdk_images
from .glance_harness import GLANCE_BIN, STORE, GlanceServer, WebServer

MIB = 1 << 20
OS_TYPE = {"os_type": "linux"}


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("glance-samples")


@pytest.fixture(scope="module")
def web(samples: Path) -> Iterator[WebServer]:
    server = WebServer(samples).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def settings_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("importhooks-conf")
    path = root / "importhooks.toml"
    # A small ratio grace, so that a small bomb is one; a site plugin that echoes requester and claims.
    path.write_text(f'halt_file = "{root / "HALT"}"\n\n[plugins]\nenabled = ["tests.glance_echo_plugin"]\n\n'
                    '[plugin.compression]\nratio_grace = "2MiB"\n')
    return path


@pytest.fixture(scope="module")
def glance(tmp_path_factory: pytest.TempPathFactory, settings_file: Path, web: WebServer) -> Iterator[GlanceServer]:
    server = GlanceServer(tmp_path_factory.mktemp("glance"), importhooks_config=settings_file,
                          web_port=web.port).start()
    yield server
    server.stop()


def expected(settings_file: Path, path: Path, disk_format: str, container_format: str,
             os_type: str | None = None) -> ImportResult:
    """What importhooks, run here with Glance's settings file, says about ``path``."""
    pipeline = Pipeline.from_settings(load_settings(settings_file))
    claims = Claims(disk_format=disk_format, container_format=container_format, os_type=os_type)
    return pipeline.run(ImportRequest(path, claims))


# --- samples -----------------------------------------------------------------------------------

def benign_qcow2(d: Path) -> Path:
    return images.qcow2_image(d / "benign.qcow2")


def benign_raw(d: Path) -> Path:
    return images.raw_image(d / "benign.raw")


def benign_gzip_qcow2(d: Path) -> Path:
    return ci.compress_file("gzip", benign_qcow2(d), d / "benign.qcow2.gz")


def ova_with(d: Path, disk: bytes, fmt: str, name: str) -> Path:
    return ova_images.package(disk, fmt).write(d / name)


def benign_ova_qcow2(d: Path) -> Path:
    return ova_with(d, ova_images.qcow2_disk(d / "inner.qcow2"), "qcow2", "benign-qcow2.ova")


def backing_qcow2(d: Path) -> Path:
    return images.qcow2_with_backing_file(d / "backing.qcow2")


def ntfs_disk(d: Path) -> Path:
    return guest_images.filesystem_file(d / "ntfs.raw", "ntfs")


def bomb(d: Path) -> Path:
    return ci.write(d / "bomb.gz", ci.gzip_zeros(32 * MIB, fill=1))


#: name -> (hostile sample, disk_format, container_format, os_type, benign sample for the same claims)
HOSTILE: dict[str, tuple[Callable[[Path], Path], str, str, str | None, Callable[[Path], Path]]] = {
    "qcow2 with a backing file": (backing_qcow2, "qcow2", "bare", None, benign_qcow2),
    "qcow2 with a backing file claimed raw": (backing_qcow2, "raw", "bare", None, benign_raw),
    "the same in gzip claimed compressed": (
        lambda d: ci.compress_file("gzip", backing_qcow2(d), d / "backing.qcow2.gz"), "qcow2", "compressed", None,
        benign_gzip_qcow2),
    "OVA whose disk has a backing file": (
        lambda d: ova_with(d, backing_qcow2(d).read_bytes(), "qcow2", "backing.ova"), "qcow2", "ova", None,
        benign_ova_qcow2),
    "qcow2 labelled ova": (backing_qcow2, "qcow2", "ova", None, benign_ova_qcow2),
    "NTFS disk claimed linux": (ntfs_disk, "raw", "bare", "linux", benign_raw),
    "decompression bomb": (bomb, "raw", "compressed", None,
                           lambda d: ci.write(d / "benign.raw.gz", gzip.compress(bytes(MIB)))),
}


# --- tests -------------------------------------------------------------------------------------

def test_importing_importhooks_does_not_import_glance():
    # In the Glance environment, where Glance is installed: the core and the built-ins import none of it.
    code = ("import sys, importhooks, importhooks_plugins, importhooks.server.runner, importhooks.cli.main\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('glance', 'taskflow', 'oslo_config')"
            " or m.startswith('importhooks.integrations'))\n"
            "print(loaded)\n")
    done = subprocess.run([str(GLANCE_BIN / "python"), "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    done = subprocess.run([str(GLANCE_BIN / "python"), "-c", "import glance; print(glance.__file__)"],
                          capture_output=True, text=True, check=True)
    assert "site-packages/glance" in done.stdout


@pytest.mark.parametrize("kind", ["qcow2", "vmdk", "ova"])
def test_benign_images_become_active_with_importhooks_properties(glance, settings_file, tmp_path, kind):
    if kind == "qcow2":
        path, disk_format, container_format = benign_qcow2(tmp_path), "qcow2", "bare"
    elif kind == "vmdk":
        path, disk_format, container_format = vmdk_images.created(tmp_path / "d.vmdk", "monolithicSparse"), "vmdk", \
            "bare"
    else:
        disk = ova_images.stream_vmdk(tmp_path / "disk.vmdk")
        path, disk_format, container_format = ova_with(tmp_path, disk, "vmdk", "vm.ova"), "vmdk", "ova"
    local = expected(settings_file, path, disk_format, container_format, "linux")
    assert local.accepted, local.findings
    stored_before = set(glance.stored_files())

    image_id = glance.create_via_import(f"benign-{kind}", disk_format, container_format, path=path,
                                        properties={**OS_TYPE, "custom": "some value"})
    image = glance.wait(image_id)

    assert image["status"] == "active", (image, glance.last_task(image_id))
    assert glance.last_task(image_id)["status"] == "success"
    assert image["os_type"] == "linux"
    for name, value in local.properties.items():
        if not name.startswith("importhooks_test_"):
            assert image[name] == str(value), name
    # What the pipeline was given: the request context's requester, the image's name and properties.
    assert image["importhooks_test_requester"] == "test-user/test-project/admin,member,reader"
    assert image["importhooks_test_claims"] == f"benign-{kind}/some value"
    assert any(name.startswith("importhooks_") for name in image)
    assert image["disk_format"] == disk_format and image["container_format"] == "bare"
    assert image["stores"] == STORE
    new = set(glance.stored_files()) - stored_before
    assert new == {image_id}
    stored = (glance.store / image_id).read_bytes()
    if kind == "ova":  # the OVA is stored as its disk
        assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(disk).hexdigest()
        assert image["size"] == len(disk)
    else:
        assert stored == path.read_bytes()
    assert image_id not in glance.staged_files()
    assert not [name for name in glance.staged_files() if image_id in name]


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_images_never_become_active(glance, settings_file, tmp_path, case):
    make, disk_format, container_format, os_type, make_benign = HOSTILE[case]
    path = make(tmp_path)
    local = expected(settings_file, path, disk_format, container_format, os_type)
    assert not local.accepted and local.user_message
    stored_before = glance.stored_files()
    properties = {"os_type": os_type} if os_type else {}

    image_id = glance.create_via_import(case, disk_format, container_format, path=path, properties=properties)
    image = glance.wait(image_id)

    task = glance.last_task(image_id)
    assert task["status"] == "failure"
    assert task["message"] == local.user_message
    assert image["status"] == "queued"  # as Glance's own reverts leave it: the user can stage again
    assert image["os_glance_failed_import"] == STORE
    assert not image.get("os_glance_importing_to_stores")
    assert not any(name.startswith("importhooks_") for name in image)
    assert [name for name in glance.staged_files() if image_id in name] == []
    assert glance.stored_files() == stored_before
    log = glance.log_text()
    for finding in local.findings:
        if finding.severity.value == "error":
            assert f"image {image_id}: error {finding.code}" in log

    # The same image takes benign data afterwards.
    benign = make_benign(tmp_path)
    assert expected(settings_file, benign, disk_format, container_format, os_type).accepted
    glance.stage_and_import(image_id, benign)
    image = glance.wait(image_id, count=2)
    assert image["status"] == "active", glance.last_task(image_id)
    assert glance.stored_files() == sorted([*stored_before, image_id])
    assert image["container_format"] == "bare"


def test_the_halt_file_stops_imports_until_it_is_removed(glance, settings_file, tmp_path):
    halt = settings_file.parent / "HALT"
    path = benign_qcow2(tmp_path)
    halt.touch()
    try:
        image_id = glance.create_via_import("halted", "qcow2", "bare", path=path)
        image = glance.wait(image_id)
    finally:
        halt.unlink()
    task = glance.last_task(image_id)
    assert image["status"] == "queued"
    assert task["message"] == "Image import is halted by the operator; try again later."
    assert [name for name in glance.staged_files() if image_id in name] == []

    glance.stage_and_import(image_id, path)
    assert glance.wait(image_id, count=2)["status"] == "active"


def test_web_download_goes_through_the_same_checks(glance, settings_file, samples, web):
    good = benign_qcow2(samples)
    bad = backing_qcow2(samples)
    stored_before = glance.stored_files()

    good_id = glance.create_via_import("web-good", "qcow2", "bare", uri=web.url(good.name), properties=OS_TYPE)
    bad_id = glance.create_via_import("web-bad", "qcow2", "bare", uri=web.url(bad.name))
    image, hostile = glance.wait(good_id), glance.wait(bad_id)

    assert image["status"] == "active", glance.last_task(good_id)
    assert image["importhooks_partition_table"] == "none" and image["os_type"] == "linux"
    task = glance.last_task(bad_id)
    assert task["status"] == "failure"
    assert task["message"] == expected(settings_file, bad, "qcow2", "bare").user_message
    assert hostile["status"] == "queued"  # Glance's download revert did it, once
    assert hostile["os_glance_failed_import"] == STORE
    assert [name for name in glance.staged_files() if name.startswith((good_id, bad_id))] == []
    assert glance.stored_files() == sorted([*stored_before, good_id])


def test_a_store_failure_after_acceptance_takes_the_verified_properties_back(glance, settings_file, tmp_path):
    """importhooks accepted, then Glance's store refused the data (a file of that name is already there): the
    import fails, the image carries no importhooks property that would claim it was verified, and once the
    store works again the same image imports (it was not refused as user-set protected properties)."""
    path = benign_qcow2(tmp_path)
    out = glance.glance("image-create", "--name", "store-fails", "--disk-format", "qcow2",
                        "--container-format", "bare").stdout
    image_id = next(line.split("|")[2].strip() for line in out.splitlines() if line.startswith("| id "))
    blocker = glance.store / image_id
    blocker.write_bytes(b"in the way")  # glance_store's filesystem driver refuses to overwrite it
    try:
        glance.stage_and_import(image_id, path)
        image = glance.wait(image_id)
        assert glance.last_task(image_id)["status"] == "failure"
        assert image["status"] == "queued"
        assert not [name for name in image if name.startswith("importhooks_")], image
        assert [name for name in glance.staged_files() if image_id in name] == []
    finally:
        blocker.unlink()

    glance.stage_and_import(image_id, path)
    image = glance.wait(image_id, count=2)
    assert image["status"] == "active", glance.last_task(image_id)
    assert image["importhooks_partition_table"] == "none"
