"""The ``swift-local`` import method: a user's own Swift object read into staging with the user's own token.

The user stores the image in a container of their object-store account, creates the
image record, and asks for an import naming the container and the object
(:data:`REQUEST_PARAMETERS`). The service calls :func:`fetch_object` with the token the
user authenticated with and that user's storage URL, and the object is streamed into the
:class:`~importhooks.server.staging.StagingArea` as if it had been uploaded to the stage
call; the normal import then runs on it. The service's own object-store credentials are
never used, so a user can import only what their own token may read: another project's
object is refused by Swift itself (403), whatever its name.

Where the storage URL comes from is the embedder's business and must never be the request:
the object-store endpoint of the user's token (Keystone's service catalog) or an operator's
template such as ``https://swift.example/v1/AUTH_{project_id}``. A storage URL the user
could choose would turn this method into web-download without its SSRF checks.

Checked, before any request: the container name (1 to 256 bytes of UTF-8, no ``/``, no
NUL: Swift's own rules), the object name (1 to 1024 bytes, no NUL), the token (printable
ASCII, at most 8192 characters, Swift's largest header) and the storage URL (``http`` or
``https``, a host, no credentials, query or fragment). Then, within ``max_upload_bytes``
and ``max_upload_time`` (the stage call's limits, and the same 413 and 408):

* one ``GET`` of the object, no redirect followed, no proxy from the environment; a
  ``Content-Length`` over the limit is refused before a byte is read, a body that runs past
  it is stopped, and a server that trickles or stalls is cut off at ``max_upload_time``
  from the start of the request;
* the bytes are staged as stored (``Accept-Encoding: identity``, raw reads: a
  ``Content-Encoding`` the object carries is not undone), and an ordinary object's ``Etag``
  (its MD5) is checked against them;
* errors become :class:`~importhooks.errors.RequestError` with user-safe messages that
  echo neither the storage URL nor the names: 401 and 403 are :class:`ObjectNotAllowed`,
  404 is :class:`ObjectNotFound`, anything else, or no answer, :class:`ObjectStoreUnavailable`;
* on any failure nothing is left staged for the image (as with a failed stage upload).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx

from ..errors import BadRequest, RequestError, RequestTimeout
from ..settings import Settings
from .staging import StagingArea, image_key

log = logging.getLogger(__name__)

METHOD = "swift-local"
#: Swift's default ``max_container_name_length`` and ``max_object_name_length``, in UTF-8 bytes.
MAX_CONTAINER_NAME = 256
MAX_OBJECT_NAME = 1024
#: Swift's default ``max_header_size``: no longer token can reach it.
MAX_TOKEN = 8192
#: Bytes asked of the connection per read.
CHUNK_SIZE = 64 << 10

#: The method's parameters inside the import request's ``method`` object, in the shape
#: :mod:`~importhooks.server.discovery` keeps them: (JSON-schema properties, required names).
REQUEST_PARAMETERS: tuple[dict[str, Any], tuple[str, ...]] = (
    {
        "container": {"type": "string", "minLength": 1, "maxLength": MAX_CONTAINER_NAME, "pattern": "^[^/]+$",
                      "description": "The container of your object store that holds the image data."},
        "object": {"type": "string", "minLength": 1, "maxLength": MAX_OBJECT_NAME,
                   "description": "The object in that container whose data becomes the image."},
    },
    ("container", "object"),
)

_TOKEN = re.compile(r"[!-~]+")  # visible ASCII: Keystone (Fernet) and tempauth tokens alike
_HEX_ETAG = re.compile(r"[0-9a-f]{32}")


class ObjectNotAllowed(RequestError):
    """The object store refused the user's token (403 for the import call)."""

    status = 403


