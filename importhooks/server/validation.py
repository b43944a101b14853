"""Validation of ``POST /v2/images/{id}/import``, with jsonschema and the document clients discover.

:func:`parse_import_request` checks the content type (415 unless JSON), parses the body and
validates it against :func:`~importhooks.server.discovery.import_schema` (400 naming the field).
:func:`import_claims` then merges the body's claims with what the image record already says
(``disk_format``, ``container_format`` and the ``os_type`` property, set when it was created)
into :class:`~importhooks.request.Claims`, the body winning, and enforces ``require_os_type``
on the result.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from ..errors import BadRequest, UnsupportedMediaType
from ..request import Claims
from ..settings import Settings
from . import methods as registry
from .discovery import import_schema

#: Largest import request body read, in bytes: the body is a small JSON object.
MAX_BODY = 64 << 10
#: Most characters of a field name (the body's, so untrusted) a refusal's message shows.
SHOWN_NAME = 80
JSON_TYPES = ("application/json", "application/openstack-images-v2.1-json-patch")


@dataclass(frozen=True, slots=True)
class ImportBody:
    """A validated import request: the method's name and parameters, and the claims it makes."""

    method: str
    parameters: Mapping[str, Any]
    disk_format: str | None = None
    container_format: str | None = None
    os_type: str | None = None


def shown(name: str, limit: int = SHOWN_NAME) -> str:
    """An untrusted name as a user message shows it: escaped if any character is not printable, cut at ``limit``."""
    text = name if name.isprintable() else name.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else f"{text[:limit]}..."


def _field(error: Any) -> str:
    path = [str(part) for part in error.absolute_path]
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        path.append(missing)
    elif error.validator == "additionalProperties":
        extra = error.message.split("'")[1] if "'" in error.message else ""
        path.append(extra)
    return shown(".".join(part for part in path if part)) or "body"


def parse_import_request(body: bytes, content_type: str | None, settings: Settings,
                         methods: Sequence[str] | None = None, *, precheck: bool = True) -> ImportBody:
    """The validated body of an import request; :class:`UnsupportedMediaType` or :class:`BadRequest`.

    ``methods`` are the method names accepted; by default those of ``enabled_import_methods``. A
    method's ``precheck`` (e.g. web-download's URL check) runs on the valid body unless ``precheck``
    is false: its refusal is the answer. It may resolve a host name: an ``async`` server runs this
    call in a worker thread (``precheck=True``) and its own synchronous parse with ``precheck=False``.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in JSON_TYPES:
        raise UnsupportedMediaType("The import request must be JSON (Content-Type: application/json).")
    if len(body) > MAX_BODY:
        raise BadRequest(f"The import request is larger than {MAX_BODY} bytes.", field="body")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: arrays or objects nested too deeply
        raise BadRequest("The import request is not valid JSON.", field="body") from None
    error = best_match(Draft202012Validator(import_schema(settings, methods)).iter_errors(document))
    if error is not None:
        name = _field(error)
        if error.validator == "enum":
            allowed = ", ".join(str(value) for value in error.validator_value)
            raise BadRequest(f"Invalid {name}: must be one of {allowed}.", field=name)
        if error.validator == "additionalProperties":
            raise BadRequest(f"Unknown field {name!r} in the import request.", field=name)
        if error.validator == "required":
            raise BadRequest(f"The import request must give {name}.", field=name)
        raise BadRequest(f"Invalid {name} in the import request.", field=name)
    method = dict(document["method"])
    name = method.pop("name")
    entry = registry.get(name)
    if precheck and entry is not None and entry.precheck is not None:
        entry.precheck(MappingProxyType(method), settings)
    return ImportBody(name, MappingProxyType(method), document.get("disk_format"),
                      document.get("container_format"), document.get("os_type"))


def import_claims(body: ImportBody, image: Mapping[str, Any], settings: Settings,
                  properties: Mapping[str, str] | None = None) -> Claims:
    """The claims of an import: the body's, else the image record's; ``require_os_type`` enforced.

    ``image`` is the record's fields (``disk_format``, ``container_format``, ``os_type``);
    ``properties`` are the user's other properties, passed on for the protected-property check.
    """
    def pick(name: str) -> str | None:
        value = getattr(body, name)
        if value is None:
            value = image.get(name)
        return value if isinstance(value, str) and value else None

    os_type = pick("os_type")
    if os_type is None and settings.require_os_type:
        allowed = ", ".join(settings.os_types)
        raise BadRequest(f"The import request must give os_type (one of: {allowed}), or the image must have it.",
                         field="os_type")
    if os_type is not None and os_type not in settings.os_types:
        raise BadRequest(f"Invalid os_type: must be one of {', '.join(settings.os_types)}.", field="os_type")
    return Claims(disk_format=pick("disk_format"), container_format=pick("container_format"), os_type=os_type,
                  properties=MappingProxyType(dict(properties or {})))
