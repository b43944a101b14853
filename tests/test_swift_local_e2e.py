"""swift-local end to end: the reference service reads the caller's object from a real Swift with their own token.

The Swift is the session's (tests/swift_harness.py: tempauth projects ``alpha`` and ``beta``).
As Keystone gives a real cloud one token for both services, the service's tokens table maps
each user's Swift tempauth token to their principal: alice of project ``alpha``, bob of
project ``beta``. The service's ``[swift_local] storage_url`` is the operator's template
``http://127.0.0.1:PORT/v1/AUTH_{project_id}``.

glanceclient sends no method fields but ``uri`` and the glance-download ones, and openstacksdk's
``import_image`` neither, so the import calls go through openstacksdk's session (the same
keystoneauth session the SDK uses) or plain HTTP; the real ``glance`` CLI lists the method.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from importhooks_image_service.config import config_from_mapping

from importhooks.errors import BadRequest, ConfigError, ImportHalted
from importhooks.request import Requester
from importhooks.server import methods
from importhooks.server.methods import swift_local
from importhooks.server.staging import StagingArea
from importhooks.server.status import Call, ImageStatus, allowed
from importhooks.server.validation import parse_import_request
from importhooks.settings import Settings, settings_from_mapping

from . import images
from .service_harness import TOKENS, ServiceProcess, glance, sdk, toml_text
from .swift_harness import ALPHA, BETA, SwiftCluster

METHODS = ["glance-direct", "swift-local"]
TEMPLATE = "http://127.0.0.1:{port}/v1/AUTH_{{project_id}}"
pytestmark = pytest.mark.filterwarnings("ignore::Warning:openstack")


class SwiftService(ServiceProcess):
    """The reference service whose tokens table also holds the users' Swift tokens."""

    def __init__(self, base: Path, swift_tokens: Mapping[str, tuple[str, str, list[str]]], **kwargs: Any) -> None:
        self.swift_tokens = dict(swift_tokens)
        super().__init__(base, **kwargs)

    def _write_config(self) -> None:
        tokens = {token: {"user": user, "project": project, "roles": roles}
                  for token, (user, project, roles) in {**TOKENS, **self.swift_tokens}.items()}
        config = {"host": "127.0.0.1", "port": self.port, "data_dir": str(self.data_dir), "log_level": "info",
                  **self.service_config, "tokens": tokens, "importhooks": self.settings}
        self.config_file.write_text(toml_text(config))


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    base = tmp_path_factory.mktemp("swift_disks")
    return {"benign": images.qcow2_image(base / "benign.qcow2").read_bytes(),
            "hostile": images.qcow2_with_backing_file(base / "hostile.qcow2").read_bytes()}


@pytest.fixture(scope="module")
def tokens(swift_cluster: SwiftCluster, disks: dict[str, bytes]) -> dict[str, str]:
    """Log in to Swift as alice (alpha) and bob (beta), store their objects; each user's token."""
    swift_cluster.put(ALPHA, "images", "benign.qcow2", disks["benign"])
    swift_cluster.put(ALPHA, "images", "hostile.qcow2", disks["hostile"])
    swift_cluster.put(BETA, "private", "benign.qcow2", disks["benign"])
    return {"alice": swift_cluster.login(ALPHA)[1], "bob": swift_cluster.login(BETA)[1]}


def start_service(base: Path, tokens: dict[str, str], storage_url: str) -> SwiftService:
    svc = SwiftService(base, {tokens["alice"]: ("alice", ALPHA.name, ["member"]),
                              tokens["bob"]: ("bob", BETA.name, ["member"])},
                       service_config={"enabled_import_methods": METHODS, "swift_local": {"storage_url": storage_url}})
    svc.start()
    return svc


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, swift_cluster: SwiftCluster,
            tokens: dict[str, str]) -> Iterator[SwiftService]:
    svc = start_service(tmp_path_factory.mktemp("swift_service"), tokens,
                        TEMPLATE.format(port=swift_cluster.ports["proxy"]))
    yield svc
    svc.stop()


def new_queued(client: httpx.Client, name: str) -> str:
    response = client.post("/v2/images", json={"name": name, "disk_format": "qcow2", "container_format": "bare",
                                                "os_type": "linux"})
    assert response.status_code == 201, response.text
    assert response.headers["OpenStack-image-import-methods"] == ",".join(METHODS)
    return str(response.json()["id"])


