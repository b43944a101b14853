"""``PATCH /v2/images/{id}``: Glance's JSON-patch media types applied to an image record.

Glance takes ``application/openstack-images-v2.1-json-patch`` (``[{"op": "replace", "path":
"/name", "value": ...}]``, what openstacksdk, the ``openstack`` CLI and python-glanceclient
send) and the older ``application/openstack-images-v2.0-json-patch`` (``[{"replace":
"/name", "value": ...}]``). The operations are ``add``, ``replace`` and ``remove`` on the
top-level fields and custom properties, as in Glance:

* read-only fields, ``os_glance_*`` names and the properties only the import sets are refused
  (403) as on create; ``os_type`` (the user's claim) and the formats change only before the
  image has data (``queued``), since an import verified them;
* removing a core field is 403, removing or replacing a property that does not exist 409;
* the result is checked against the image schema (400 naming the field).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from importhooks import Settings
from importhooks.errors import BadRequest, UnsupportedMediaType

from .db import ImageRecord
from .documents import SETTABLE, render_image
from .errors import Conflict, Forbidden
from .validation import check_name, check_schema

PATCH_V21 = "application/openstack-images-v2.1-json-patch"
PATCH_V20 = "application/openstack-images-v2.0-json-patch"
MEDIA_TYPES = (PATCH_V21, PATCH_V20)
OPERATIONS = ("add", "replace", "remove")
#: Fields that describe the data: fixed once an image has data (the import verified them).
DATA_FIELDS = ("disk_format", "container_format", "os_type")
#: Most changes one PATCH may carry.
MAX_CHANGES = 256


@dataclass
class Changes:
    """What a PATCH changes: columns, and the image's custom properties after it."""

    columns: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)


def media_type(content_type: str | None) -> str:
    """The patch media type of the request; 415 for any other."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind not in MEDIA_TYPES:
        raise UnsupportedMediaType(f"Updates need Content-Type {PATCH_V21}.")
    return kind


def _operation(change: dict[str, Any], kind: str) -> tuple[str, str]:
    if kind == PATCH_V21:
        op, path = change.get("op"), change.get("path")
    else:
        named = [name for name in OPERATIONS if name in change]
        if len(named) != 1:
            raise BadRequest("Each change names exactly one of add, replace or remove.", field="body")
        op, path = named[0], change[named[0]]
    if op not in OPERATIONS:
        raise BadRequest("Each change's op is one of add, replace or remove.", field="op")
    if not isinstance(path, str) or not path.startswith("/") or path.count("/") != 1:
        raise BadRequest("Each change's path names one field, e.g. /name.", field="path")
    name = path[1:].replace("~1", "/").replace("~0", "~")
    return op, name


def apply_patch(record: ImageRecord, body: Any, kind: str, settings: Settings) -> Changes:
    """The changes ``body`` (a parsed JSON-patch document of media type ``kind``) makes to ``record``."""
    if not isinstance(body, list) or not all(isinstance(change, dict) for change in body):
        raise BadRequest("The request body must be a JSON array of changes.", field="body")
    if len(body) > MAX_CHANGES:
        raise BadRequest(f"One update carries at most {MAX_CHANGES} changes.", field="body")
    document = render_image(record)
    properties = dict(record.properties)
    changes = Changes()
    for change in body:
        op, name = _operation(change, kind)
        check_name(name, settings)
        if name in DATA_FIELDS and record.status != "queued":
            raise Forbidden(f"Attribute '{name}' can only be changed before the image has data.")
        core = name in SETTABLE and name != "os_type"
        if op == "remove":
            if core:
                raise Forbidden(f"Property {name} may not be removed.")
            if name not in properties:
                raise Conflict(f"Property {name} does not exist.")
            del properties[name]
            document.pop(name, None)
            continue
        if "value" not in change:
            raise BadRequest(f"The change of {name} has no value.", field=name)
        value = change["value"]
        if op == "replace" and not core and name not in properties:
            raise Conflict(f"Property {name} does not exist.")
        document[name] = value
        if core:
            changes.columns[name] = tuple(dict.fromkeys(value)) if name == "tags" and isinstance(value, list) else value
        else:
            properties[name] = value
    check_schema({key: value for key, value in document.items() if key in SETTABLE or key in properties}, settings)
    changes.properties = properties
    return changes
