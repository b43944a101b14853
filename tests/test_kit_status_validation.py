"""The embedding kit's status machine and import request validation."""

from __future__ import annotations

import json

import pytest

from importhooks import Settings
from importhooks.errors import BadRequest, RequestError, StatusConflict, UnsupportedMediaType
from importhooks.server.status import Call, ImageStatus, Outcome, after, allowed, check, deletable
from importhooks.server.validation import ImportBody, import_claims, parse_import_request

S = ImageStatus

#: Where each call may start, from the seed: everything else is a 409.
ALLOWED = {
    Call.UPLOAD: {S.QUEUED},
    Call.STAGE: {S.QUEUED, S.UPLOADING},
    Call.IMPORT: {S.UPLOADING},
}


@pytest.mark.parametrize("call", list(Call))
@pytest.mark.parametrize("status", list(ImageStatus))
def test_each_call_is_allowed_only_where_the_seed_says(call, status):
    assert allowed(call, status) is (status in ALLOWED[call])
    if status in ALLOWED[call]:
        check(call, status)
    else:
        with pytest.raises(StatusConflict) as info:
            check(call, status)
        assert info.value.status == 409 and status.value in info.value.message


@pytest.mark.parametrize("status", list(ImageStatus))
def test_methods_without_staging_import_from_queued_only(status):
    assert allowed(Call.IMPORT, status, "web-download") is (status is S.QUEUED)
    assert allowed(Call.IMPORT, status, "glance-direct") is (status is S.UPLOADING)


def test_active_images_are_immutable_and_messages_say_why():
    for call in Call:
        with pytest.raises(StatusConflict, match="active images cannot be changed"):
            check(call, S.ACTIVE)
    with pytest.raises(StatusConflict, match="stage data first"):
        check(Call.IMPORT, S.QUEUED)


@pytest.mark.parametrize(("call", "outcome", "status"), [
    (Call.UPLOAD, Outcome.STARTED, S.SAVING), (Call.UPLOAD, Outcome.DONE, S.ACTIVE),
    (Call.UPLOAD, Outcome.FAILED, S.QUEUED), (Call.STAGE, Outcome.STARTED, S.UPLOADING),
    (Call.STAGE, Outcome.DONE, S.UPLOADING), (Call.STAGE, Outcome.FAILED, S.QUEUED),
    (Call.IMPORT, Outcome.STARTED, S.IMPORTING), (Call.IMPORT, Outcome.ACCEPTED, S.ACTIVE),
    (Call.IMPORT, Outcome.REJECTED, S.KILLED),
])
def test_transitions(call, outcome, status):
    assert after(call, outcome) is status


def test_impossible_transitions_raise():
    with pytest.raises(ValueError, match="no outcome"):
        after(Call.STAGE, Outcome.ACCEPTED)
    assert deletable(S.IMPORTING) and not deletable(S.DELETED)


# --- import request validation ------------------------------------------------------------------

SETTINGS = Settings(disk_formats=("raw", "qcow2"), container_formats=("bare", "ova"), os_types=("linux", "windows"))


def parse(body: object, content_type: str = "application/json", settings: Settings = SETTINGS) -> ImportBody:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_import_request(raw, content_type, settings)


def test_a_valid_request():
    body = parse({"method": {"name": "glance-direct"}, "disk_format": "qcow2", "os_type": "linux"},
                 "application/json; charset=utf-8")
    assert (body.method, body.disk_format, body.container_format, body.os_type) == (
        "glance-direct", "qcow2", None, "linux")


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/octet-stream", "application/xml"])
def test_a_body_that_is_not_json_is_415(content_type):
    with pytest.raises(UnsupportedMediaType) as info:
        parse({"method": {"name": "glance-direct"}}, content_type)
    assert info.value.status == 415


@pytest.mark.parametrize(("body", "field", "words"), [
    (b"{not json", "body", "not valid JSON"),
    ({}, "method", "must give method"),
    ({"method": {}}, "method.name", "must give method.name"),
    ({"method": {"name": "ftp"}}, "method.name", "glance-direct"),
    ({"method": {"name": "glance-direct"}, "disk_format": "ami"}, "disk_format", "raw, qcow2"),
    ({"method": {"name": "glance-direct"}, "os_type": "plan9"}, "os_type", "linux, windows"),
    ({"method": {"name": "glance-direct"}, "colour": "red"}, "colour", "Unknown field"),
    ({"method": {"name": "glance-direct"}, "disk_format": 7}, "disk_format", "Invalid disk_format"),
    ([], "body", "Invalid body"),
])
def test_a_bad_body_is_400_naming_the_field(body, field, words):
    with pytest.raises(BadRequest) as info:
        parse(body)
    assert info.value.status == 400 and info.value.field == field and words in info.value.message
    assert isinstance(info.value, RequestError)


def test_an_oversized_body_is_refused_before_parsing():
    with pytest.raises(BadRequest, match="larger than"):
        parse(b"{" + b" " * (65 << 10) + b"}")


def test_claims_come_from_the_body_else_the_image():
    body = parse({"method": {"name": "glance-direct"}, "disk_format": "raw"})
    image = {"disk_format": "qcow2", "container_format": "bare", "os_type": "windows", "name": "x"}
    claims = import_claims(body, image, SETTINGS, {"description": "d"})
    assert (claims.disk_format, claims.container_format, claims.os_type) == ("raw", "bare", "windows")
    assert dict(claims.properties) == {"description": "d"}


def test_require_os_type_is_met_by_the_body_or_the_image():
    strict = SETTINGS.replace(require_os_type=True)
    body = parse({"method": {"name": "glance-direct"}}, settings=strict)
    with pytest.raises(BadRequest) as info:
        import_claims(body, {}, strict)
    assert info.value.field == "os_type" and "linux, windows" in info.value.message
    assert import_claims(body, {"os_type": "linux"}, strict).os_type == "linux"
    with pytest.raises(BadRequest, match="must be one of linux, windows"):
        import_claims(body, {"os_type": "plan9"}, strict)
