"""Checks of the service's own requests (the kit validates the import request): new images, upload sizes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsonschema import Draft4Validator
from jsonschema.exceptions import best_match

from importhooks import Settings
from importhooks.errors import BadRequest
from importhooks.server.validation import shown

from .documents import READ_ONLY, SETTABLE, image_schema
from .errors import Forbidden

#: Settable fields that are image columns; every other key of a create request is a property.
COLUMNS = tuple(name for name in SETTABLE if name != "os_type")
RESERVED_PREFIX = "os_glance"
MAX_NAME = 255


def _where(error: Any) -> str:
    return shown(".".join(str(part) for part in error.absolute_path)) or "body"


def check_name(name: str, settings: Settings) -> None:
    """403 for a read-only field, an ``os_glance_*`` name (reserved, as in Glance) or a property only
    the import may set (``protected_properties``, except ``os_type``: the user's claim, which the
    import verifies); 400 for an empty or overlong name."""
    if name in READ_ONLY:
        raise Forbidden(f"Attribute '{name}' is read-only.")
    if name.lower().startswith(RESERVED_PREFIX):
        raise Forbidden(f"Attribute '{shown(name)}' is reserved.")
    if name != "os_type" and settings.is_protected(name):
        raise Forbidden(f"Property '{shown(name)}' is protected: only the image import sets it.")
    if not name or len(name) > MAX_NAME:
        raise BadRequest(f"Property names have 1 to {MAX_NAME} characters.", field=name[:MAX_NAME] or "body")


def validate_new_image(body: object, settings: Settings) -> tuple[dict[str, Any], dict[str, str]]:
    """The columns and custom properties of a ``POST /v2/images`` body, or the refusal.

    403 for a name :func:`check_name` refuses; 400 naming the field for anything the image
    schema refuses. Who may set which ``visibility`` is the policy's (``publicize_image``,
    ``communitize_image``).
    """
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", field="body")
    for name in body:
        check_name(name, settings)
    check_schema(body, settings)
    columns = {name: body[name] for name in COLUMNS if name in body}
    if "tags" in columns:
        columns["tags"] = tuple(dict.fromkeys(columns["tags"]))
    properties = {name: value for name, value in body.items() if name not in COLUMNS}
    return columns, properties


def check_schema(document: Mapping[str, Any], settings: Settings) -> None:
    """400 naming the field for the first thing the image schema refuses in ``document``."""
    error = best_match(Draft4Validator(image_schema(settings)).iter_errors(dict(document)))
    if error is not None:
        where = _where(error)
        if error.validator == "enum":
            allowed = ", ".join("null" if value is None else str(value) for value in error.validator_value)
            raise BadRequest(f"Invalid {where}: must be one of {allowed}.", field=where)
        if error.validator == "type":
            kinds = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
            raise BadRequest(f"Invalid {where}: must be of type {' or '.join(kinds)}.", field=where)
        raise BadRequest(f"Invalid {where}.", field=where)


def declared_size(headers: Mapping[str, str]) -> int | None:
    """The upload's size from ``X-OpenStack-Image-Size`` or ``Content-Length`` (``None`` when chunked).

    glanceclient streams chunked with ``X-OpenStack-Image-Size``; openstacksdk sends a
    ``Content-Length``. Both, when they differ, are a 400.
    """
    sizes: dict[str, int] = {}
    for name in ("X-OpenStack-Image-Size", "Content-Length"):
        value = headers.get(name)
        if value is None:
            continue
        text = value.strip()
        if not text.isascii() or not text.isdigit():
            raise BadRequest(f"Invalid {name} header: expected a number of bytes.", field=name)
        sizes[name] = int(text)
    if len(set(sizes.values())) > 1:
        raise BadRequest("X-OpenStack-Image-Size and Content-Length disagree.", field="X-OpenStack-Image-Size")
    return next(iter(sizes.values()), None)
