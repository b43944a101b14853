"""Regression tests for what the fuzz targets (fuzz/, scripts/fuzz.sh) found, one per bug, fixed.

Each test makes the failing input (inline when it is tiny, by a small builder otherwise), checks
the fixed code refuses it the documented way, and runs it through the target's harness again so
the invariant that broke is checked as the fuzzer checks it.
"""

from __future__ import annotations

import pytest
from importhooks_image_service.bodies import parse_json
from importhooks_image_service.config import DEFAULT_MAX_JSON_DEPTH
from importhooks_image_service.errors import Forbidden
from importhooks_image_service.validation import validate_new_image

from fuzz.server import MAX_MESSAGE, REFUSED, _import_request_target, _service_body_target
from importhooks import Settings
from importhooks.errors import BadRequest, RequestError
from importhooks.server.validation import parse_import_request


def nested(depth: int, opener: bytes = b"[") -> bytes:
    """JSON nested ``depth`` deep: Python's json module raises RecursionError past about a thousand."""
    return opener * depth


DEEP = [nested(5000), nested(5000, b'{"a":'), nested(60000)]  # all under the 64 KiB body limits


@pytest.mark.parametrize("body", DEEP, ids=["arrays", "objects", "arrays-64k"])
def test_import_request_nested_too_deeply_is_a_400(body):
    """import_request: RecursionError escaped parse_import_request (a 500 instead of a 400)."""
    with pytest.raises(BadRequest, match="not valid JSON") as refused:
        parse_import_request(body, "application/json", Settings())
    assert refused.value.field == "body" and refused.value.status == 400
    assert _import_request_target()(b"\x00" + body) is None  # the harness: refused, safely (then None)


@pytest.mark.parametrize("body", DEEP, ids=["arrays", "objects", "arrays-64k"])
def test_new_image_body_nested_too_deeply_is_a_400(body):
    """service_body: the reference service's POST /v2/images answered 500 (RecursionError in json.loads)."""
    with pytest.raises(BadRequest, match="deeper than 32 levels") as refused:
        parse_json(body, DEFAULT_MAX_JSON_DEPTH)
    assert refused.value.field == "body" and refused.value.status == 400
    assert _service_body_target()(b"\x00" + body) is None


def assert_safe(refused: RequestError) -> None:
    """What the fuzz targets check of a refusal's user message: one printable, bounded line."""
    assert refused.message.isprintable() and len(refused.message) <= MAX_MESSAGE, refused.message[:200]


#: service_body crash-73c2e282 (2026-12-03), as minimized: a property name with a lone surrogate,
#: whose value is not a string. The 400's message showed the name raw: not printable, and not even
#: encodable as UTF-8 for the JSON error response.
SURROGATE_NAME = b'\x00{"name": "io","@vected\\ud800": false}'


def test_a_property_name_that_is_not_printable_is_escaped_in_the_message():
    with pytest.raises(BadRequest, match="must be of type string") as refused:
        validate_new_image(parse_json(SURROGATE_NAME[1:], DEFAULT_MAX_JSON_DEPTH), Settings())
    assert_safe(refused.value)
    assert "@vected\\ud800" in refused.value.message
    refused.value.message.encode("utf-8")  # the error response can be written
    assert _service_body_target()(SURROGATE_NAME) is REFUSED


@pytest.mark.parametrize("name", ["os_glance_" + "a" * 5000, "importhooks_" + "b" * 5000])
def test_a_long_reserved_or_protected_name_is_cut_in_the_message(name):
    """Found with the service_body harness: names are checked for length after these refusals."""
    with pytest.raises(Forbidden) as refused:
        validate_new_image({name: "x"}, Settings())
    assert_safe(refused.value)
    assert f"'{name[:80]}...'" in refused.value.message and len(refused.value.message) < 200


@pytest.mark.parametrize("body", [b'{"' + b"a" * 2000 + b'": 1, "method": {"name": "glance-direct"}}',
                                  b'{"method": {"name": "glance-direct", "\\udfff\\n": 1}}'],
                         ids=["long", "not-printable"])
def test_an_unknown_field_of_the_import_request_is_shown_safely(body):
    """Found with the import_request harness: the unknown field's name went whole into the 400."""
    with pytest.raises(BadRequest, match="Unknown field") as refused:
        parse_import_request(body, "application/json", Settings())
    assert_safe(refused.value)
    assert _import_request_target()(b"\x00" + body) is None  # refused, safely
