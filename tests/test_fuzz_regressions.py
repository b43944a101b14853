"""Regression tests for what the fuzz targets (fuzz/, scripts/fuzz.sh) found, one per bug, fixed.

Each test makes the failing input (inline when it is tiny, by a small builder otherwise), checks
the fixed code refuses it the documented way, and runs it through the target's harness again so
the invariant that broke is checked as the fuzzer checks it.
"""

from __future__ import annotations

import pytest
from importhooks_image_service.validation import json_body

from fuzz.server import _import_request_target, _service_body_target
from importhooks import Settings
from importhooks.errors import BadRequest
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
    assert _import_request_target()(b"\x00" + body) is None  # the harness: refused, safely


@pytest.mark.parametrize("body", DEEP, ids=["arrays", "objects", "arrays-64k"])
def test_new_image_body_nested_too_deeply_is_a_400(body):
    """service_body: the reference service's POST /v2/images answered 500 (RecursionError in json.loads)."""
    with pytest.raises(BadRequest, match="not valid JSON") as refused:
        json_body(body)
    assert refused.value.field == "body" and refused.value.status == 400
    assert _service_body_target()(b"\x00" + body) is None