def swift_import(client: httpx.Client, image_id: str, container: str, obj: str) -> httpx.Response:
    return client.post(f"/v2/images/{image_id}/import",
                       json={"method": {"name": "swift-local", "container": container, "object": obj}})


def settle(service: ServiceProcess, token: str, image_id: str) -> dict[str, Any]:
    """The image once it is no longer ``importing`` (a failed read reverts it to ``queued``)."""
    deadline = time.monotonic() + 60
    with service.client(token) as client:
        while True:
            image: dict[str, Any] = client.get(f"/v2/images/{image_id}").json()
            if image["status"] != "importing" or time.monotonic() > deadline:
                return image
            time.sleep(0.1)


def assert_private(service: ServiceProcess, tokens: dict[str, str], message: str) -> None:
    """Neither a user's message, the service's log nor its database holds a token; the message no host or account."""
    log = service.log_tail(1 << 20)
    stored = b"".join(path.read_bytes() for path in service.data_dir.glob("images.sqlite3*"))
    assert stored  # the database is there to look into
    for token in tokens.values():
        assert token not in message and token not in log and token.encode() not in stored
    for text in ("127.0.0.1", "AUTH_", "None"):
        assert text not in message, (text, message)


# -- settings, the registry, validation -----------------------------------------------------------


def test_swift_local_is_registered_with_the_kit_schema_and_imports_from_queued() -> None:
    method = methods.get("swift-local")
    assert method is not None and method.bring is not None and method.required == ("container", "object")
    assert set(method.parameters) == {"container", "object"}
    assert allowed(Call.IMPORT, ImageStatus.QUEUED, "swift-local")
    assert not allowed(Call.IMPORT, ImageStatus.UPLOADING, "swift-local")
    settings = settings_from_mapping({"enabled_import_methods": METHODS,
                                      "swift_local": {"storage_url": "https://swift.example/v1/AUTH_{project_id}"}})
    assert methods.enabled_names(settings) == tuple(METHODS)


def test_the_storage_url_is_a_checked_operator_template() -> None:
    table = settings_from_mapping({"swift_local": {"storage_url": "https://s.example:8080/v1/AUTH_{project_id}"}})
    assert swift_local.storage_url_for(table.swift_local, "4f0b") == "https://s.example:8080/v1/AUTH_4f0b"
    assert swift_local.storage_url_for(table.swift_local, "a/../b") == "https://s.example:8080/v1/AUTH_a%2F..%2Fb"
    assert swift_local.storage_url_for(table.swift_local, None) == ""
    assert swift_local.storage_url_for(Settings().swift_local, "4f0b") == ""
    for bad in ("ftp://s.example/v1/AUTH_{project_id}", "https://u:p@s.example/v1/AUTH_{project_id}",
                "https://s.example/v1/AUTH_{project}", "https://s.example/v1/AUTH_{project_id!r}",
                "https://s.example/v1/AUTH_{project_id", "https://s.example/v1/x?{project_id}", "/v1/AUTH_x", 7):
        with pytest.raises(ConfigError) as error:
            settings_from_mapping({"swift_local": {"storage_url": bad}})
        assert error.value.key == "swift_local.storage_url", bad
    with pytest.raises(ConfigError) as needed:  # offered without a place to read from: refused at start
        settings_from_mapping({"enabled_import_methods": METHODS})
    assert needed.value.key == "swift_local.storage_url"
    config = config_from_mapping({"enabled_import_methods": METHODS,
                                  "swift_local": {"storage_url": "http://swift:8080/v1/AUTH_{project_id}"}}, Path("."))
    assert config.importhooks.swift_local.storage_url == "http://swift:8080/v1/AUTH_{project_id}"
    with pytest.raises(ConfigError, match="storage_url"):  # the reference service does not start either
        config_from_mapping({"enabled_import_methods": METHODS}, Path("."))