class ObjectNotFound(BadRequest):
    """The container or object the request names does not exist (400: the request names nothing)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="method.object")


class ObjectStoreUnavailable(RequestError):
    """The object store did not serve the object: an error, no answer, a damaged body (502)."""

    status = 502


NOT_ALLOWED = "Your object store did not accept your credentials for this object: the token is invalid or expired."
FORBIDDEN = "Your credentials do not allow reading this object from your object store."
NOT_FOUND = "Your object store has no such container or object."
UNAVAILABLE = "Your object store could not be read; try again later."
DAMAGED = "The object's data did not match its checksum in your object store; try again."


def check_container(name: object) -> str:
    """``name`` if it is a valid Swift container name; :class:`BadRequest` (field ``method.container``)."""
    return _check_name(name, "container", MAX_CONTAINER_NAME, slash=False)


def check_object(name: object) -> str:
    """``name`` if it is a valid Swift object name; :class:`BadRequest` (field ``method.object``)."""
    return _check_name(name, "object", MAX_OBJECT_NAME, slash=True)


def _check_name(name: object, kind: str, limit: int, *, slash: bool) -> str:
    field = f"method.{kind}"
    if not isinstance(name, str) or not name:
        raise BadRequest(f"The {kind} name must be a non-empty string.", field=field)
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 form, so no Swift name
        raise BadRequest(f"The {kind} name is not valid UTF-8.", field=field) from None
    if size > limit:
        raise BadRequest(f"The {kind} name is longer than {limit} bytes.", field=field)
    if "\x00" in name:
        raise BadRequest(f"The {kind} name must not contain NUL characters.", field=field)
    if not slash and "/" in name:
        raise BadRequest(f"The {kind} name must not contain '/'.", field=field)
    return name


def _segment(text: str) -> str:
    """One path segment quoted; '.' and '..' too, which a URL parser would otherwise resolve away."""
    quoted = quote(text, safe="")
    return quoted.replace(".", "%2E") if text in (".", "..") else quoted


def object_url(storage_url: str, container: str, obj: str) -> httpx.URL:
    """The URL of ``obj`` in ``container`` under ``storage_url``, every name byte-exact.

    :class:`ValueError` for a storage URL that is not ``http(s)://host/...`` without
    credentials, query or fragment (an embedder's mistake, not the user's).
    """
    try:
        base = httpx.URL(storage_url)
    except (httpx.InvalidURL, TypeError) as error:
        raise ValueError(f"storage URL is not a URL: {error}") from None
    if base.scheme not in ("http", "https") or not base.host:
        raise ValueError("storage URL must be http(s)://host/...")
    if base.userinfo or base.query or base.fragment:
        raise ValueError("storage URL must not have credentials, a query or a fragment")
    path = "/".join([_segment(container), *(_segment(part) for part in obj.split("/"))])
    return base.copy_with(raw_path=base.raw_path.rstrip(b"/") + b"/" + path.encode("ascii"))


def _check_token(token: object) -> str:
    if not isinstance(token, str) or len(token) > MAX_TOKEN or not _TOKEN.fullmatch(token):
        raise ObjectNotAllowed(NOT_ALLOWED)
    return token


def _refusal(status: int) -> RequestError:
    if status == 401:
        return ObjectNotAllowed(NOT_ALLOWED)
    if status == 403:
        return ObjectNotAllowed(FORBIDDEN)
    if status == 404:
        return ObjectNotFound(NOT_FOUND)
    if 400 <= status < 500 and status not in (408, 429):
        return BadRequest(f"Your object store refused to read this object (HTTP {status}).", field="method")
    return ObjectStoreUnavailable(UNAVAILABLE)


def _declared_size(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None or not value.isdigit():
        return None  # h11 refused a malformed one already; chunked bodies have none
    return int(value)


def _expected_md5(response: httpx.Response) -> str | None:
    """The MD5 an ordinary object's Etag is; None for a manifest (large object), whose Etag is not."""
    etag = response.headers.get("Etag", "")
    if "X-Object-Manifest" in response.headers or "X-Static-Large-Object" in response.headers:
        return None
    return etag if _HEX_ETAG.fullmatch(etag) else None


async def _body(response: httpx.Response, expected_md5: str | None) -> AsyncIterator[bytes]:
    digest = hashlib.md5(usedforsecurity=False) if expected_md5 else None
    async for chunk in response.aiter_raw(CHUNK_SIZE):
        if digest is not None:
            digest.update(chunk)
        yield chunk
    if digest is not None and digest.hexdigest() != expected_md5:
        log.warning("swift-local: object body does not match its Etag (%s)", response.url)
        raise ObjectStoreUnavailable(DAMAGED)  # raised inside the staging loop, which removes the partial file


def _client(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(follow_redirects=False, trust_env=False,
                             timeout=httpx.Timeout(settings.max_upload_time))


async def fetch_object(storage_url: str, token: str, container: str, obj: str, staging: StagingArea,
                       image_id: str, settings: Settings, *, client: httpx.AsyncClient | None = None) -> int:
    """Stage ``obj`` of ``container`` as the data of ``image_id``, read with the user's ``token``; the bytes staged.

    ``storage_url`` is the user's own (see the module doc for where it must come from).
    ``client`` is an :class:`httpx.AsyncClient` of the embedder's (TLS settings, connection
    reuse), else one is made for the call; redirects are never followed either way.
    Raises :class:`BadRequest` for bad names, :class:`ObjectNotAllowed`,
    :class:`ObjectNotFound`, :class:`ObjectStoreUnavailable`,
    :class:`~importhooks.errors.PayloadTooLarge` (413) or
    :class:`~importhooks.errors.RequestTimeout` (408); nothing is staged for the image then.
    """
    key = image_key(image_id)  # a bad image id is refused before anything else
    try:
        return await _fetch(storage_url, token, container, obj, staging, key, settings, client)
    except BaseException:
        staging.discard(key)  # like a failed stage upload: nothing is left staged, the image stays queued
        raise


async def _fetch(storage_url: str, token: str, container: str, obj: str, staging: StagingArea, key: str,
                 settings: Settings, client: httpx.AsyncClient | None) -> int:
    container = check_container(container)
    obj = check_object(obj)
    try:
        url = object_url(storage_url, container, obj)
    except ValueError as error:
        log.error("swift-local: unusable storage URL for image %s: %s", key, error)
        raise ObjectStoreUnavailable(UNAVAILABLE) from None
    headers = {"X-Auth-Token": _check_token(token), "Accept-Encoding": "identity"}
    limit = settings.max_upload_time
    try:
        async with asyncio.timeout(limit):
            async with _client(settings) if client is None else contextlib.nullcontext(client) as http:
                async with http.stream("GET", url, headers=headers, follow_redirects=False) as response:
                    if response.status_code != 200:
                        log.info("swift-local: object store answered %d for image %s", response.status_code, key)
                        raise _refusal(response.status_code)
                    return await staging.receive(key, _body(response, _expected_md5(response)),
                                                 declared_size=_declared_size(response))
    except (TimeoutError, httpx.TimeoutException):
        raise RequestTimeout(f"Reading the object took longer than this cloud allows ({limit:g} s).") from None
    except httpx.HTTPError as error:
        log.warning("swift-local: reading the object for image %s failed: %s", key, type(error).__name__)
        raise ObjectStoreUnavailable(UNAVAILABLE) from None


def fetch_object_sync(storage_url: str, token: str, container: str, obj: str, staging: StagingArea,
                      image_id: str, settings: Settings) -> int:
    """:func:`fetch_object` for a caller without an event loop (a worker thread, a WSGI server)."""
    return asyncio.run(fetch_object(storage_url, token, container, obj, staging, image_id, settings))
