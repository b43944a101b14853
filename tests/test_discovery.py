"""Value discovery (GET /v2/info/import) and format discovery (the import request schema)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from importhooks import Settings, load_settings
from importhooks.server.discovery import create_headers, import_info, import_schema

JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "array": list, "integer": int, "number": (int, float), "boolean": bool, "string": str,
}


def validator(settings: Settings, methods: tuple[str, ...] = ("glance-direct",)) -> Draft202012Validator:
    schema = import_schema(settings, methods=methods)
    Draft202012Validator.check_schema(schema)  # a valid draft 2020-12 schema
    return Draft202012Validator(schema)


# --- import_info -----------------------------------------------------------------------------------


def test_info_has_glances_shape():
    info = import_info(Settings())
    assert info["import-methods"] == {"description": "Import methods available.", "type": "array",
                                      "value": ["glance-direct"]}
    for key, entry in info.items():
        assert set(entry) == {"description", "type", "value"}, key
        assert entry["description"].endswith("."), key
        assert isinstance(entry["value"], JSON_TYPES[entry["type"]]), key
        if entry["type"] in ("integer", "number"):
            assert not isinstance(entry["value"], bool), key
    assert json.loads(json.dumps(info)) == info


def test_info_values_come_from_settings(tmp_path: Path):
    config = tmp_path / "s.toml"
    config.write_text("disk_formats = ['qcow2', 'raw']\ncontainer_formats = ['bare']\nmax_image_size = '4GiB'\n"
                      "max_upload_bytes = '512MiB'\nmax_upload_time = '10m'\nos_types = ['linux']\n"
                      "require_os_type = true\nhashing_algorithm = 'sha256'\n")
    info = import_info(load_settings(config), methods=("glance-direct", "web-download"))
    values = {key: entry["value"] for key, entry in info.items()}
    assert values == {
        "import-methods": ["glance-direct", "web-download"],
        "disk-formats": ["qcow2", "raw"],
        "container-formats": ["bare"],
        "max-image-size": 4 << 30,
        "max-upload-bytes": 512 << 20,
        "max-upload-time": 600.0,
        "os-types": ["linux"],
        "os-type-required": True,
        "hash-algorithm": "sha256",
    }


def test_info_while_halted_lists_no_method():
    info = import_info(Settings(), methods=("glance-direct", "web-download"), halted=True)
    assert info["import-methods"]["value"] == []
    assert info["disk-formats"]["value"] == list(Settings().disk_formats)


def test_info_refuses_empty_method_names():
    with pytest.raises(ValueError, match="non-empty"):
        import_info(Settings(), methods=("glance-direct", ""))


# --- import_schema ---------------------------------------------------------------------------------


GOOD_BODIES: list[dict[str, Any]] = [
    {"method": {"name": "glance-direct"}},
    {"method": {"name": "glance-direct"}, "disk_format": "qcow2", "container_format": "bare", "os_type": "linux"},
    {"method": {"name": "glance-direct"}, "stores": ["ceph", "file"], "all_stores_must_succeed": False},
    {"method": {"name": "glance-direct"}, "all_stores": None},  # what tempest sends without stores
]
BAD_BODIES: list[dict[str, Any]] = [
    {},
    {"method": {}},
    {"method": "glance-direct"},
    {"method": {"name": "web-download", "uri": "https://example.com/x.img"}},  # not offered here
    {"method": {"name": 7}},
    {"method": {"name": "glance-direct", "uri": "https://example.com/x.img"}},
    {"method": {"name": "glance-direct"}, "disk_format": "vmdk"},
    {"method": {"name": "glance-direct"}, "container_format": "ova"},
    {"method": {"name": "glance-direct"}, "os_type": "plan9"},
    {"method": {"name": "glance-direct"}, "disk_format": None},
    {"method": {"name": "glance-direct"}, "name": "extra top-level key"},
    {"method": {"name": "glance-direct"}, "stores": "ceph"},
]


@pytest.fixture
def strict() -> Settings:
    return Settings(disk_formats=("raw", "qcow2"), container_formats=("bare",), os_types=("linux", "windows"))


@pytest.mark.parametrize("body", GOOD_BODIES)
def test_schema_accepts_good_bodies(strict: Settings, body: dict[str, Any]):
    assert list(validator(strict).iter_errors(body)) == []


@pytest.mark.parametrize("body", BAD_BODIES)
def test_schema_refuses_bad_bodies(strict: Settings, body: dict[str, Any]):
    assert not validator(strict).is_valid(body)


def test_schema_enums_match_the_info(strict: Settings):
    schema, info = import_schema(strict), import_info(strict)
    properties = schema["properties"]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["method"]
    assert properties["method"]["properties"]["name"]["enum"] == info["import-methods"]["value"]
    assert properties["method"]["required"] == ["name"]
    assert properties["disk_format"]["enum"] == info["disk-formats"]["value"] == ["raw", "qcow2"]
    assert properties["container_format"]["enum"] == info["container-formats"]["value"] == ["bare"]
    assert properties["os_type"]["enum"] == info["os-types"]["value"]


def test_schema_leaves_a_required_os_type_to_the_body_or_the_image(strict: Settings):
    schema = import_schema(strict.replace(require_os_type=True))
    assert "Required here or on the image" in schema["properties"]["os_type"]["description"]
    check = validator(strict.replace(require_os_type=True))
    assert check.is_valid({"method": {"name": "glance-direct"}})  # the image may carry it
    assert check.is_valid({"method": {"name": "glance-direct"}, "os_type": "windows"})
    assert not check.is_valid({"method": {"name": "glance-direct"}, "os_type": "solaris"})


def test_schema_method_parameters(strict: Settings):
    check = validator(strict, methods=("glance-direct", "web-download", "glance-download", "copy-image"))
    assert check.is_valid({"method": {"name": "web-download", "uri": "https://example.com/x.img"}})
    assert check.is_valid({"method": {"name": "copy-image"}})
    assert check.is_valid({"method": {"name": "glance-download", "glance_image_id": "5f7c", "glance_region": "r2",
                                      "glance_service_interface": "public"}})
    assert not check.is_valid({"method": {"name": "web-download"}})
    assert not check.is_valid({"method": {"name": "web-download", "uri": ""}})
    assert not check.is_valid({"method": {"name": "glance-download", "glance_image_id": "5f7c"}})
    assert not check.is_valid({"method": {"name": "glance-direct", "uri": "https://example.com/x.img"}})
    assert not check.is_valid({"method": {"name": "copy-image", "glance_region": "r2"}})
    assert not check.is_valid({"method": {"name": "web-download", "uri": "https://x/y", "bogus": 1}})


def test_schema_with_no_format_allowed_refuses_every_claim():
    check = validator(Settings(disk_formats=(), container_formats=()))
    assert check.is_valid({"method": {"name": "glance-direct"}})
    assert not check.is_valid({"method": {"name": "glance-direct"}, "disk_format": "raw"})


def test_documents_are_fresh_copies(strict: Settings):
    first = import_schema(strict)
    first["properties"]["disk_format"]["enum"].append("vmdk")
    assert import_schema(strict)["properties"]["disk_format"]["enum"] == ["raw", "qcow2"]
    edited = import_schema(strict, ("glance-direct", "web-download"))
    edited["properties"]["method"]["properties"]["uri"]["minLength"] = 1000
    assert validator(strict, ("glance-direct", "web-download")).is_valid(
        {"method": {"name": "web-download", "uri": "https://example.com/x.img"}})


def test_create_headers_advertise_import_and_the_stage_url():
    url = "http://127.0.0.1:9292/v2/images/0b9e5f0e-8b43-4f2e-9a55-5d4b9c1f7f00"
    assert create_headers(url + "/") == {
        "OpenStack-image-import-methods": "glance-direct",
        "OpenStack-image-glance-direct-url": url + "/stage",
    }
    assert create_headers(url, ("web-download",)) == {"OpenStack-image-import-methods": "web-download"}
    assert create_headers(url, halted=True) == {}