def test_bad_names_are_refused_at_request_time_without_a_request() -> None:
    settings = Settings(enabled_import_methods=tuple(METHODS))
    for container, obj, field in (("a/b", "x", "method.container"), ("é" * 200, "x", "method.container"),
                                  ("images", "x\x00y", "method.object"), ("images", "", "method.object")):
        body = json.dumps({"method": {"name": "swift-local", "container": container, "object": obj}}).encode()
        with pytest.raises(BadRequest) as refused:
            parse_import_request(body, "application/json", settings)
        assert refused.value.status == 400 and refused.value.field == field, (container, obj)
    body = json.dumps({"method": {"name": "swift-local", "container": "images"}}).encode()
    with pytest.raises(BadRequest, match="method"):
        parse_import_request(body, "application/json", settings)
    body = json.dumps({"method": {"name": "swift-local", "container": "c", "object": "o",
                                  "storage_url": "http://169.254.169.254/"}}).encode()
    with pytest.raises(BadRequest):  # the storage URL is never the request's
        parse_import_request(body, "application/json", settings)


def test_bring_reads_with_the_users_token_and_stops_when_halted(swift_cluster: SwiftCluster, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytes(range(256)) * (16 << 12)  # 16 MiB
    swift_cluster.put(ALPHA, "halting", "big.raw", data)
    token = swift_cluster.login(ALPHA)[1]
    settings = settings_from_mapping({
        "enabled_import_methods": METHODS, "max_upload_bytes": "64MiB",
        "swift_local": {"storage_url": TEMPLATE.format(port=swift_cluster.ports["proxy"])}})
    staging = StagingArea(tmp_path / "staging", settings)
    alpha = Requester("alice", ALPHA.name)
    request = methods.MethodRequest(str(uuid.uuid4()), {"container": "halting", "object": "big.raw"}, staging,
                                    settings, alpha, {"token": token}, halted=lambda: False)
    assert swift_local.bring(request) == len(data) and staging.has(request.image_id)
    asked: list[int] = []

    def halted() -> bool:  # not halted when the read starts, halted at the first look while it runs
        asked.append(1)
        return len(asked) > 1

    monkeypatch.setattr(swift_local, "HALT_POLL", 0.001)
    stopped = methods.MethodRequest(str(uuid.uuid4()), request.parameters, staging, settings, alpha,
                                    {"token": token}, halted=halted)
    with pytest.raises(ImportHalted):
        swift_local.bring(stopped)
    assert len(asked) == 2 and not staging.has(stopped.image_id)
    assert staging.has(request.image_id)  # the other image's data is untouched


# -- end to end through the reference service -----------------------------------------------------


def test_discovery_lists_swift_local_with_its_schema(service: SwiftService, tokens: dict[str, str],
                                                     tmp_path: Path) -> None:
    with service.client(tokens["alice"]) as client:
        info = client.get("/v2/info/import").json()
        schema = client.get("/v2/schemas/import").json()
    assert info["import-methods"]["value"] == METHODS
    method = schema["properties"]["method"]
    assert method["properties"]["name"]["enum"] == METHODS
    assert {"container", "object"} <= set(method["properties"])
    home = tmp_path / "home"
    home.mkdir()
    listed = glance(service, tokens["alice"], home, "import-info")
    assert listed.returncode == 0 and '"swift-local"' in re.sub(r"[\s|]", "", listed.stdout), listed.stdout


def test_sdk_benign_object_becomes_active(service: SwiftService, tokens: dict[str, str],
                                          disks: dict[str, bytes]) -> None:
    with service.client(tokens["alice"]) as client:
        image_id = new_queued(client, "swift-benign")
    conn = sdk(service, tokens["alice"])
    image = conn.image.get_image(image_id)
    answer = conn.image.post(f"/images/{image.id}/import",
                             json={"method": {"name": "swift-local", "container": "images",
                                              "object": "benign.qcow2"}})
    assert answer.status_code == 202, answer.text
    done = conn.image.wait_for_status(conn.image.get_image(image.id), status="active", failures=["killed"],
                                      interval=1, wait=120)
    assert done.status == "active" and done.size == len(disks["benign"]) and done.disk_format == "qcow2"
    assert service.staged(image.id) == []
    with service.client(tokens["alice"]) as client:
        assert client.get(f"/v2/images/{image.id}/file").content == disks["benign"]
    assert_private(service, tokens, "")


def test_hostile_object_ends_killed_with_the_pipelines_message(service: SwiftService, tokens: dict[str, str]) -> None:
    with service.client(tokens["alice"]) as client:
        image_id = new_queued(client, "swift-hostile")
        assert swift_import(client, image_id, "images", "hostile.qcow2").status_code == 202
    image = service.wait_for_image(tokens["alice"], image_id)
    assert image["status"] == "killed" and "backing file" in image["message"], image
    assert "passwd" not in image["message"]
    assert service.staged(image_id) == [] and not (service.store_dir / image_id).exists()


def test_another_projects_container_is_not_found_in_the_callers_own_account(
        service: SwiftService, tokens: dict[str, str]) -> None:
    """alice names bob's container: her storage URL is her own project's, so nothing of beta is reachable."""
    with service.client(tokens["alice"]) as client:
        image_id = new_queued(client, "swift-cross")
        assert swift_import(client, image_id, "private", "benign.qcow2").status_code == 202
    image = settle(service, tokens["alice"], image_id)
    assert image["status"] == "queued" and "no such container or object" in image["message"], image
    assert "private" not in image["message"] and service.staged(image_id) == []
    assert_private(service, tokens, image["message"])


def test_a_missing_object_reverts_to_queued_and_may_be_imported_again(service: SwiftService,
                                                                      tokens: dict[str, str]) -> None:
    with service.client(tokens["alice"]) as client:
        image_id = new_queued(client, "swift-missing")
        assert swift_import(client, image_id, "images", "nothing-here.qcow2").status_code == 202
        image = settle(service, tokens["alice"], image_id)
        assert image["status"] == "queued" and "no such container or object" in image["message"], image
        assert "nothing-here" not in image["message"] and service.staged(image_id) == []
        assert swift_import(client, image_id, "images", "benign.qcow2").status_code == 202
    assert service.wait_for_image(tokens["alice"], image_id)["status"] == "active"


def test_a_bad_name_is_a_400_and_the_image_stays_queued(service: SwiftService, tokens: dict[str, str]) -> None:
    with service.client(tokens["alice"]) as client:
        image_id = new_queued(client, "swift-bad-name")
        refused = swift_import(client, image_id, "images", "a\x00b")
        assert refused.status_code == 400 and "NUL" in refused.json()["error"]["message"], refused.text
        assert client.get(f"/v2/images/{image_id}").json()["status"] == "queued"


def test_a_token_that_swift_does_not_accept_is_not_allowed(service: SwiftService, tokens: dict[str, str],
                                                           swift_cluster: SwiftCluster) -> None:
    """The service still knows the token; Swift no longer does (expired): the import is not allowed."""
    with service.client(tokens["bob"]) as client:
        image_id = new_queued(client, "swift-expired")
        swift_cluster.revoke(tokens["bob"])
        assert swift_import(client, image_id, "private", "benign.qcow2").status_code == 202
    image = settle(service, tokens["bob"], image_id)
    assert image["status"] == "queued" and "did not accept your credentials" in image["message"], image
    assert service.staged(image_id) == []
    assert_private(service, tokens, image["message"])


def test_a_shared_account_refuses_another_projects_token(tmp_path: Path, swift_cluster: SwiftCluster,
                                                         tokens: dict[str, str]) -> None:
    """An operator's fixed storage URL (alpha's account): Swift itself refuses bob's token there (403)."""
    bob = swift_cluster.login(BETA)[1]
    svc = start_service(tmp_path, {"alice": tokens["alice"], "bob": bob}, swift_cluster.storage_url(ALPHA))
    try:
        with svc.client(bob) as client:
            image_id = new_queued(client, "swift-forbidden")
            assert swift_import(client, image_id, "images", "benign.qcow2").status_code == 202
        image = settle(svc, bob, image_id)
        assert image["status"] == "queued" and "do not allow reading this object" in image["message"], image
        assert svc.staged(image_id) == [] and not (svc.store_dir / image_id).exists()
        assert_private(svc, {"alice": tokens["alice"], "bob": bob}, image["message"])
    finally:
        svc.stop()


def test_the_glance_cli_cannot_name_an_object_and_is_told_what_is_missing(service: SwiftService,
                                                                        tokens: dict[str, str],
                                                                        tmp_path: Path) -> None:
    """glanceclient sends no container or object: the import call says so (400), the image stays queued."""
    home = tmp_path / "home"
    home.mkdir()
    with service.client(tokens["alice"]) as client:
        image_id = new_queued(client, "swift-cli")
    done = glance(service, tokens["alice"], home, "image-import", image_id, "--import-method", "swift-local")
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "method.container" in output, output
    with service.client(tokens["alice"]) as client:
        assert client.get(f"/v2/images/{image_id}").json()["status"] == "queued"
