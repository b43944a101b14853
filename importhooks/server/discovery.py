"""Discovery documents generated from the settings: what a client needs to import.

* :func:`import_info` is *value discovery* (``GET /v2/info/import``): Glance's
  ``import-methods`` entry plus the values the import spec asks for and Glance does
  not publish (accepted formats, size and time limits, os types).
* :func:`import_schema` is *format discovery* (``GET /v2/schemas/import``): a JSON
  schema (draft 2020-12) of the body of ``POST /v2/images/{id}/import``, whose enums
  come from the same settings, so a client can validate a request before sending it.

* :func:`create_headers` are the headers of the image-create response (``201``) that
  tell a client it may import, and where to stage the data.

The methods listed are those of the ``enabled_import_methods`` setting unless a caller
passes ``methods``; each method's parameters come from the registry of
:mod:`importhooks.server.methods`. All are plain, JSON-ready dicts built anew on each call;
nothing is cached.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from ..settings import Settings
from . import methods as registry

DEFAULT_METHODS: tuple[str, ...] = ("glance-direct",)
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _entry(description: str, kind: str, value: Any) -> dict[str, Any]:
    return {"description": description, "type": kind, "value": value}


def _methods(methods: Sequence[str] | None, settings: Settings | None = None) -> list[str]:
    if methods is None:
        return list(registry.enabled_names(settings or Settings()))
    names = list(dict.fromkeys(methods))
    if not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"import methods must be non-empty strings, got {list(methods)!r}")
    return names


def import_info(settings: Settings, methods: Sequence[str] | None = None, halted: bool = False) -> dict[str, Any]:
    """The value-discovery document of ``GET /v2/info/import``.

    Every entry has Glance's ``{description, type, value}`` shape; ``type`` is the
    JSON type of ``value``. While import is halted (the kill switch) no method is
    available: ``import-methods`` is empty, the other values still describe the cloud.
    Sizes are in bytes, times in seconds.
    """
    return {
        "import-methods": _entry("Import methods available.", "array", [] if halted else _methods(methods, settings)),
        "disk-formats": _entry("Disk formats accepted for import.", "array", list(settings.disk_formats)),
        "container-formats": _entry("Container formats accepted for import.", "array",
                                    list(settings.container_formats)),
        "max-image-size": _entry("Largest virtual size of an imported disk, in bytes.", "integer",
                                 settings.max_image_size),
        "max-upload-bytes": _entry("Largest upload accepted by the stage call, in bytes.", "integer",
                                   settings.max_upload_bytes),
        "max-upload-time": _entry("Longest time a stage upload may take, in seconds.", "number",
                                  settings.max_upload_time),
        "os-types": _entry("Values accepted for the os_type of an import.", "array", list(settings.os_types)),
        "os-type-required": _entry("Whether an import request must give os_type.", "boolean",
                                   settings.require_os_type),
        "hash-algorithm": _entry("Algorithm of the image's os_hash_value.", "string", settings.hashing_algorithm),
    }


def create_headers(image_url: str, methods: Sequence[str] | None = None, halted: bool = False,
                   settings: Settings | None = None) -> dict[str, str]:
    """Headers of the ``POST /v2/images`` response (201) that advertise import.

    ``OpenStack-image-import-methods`` lists the methods (openstacksdk refuses to import
    without it) and, when ``glance-direct`` is one, ``OpenStack-image-glance-direct-url`` is
    the image's stage URL: ``image_url`` (the absolute URL of the new image) plus ``/stage``.
    While import is halted there are none.
    """
    names = [] if halted else _methods(methods, settings)
    headers: dict[str, str] = {}
    if names:
        headers["OpenStack-image-import-methods"] = ",".join(names)
    if "glance-direct" in names:
        headers["OpenStack-image-glance-direct-url"] = f"{image_url.rstrip('/')}/stage"
    return headers


def _method_schema(names: list[str]) -> dict[str, Any]:
    properties: dict[str, Any] = {"name": {"type": "string", "enum": names, "description": "The import method."}}
    conditions: list[dict[str, Any]] = []
    for name in names:
        method = registry.get(name)
        if method is None or not method.parameters:
            continue
        params, required = method.parameters, method.required
        properties.update(copy.deepcopy(dict(params)))  # callers may edit the document
        conditions.append({
            "if": {"properties": {"name": {"const": name}}, "required": ["name"]},
            "then": {"required": list(required)},
            "else": {"properties": dict.fromkeys(params, False)},
        })
    schema: dict[str, Any] = {
        "type": "object",
        "description": "How the image data reaches the image service, with the method's own parameters.",
        "properties": properties,
        "required": ["name"],
        "additionalProperties": False,
    }
    if conditions:
        schema["allOf"] = conditions
    return schema


def import_schema(settings: Settings, methods: Sequence[str] | None = None) -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of an import request body.

    ``method.name`` is required and one of ``methods``; ``disk_format``,
    ``container_format`` and ``os_type`` are claims limited to the values the settings
    accept, given here or already on the image (set when it was created); when
    ``require_os_type`` is set, ``os_type`` must be in one place or the other, which
    :func:`importhooks.server.validation.import_claims` checks. Glance's
    multi-store keys (``stores``, ``all_stores``, ``all_stores_must_succeed``) are
    allowed as Glance's clients send them; anything else is refused.
    """
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "name": "import",
        "title": "Image import request",
        "type": "object",
        "properties": {
            "method": _method_schema(_methods(methods, settings)),
            "disk_format": {"type": "string", "enum": list(settings.disk_formats),
                            "description": "The disk format the data is claimed to be; checked against the data."},
            "container_format": {"type": "string", "enum": list(settings.container_formats),
                                 "description": "The container format the data is claimed to be."},
            "os_type": {"type": "string", "enum": list(settings.os_types),
                        "description": "The operating system of the image (a protected property, verified "
                                       "against the disk). " + ("Required here or on the image."
                                                                if settings.require_os_type else "Optional.")},
            "stores": {"type": "array", "items": {"type": "string"}, "uniqueItems": True,
                       "description": "Stores to import into (multi-store clouds)."},
            "all_stores": {"type": ["boolean", "null"], "description": "Import into every store."},
            "all_stores_must_succeed": {"type": ["boolean", "null"],
                                        "description": "Fail the import if any store fails."},
        },
        "required": ["method"],
        "additionalProperties": False,
    }
