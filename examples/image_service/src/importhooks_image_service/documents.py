"""The JSON documents of the API: version discovery, the image schema, images, errors.

The shapes follow Glance's v2 API where the real clients depend on them:

* python-glanceclient validates every image it receives against ``GET /v2/schemas/image``
  (so every field the service may return as ``null`` allows it), turns each property that
  is not ``readOnly`` into a CLI flag, enforces an ``enum`` before it sends anything, and
  refuses custom properties unless ``additionalProperties`` allows strings;
* both clients read errors from ``{"error": {"message": ...}}``.
"""

from __future__ import annotations

import http
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from importhooks import Settings
from importhooks.server.status import ImageStatus
from importhooks.settings import CONTAINER_FORMATS, DISK_FORMATS

from .db import ImageRecord

API_VERSION = "v2.9"
UUID_PATTERN = "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"
#: Glance's statuses, including the two this service never sets (an older Glance's clients know them).
STATUSES = [status.value for status in ImageStatus] + ["pending_delete", "deactivated"]
VISIBILITIES = ["community", "public", "private", "shared"]
#: Image fields a user may set when creating an image (besides custom string properties).
SETTABLE = ("name", "disk_format", "container_format", "visibility", "protected", "os_hidden", "min_disk",
            "min_ram", "tags", "os_type")
#: Fields only the service sets: refused (403) in a create request, like Glance does.
READ_ONLY = ("id", "status", "owner", "checksum", "os_hash_algo", "os_hash_value", "size", "virtual_size",
             "created_at", "updated_at", "self", "file", "schema", "message", "locations", "direct_url")


def base_url(url: str) -> str:
    """The scheme, host and port of ``url``, without a trailing slash."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", "")).rstrip("/")


def versions_document(base: str) -> dict[str, Any]:
    """``GET /`` and ``GET /versions``: the one API version, its ``self`` link absolute."""
    return {"versions": [{"id": API_VERSION, "status": "CURRENT",
                          "links": [{"rel": "self", "href": f"{base}/v2/"}]}]}


def _nullable(kind: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"type": ["null", kind], "readOnly": True, "description": description, **extra}


def _read_only(kind: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "readOnly": True, "description": description, **extra}


def image_schema(settings: Settings) -> dict[str, Any]:
    """``GET /v2/schemas/image``: Glance's image schema, with ``os_type`` limited to the settings' os types."""
    properties: dict[str, Any] = {
        "id": _read_only("string", "An identifier for the image.", pattern=UUID_PATTERN),
        "name": {"type": ["null", "string"], "maxLength": 255, "description": "Descriptive name for the image."},
        "status": _read_only("string", "Status of the image.", enum=STATUSES),
        "visibility": {"type": "string", "enum": VISIBILITIES, "description": "Scope of image accessibility."},
        "protected": {"type": "boolean", "description": "If true, the image will not be deletable."},
        "os_hidden": {"type": "boolean", "description": "If true, image will not appear in default image list."},
        "checksum": _nullable("string", "md5 hash of image contents.", maxLength=32),
        "os_hash_algo": _nullable("string", "Algorithm of os_hash_value.", maxLength=64),
        "os_hash_value": _nullable("string", "Hexdigest of the image contents by os_hash_algo.", maxLength=128),
        "owner": _nullable("string", "Owner of the image (a project).", maxLength=255),
        "size": _nullable("integer", "Size of image file in bytes."),
        "virtual_size": _nullable("integer", "Virtual size of image in bytes."),
        "message": _nullable("string", "Why the image's import failed, for its owner (status killed)."),
        "container_format": {"type": ["null", "string"], "enum": [None, *CONTAINER_FORMATS],
                             "description": "Format of the container."},
        "disk_format": {"type": ["null", "string"], "enum": [None, *DISK_FORMATS],
                        "description": "Format of the disk."},
        "created_at": _read_only("string", "Date and time of image registration."),
        "updated_at": _read_only("string", "Date and time of the last image modification."),
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 255},
                 "description": "List of strings related to the image."},
        "min_ram": {"type": "integer", "minimum": 0, "description": "Amount of ram (in MB) required to boot image."},
        "min_disk": {"type": "integer", "minimum": 0,
                     "description": "Amount of disk space (in GB) required to boot image."},
        "self": _read_only("string", "An image self url."),
        "file": _read_only("string", "An image file url."),
        "schema": _read_only("string", "An image schema url."),
        # Not readOnly: the user claims os_type when creating the image; the import verifies it
        # against the disk and replaces the claim with the verified value.
        "os_type": {"type": "string", "enum": list(settings.os_types),
                    "description": "Operating system of the image; verified against the disk by the import."},
    }
    return {
        "name": "image",
        "properties": properties,
        "additionalProperties": {"type": "string"},
        "links": [{"rel": "self", "href": "{self}"}, {"rel": "enclosure", "href": "{file}"},
                  {"rel": "describedby", "href": "{schema}"}],
    }


def images_schema(settings: Settings) -> dict[str, Any]:
    """``GET /v2/schemas/images``: Glance's image list schema, its items the image schema."""
    return {
        "name": "images",
        "properties": {
            "images": {"type": "array", "items": image_schema(settings)},
            "schema": {"type": "string"},
            "first": {"type": "string"},
            "next": {"type": "string"},
        },
        "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"},
                  {"rel": "describedby", "href": "{schema}"}],
    }


def render_image(record: ImageRecord) -> dict[str, Any]:
    """An image as the API shows it: custom properties flattened beside the core fields."""
    document: dict[str, Any] = dict(record.properties)
    document.update({
        "id": record.id,
        "name": record.name,
        "status": record.status,
        "visibility": record.visibility,
        "protected": record.protected,
        "os_hidden": record.os_hidden,
        "checksum": record.checksum,
        "os_hash_algo": record.os_hash_algo,
        "os_hash_value": record.os_hash_value,
        "owner": record.owner,
        "size": record.size,
        "virtual_size": record.virtual_size,
        "message": record.message,
        "container_format": record.container_format,
        "disk_format": record.disk_format,
        "min_disk": record.min_disk,
        "min_ram": record.min_ram,
        "tags": list(record.tags),
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "self": f"/v2/images/{record.id}",
        "file": f"/v2/images/{record.id}/file",
        "schema": "/v2/schemas/image",
    })
    return document


def images_document(records: list[ImageRecord]) -> dict[str, Any]:
    """``GET /v2/images``: one page holding every match (no ``next`` link)."""
    return {"images": [render_image(record) for record in records], "schema": "/v2/schemas/images",
            "first": "/v2/images"}


def error_document(status: int, message: str) -> dict[str, Any]:
    """The error body both clients read: ``{"error": {"message", "code", "title"}}``."""
    try:
        title = http.HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return {"error": {"message": message, "code": status, "title": title}}
