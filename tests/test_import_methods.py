"""Import methods: the kit's registry, discovery and validation generated from the enabled methods, and
web-download end to end through the reference service with the real ``glance`` CLI and openstacksdk.

The service (a subprocess, tests/service_harness.py) offers glance-direct and web-download and may
fetch from one real HTTP server on 127.0.0.1 (tests/web_servers.py), allow-listed with
``allowed_networks`` and that server's port; every other internal address stays refused.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openstack
import pytest
from importhooks_image_service.config import config_from_mapping
from jsonschema import Draft202012Validator

from importhooks.errors import BadRequest, ConfigError
from importhooks.server import methods
from importhooks.server.discovery import create_headers, import_info, import_schema
from importhooks.server.validation import parse_import_request
from importhooks.settings import Settings, WebDownloadSettings, settings_from_mapping

from . import images
from .service_harness import ALICE, ServiceProcess
from .test_image_service import glance, sdk
from .web_servers import WebServer, web_server

BOTH = ("glance-direct", "web-download")
pytestmark = pytest.mark.filterwarnings("ignore::Warning:openstack")


# -- the registry, discovery and validation ------------------------------------------------------


def test_the_registry_offers_glance_direct_by_default_and_refuses_unknown_methods() -> None:
    assert methods.enabled_names(Settings()) == ("glance-direct",)
    both = Settings(enabled_import_methods=BOTH)
    assert [m.name for m in methods.enabled(both)] == list(BOTH)
    web = methods.get("web-download")
    assert web is not None and web.bring is not None and web.required == ("uri",)
    with pytest.raises(ConfigError, match="enabled_import_methods"):
        methods.enabled_names(Settings(enabled_import_methods=("glance-direct", "carrier-pigeon")))
    with pytest.raises(ConfigError, match="glance-download"):  # described for the schema, not offered
        methods.enabled_names(Settings(enabled_import_methods=("glance-download",)))


def test_a_third_method_joins_by_registering(tmp_path: Path) -> None:
    def bring(request: methods.MethodRequest) -> int:
        return request.staging.receive_sync(request.image_id, [b"abc"])

    extra = methods.register(methods.ImportMethod(
        "test-echo", {"text": {"type": "string"}}, ("text",), bring=bring))
    try:
        settings = Settings(enabled_import_methods=("glance-direct", "test-echo"))
        assert import_info(settings)["import-methods"]["value"] == ["glance-direct", "test-echo"]
        schema = Draft202012Validator(import_schema(settings))
        assert schema.is_valid({"method": {"name": "test-echo", "text": "x"}})
        assert not schema.is_valid({"method": {"name": "test-echo"}})
        from importhooks.server.staging import StagingArea
        from importhooks.server.status import ImageStatus
        staging = StagingArea(tmp_path, settings)
        image_id = str(uuid.uuid4())
        assert extra.bring is not None
        assert extra.bring(methods.MethodRequest(image_id, {"text": "x"}, staging, settings)) == 3
        assert staging.has(image_id)
        assert extra.may_import_from(ImageStatus.QUEUED) and not extra.may_import_from(ImageStatus.UPLOADING)
    finally:
        methods._REGISTRY.pop("test-echo")


def test_discovery_follows_the_enabled_methods_and_the_halt_switch() -> None:
    settings = Settings(enabled_import_methods=BOTH)
    assert import_info(settings)["import-methods"]["value"] == list(BOTH)
    assert import_info(settings, halted=True)["import-methods"]["value"] == []
    headers = create_headers("http://x/v2/images/1", halted=False, settings=settings)
    assert headers["OpenStack-image-import-methods"] == "glance-direct,web-download"
    assert create_headers("http://x/v2/images/1", halted=True, settings=settings) == {}
    method = import_schema(settings)["properties"]["method"]
    assert method["properties"]["name"]["enum"] == list(BOTH) and "uri" in method["properties"]
    assert "uri" not in import_schema(Settings())["properties"]["method"]["properties"]


def test_validation_refuses_disabled_methods_and_bad_urls_without_echoing_addresses() -> None:
    settings = Settings(enabled_import_methods=BOTH)
    body = json.dumps({"method": {"name": "web-download", "uri": "http://8.8.8.8/disk.img"}}).encode()
    assert parse_import_request(body, "application/json", settings).parameters["uri"] == "http://8.8.8.8/disk.img"
    with pytest.raises(BadRequest, match="method"):  # web-download is not offered by default
        parse_import_request(body, "application/json", Settings())
    for uri in ("http://169.254.169.254/latest/", "http://2130706433/", "http://u:p@8.8.8.8/", "file:///etc/x"):
        bad = json.dumps({"method": {"name": "web-download", "uri": uri}}).encode()
        with pytest.raises(BadRequest) as refused:
            parse_import_request(bad, "application/json", settings)
        assert refused.value.status == 400 and refused.value.field == "method.uri"
        assert "169.254" not in refused.value.message and "2130706433" not in refused.value.message


def test_the_web_download_table_and_methods_are_settings_and_top_level_service_keys(tmp_path: Path) -> None:
    settings = settings_from_mapping({"enabled_import_methods": list(BOTH),
                                      "web_download": {"allowed_hosts": ["mirror.example.com"], "max_redirects": 2}})
    assert settings.web_download == WebDownloadSettings(allowed_hosts=("mirror.example.com",), max_redirects=2)
    for bad, key in (({"web_download": {"allowed_ports": [0]}}, "web_download.allowed_ports"),
                     ({"web_download": {"allowed_networks": ["10.0.0.1/8"]}}, "web_download.allowed_networks"),
                     ({"web_download": {"bogus": 1}}, "web_download.bogus")):
        with pytest.raises(ConfigError) as error:
            settings_from_mapping(bad)
        assert error.value.key == key
    config = config_from_mapping({"enabled_import_methods": list(BOTH), "web_download": {"allowed_ports": [8080]}},
                                 tmp_path)
    assert config.importhooks.enabled_import_methods == BOTH
    assert config.importhooks.web_download.allowed_ports == (8080,)


# -- end to end through the reference service ---------------------------------------------------


@pytest.fixture(scope="module")
def files() -> Iterator[WebServer]:
    with web_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, files: WebServer) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(tmp_path_factory.mktemp("webdl_service"), enabled_import_methods=list(BOTH),
                         web_download={"allowed_networks": ["127.0.0.1/32"], "allowed_ports": [files.port]})
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    base = tmp_path_factory.mktemp("disks")
    return {"benign": images.qcow2_image(base / "benign.qcow2").read_bytes(),
            "hostile": images.qcow2_with_backing_file(base / "hostile.qcow2").read_bytes()}


def new_queued(client: httpx.Client, name: str) -> str:
    response = client.post("/v2/images", json={"name": name, "disk_format": "qcow2", "container_format": "bare",
                                                "os_type": "linux"})
    assert response.status_code == 201, response.text
    assert response.headers["OpenStack-image-import-methods"] == "glance-direct,web-download"
    return str(response.json()["id"])


def web_import(client: httpx.Client, image_id: str, uri: str) -> httpx.Response:
    return client.post(f"/v2/images/{image_id}/import", json={"method": {"name": "web-download", "uri": uri}})


def test_service_discovery_lists_web_download(service: ServiceProcess) -> None:
    with service.client(ALICE) as client:
        info = client.get("/v2/info/import").json()
        schema = client.get("/v2/schemas/import").json()
    assert info["import-methods"]["value"] == list(BOTH)
    assert "uri" in schema["properties"]["method"]["properties"]


def test_glance_cli_web_download_benign_becomes_active(service: ServiceProcess, files: WebServer,
                                                       disks: dict[str, bytes], tmp_path: Path) -> None:
    url = files.body("/cli-benign.qcow2", disks["benign"])
    home = tmp_path / "home"
    home.mkdir()
    info = glance(service, ALICE, home, "import-info")
    assert info.returncode == 0 and '"web-download"' in re.sub(r"[\s|]", "", info.stdout)
    name = f"cli-web-{uuid.uuid4().hex[:8]}"
    done = glance(service, ALICE, home, "image-create-via-import", "--disk-format", "qcow2", "--container-format",
                  "bare", "--os-type", "linux", "--name", name, "--import-method", "web-download", "--uri", url)
    assert done.returncode == 0, done.stdout + done.stderr
    image_id = re.search(r"\|\s*id\s*\|\s*([0-9a-f-]{36})", done.stdout)
    assert image_id is not None, done.stdout
    image = service.wait_for_image(ALICE, image_id.group(1))
    assert image["status"] == "active", image
    assert image["size"] == len(disks["benign"]) and image["disk_format"] == "qcow2"
    assert service.staged(image_id.group(1)) == []


def test_glance_cli_refused_url_is_a_400_that_does_not_echo_the_address(service: ServiceProcess,
                                                                        tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    glance(service, ALICE, home, "import-info")
    done = glance(service, ALICE, home, "image-create-via-import", "--disk-format", "qcow2", "--container-format",
                  "bare", "--os-type", "linux", "--name", "cli-refused", "--import-method", "web-download",
                  "--uri", "http://169.254.169.254/latest/meta-data/")
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "cannot be used for web-download" in output, output


def test_sdk_web_download_hostile_ends_killed_with_its_message(service: ServiceProcess, files: WebServer,
                                                               disks: dict[str, bytes]) -> None:
    url = files.body("/sdk-hostile.qcow2", disks["hostile"])
    with service.client(ALICE) as client:
        image_id = new_queued(client, "sdk-web-hostile")
    conn = sdk(service, ALICE)
    conn.image.import_image(conn.image.get_image(image_id), method="web-download", uri=url)
    with pytest.raises(openstack.exceptions.ResourceFailure, match="killed"):
        conn.image.wait_for_status(conn.image.get_image(image_id), status="active", failures=["killed"],
                                   interval=1, wait=120)
    image = conn.image.get_image(image_id)
    assert image.status == "killed" and "backing file" in image.properties["message"]
    assert "passwd" not in image.properties["message"]
    assert service.staged(image_id) == [] and not (service.store_dir / image_id).exists()


def test_sdk_web_download_benign_and_refused(service: ServiceProcess, files: WebServer,
                                             disks: dict[str, bytes]) -> None:
    url = files.body("/sdk-benign.qcow2", disks["benign"])
    conn = sdk(service, ALICE)
    with service.client(ALICE) as client:
        image_id = new_queued(client, "sdk-web-benign")
        refused = new_queued(client, "sdk-web-refused")
    conn.image.import_image(conn.image.get_image(image_id), method="web-download", uri=url)
    image = conn.image.wait_for_status(conn.image.get_image(image_id), status="active", failures=["killed"],
                                       interval=1, wait=120)
    assert image.status == "active" and image.size == len(disks["benign"])
    # openstacksdk hands back the raw response of the import call
    answer = conn.image.import_image(conn.image.get_image(refused), method="web-download",
                                     uri="http://[::ffff:169.254.169.254]/")
    message = answer.json()["error"]["message"]
    assert answer.status_code == 400 and "cannot be used for web-download" in message and "169.254" not in message
    assert conn.image.get_image(refused).status == "queued"


def _settle(service: ServiceProcess, image_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    with service.client(ALICE) as client:
        while True:
            image: dict[str, Any] = client.get(f"/v2/images/{image_id}").json()
            if image["status"] != "importing" or time.monotonic() > deadline:
                return image
            time.sleep(0.1)


def test_a_failed_download_reverts_to_queued_with_a_message_and_nothing_staged(
        service: ServiceProcess, files: WebServer, disks: dict[str, bytes]) -> None:
    with web_server("127.0.0.2") as internal:
        internal.body("/secret", b"internal")
        files.redirect("/to-internal", internal.url("/secret"))
        cases = {
            files.url("/to-internal"): "cannot be used for web-download",
            files.url("/does-not-exist"): "HTTP 404",
            files.endless("/endless"): "larger than this cloud accepts",
            files.trickle("/trickle", interval=0.5): "longer than this cloud allows",
        }
        with service.client(ALICE) as client:
            for uri, words in cases.items():
                image_id = new_queued(client, "web-fails")
                assert web_import(client, image_id, uri).status_code == 202
                image = _settle(service, image_id)
                assert image["status"] == "queued" and words in image["message"], (uri, image)
                assert "127.0.0" not in image["message"]
                assert service.staged(image_id) == []
            # the reverted image may be imported again, from a good URL
            good = files.body("/good.qcow2", disks["benign"])
            assert web_import(client, image_id, good).status_code == 202
            assert service.wait_for_image(ALICE, image_id)["status"] == "active"
        assert internal.hits == []


def test_web_download_needs_a_queued_image_and_an_open_service(service: ServiceProcess, files: WebServer,
                                                               disks: dict[str, bytes]) -> None:
    url = files.body("/again.qcow2", disks["benign"])
    with service.client(ALICE) as client:
        image_id = new_queued(client, "web-twice")
        assert web_import(client, image_id, url).status_code == 202
        assert service.wait_for_image(ALICE, image_id)["status"] == "active"
        again = web_import(client, image_id, url)
        assert again.status_code == 409
        service.halt_file.touch()
        try:
            halted = web_import(client, new_while_halted(client), url)
        finally:
            service.halt_file.unlink()
        assert halted.status_code == 503


def new_while_halted(client: httpx.Client) -> str:
    response = client.post("/v2/images", json={"name": "halted", "disk_format": "qcow2", "container_format": "bare",
                                                "os_type": "linux"})
    assert response.status_code == 201 and "OpenStack-image-import-methods" not in response.headers
    return str(response.json()["id"])


def test_the_halt_switch_stops_a_download_in_progress(service: ServiceProcess, files: WebServer) -> None:
    url = files.trickle("/halt-trickle", piece=b"x" * 1024, interval=0.05)
    with service.client(ALICE) as client:
        image_id = new_queued(client, "web-halted")
        assert web_import(client, image_id, url).status_code == 202
        time.sleep(0.5)
        service.halt_file.touch()
        try:
            image = _settle(service, image_id)
        finally:
            service.halt_file.unlink()
    assert image["status"] == "queued" and "halted" in image["message"], image
    assert service.staged(image_id) == []
