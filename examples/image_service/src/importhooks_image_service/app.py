"""The HTTP layer: Starlette routes of the Glance v2 subset, token checks, errors as Glance shapes them.

* ``GET /`` (300) and ``GET /versions`` (200): version discovery; no token needed.
* ``GET /v2/schemas/image``: the image schema (glanceclient builds its CLI flags from it).
* ``GET /v2/schemas/import``: the import request's schema (the kit's).
* ``GET /v2/info/import``: import methods and limits (no method while halted).
* ``POST /v2/images``: create (201, ``Location`` and the import discovery headers).
* ``GET /v2/images``: the caller's project's images; ``?name=``, ``?status=``, ``?os_hidden=``.
* ``GET /v2/images/{id}``: one image (404 for an id that is not a UUID or another project's image).
* ``DELETE /v2/images/{id}``: 204; staged and stored data removed.
* ``PUT /v2/images/{id}/stage``: 204; stage data for import (503 while halted).
* ``POST /v2/images/{id}/import``: 202; the import runs in the background.
* ``PATCH /v2/images/{id}``: Glance's JSON-patch media types (:mod:`.patch`).
* ``PUT`` / ``DELETE /v2/images/{id}/tags/{tag}``: add or remove one tag.
* ``/v2/images/{id}/members`` (``GET``, ``POST``) and ``.../members/{member}`` (``GET``, ``PUT``,
  ``DELETE``): sharing (:mod:`.members`); ``GET /v2/schemas/member`` and ``/members``.
* ``GET /v2/images/{id}/file``: the data, with ``Content-MD5`` (:mod:`.download`).
* ``PUT /v2/images/{id}/file``: 204; the trusted upload, admin or service role only, checked (:mod:`.trusted`).
* ``GET /v2/schemas/images``: the schema of an image list.

Every other ``/v2/`` request needs a known ``X-Auth-Token`` too (401). Every error is
``{"error": {"message", "code", "title"}}``; a kit :class:`~importhooks.errors.RequestError`
maps by its ``.status``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from importhooks.errors import BadRequest, RequestError, UnsupportedMediaType
from importhooks.server.discovery import create_headers, import_info, import_schema
from importhooks.server.validation import parse_import_request

from .auth import TOKEN_HEADER, TokenAuth
from .bodies import check_depth, parse_json, read_body
from .config import Principal, ServiceConfig
from .documents import (
    VISIBILITIES,
    base_url,
    error_document,
    image_schema,
    images_document,
    images_schema,
    render_image,
    versions_document,
)
from .download import data_response
from .errors import Unauthorized, UploadCutOff
from .members import MEMBER_STATUSES, member_document, member_schema, members_schema
from .patch import media_type
from .service import ImageService

log = logging.getLogger(__name__)

_PRINCIPAL = "importhooks_principal"


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_document(status, message), status_code=status, headers=headers)


def _versioned(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


class TokenMiddleware:
    """401 for any ``/v2/`` request without a known ``X-Auth-Token``; the principal goes in the scope.

    A path outside ``/v2/`` (but ``/`` and ``/versions``) is answered 300 with the version
    document, as Glance's version negotiation does: ``openstack --os-endpoint URL`` (no ``/v2``)
    gets the same answer as from Glance, and works, as with Glance, with ``--os-endpoint URL/v2``.
    """

    def __init__(self, app: ASGIApp, auth: TokenAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in ("/", "/versions") and not _versioned(scope["path"]):
            # Glance's version negotiation: a path naming no API version gets the version choices.
            base = base_url(str(Request(scope).base_url))
            await JSONResponse(versions_document(base), status_code=300)(scope, receive, send)
            return
        if scope["type"] == "http" and _versioned(scope["path"]):
            try:
                scope[_PRINCIPAL] = self.auth.authenticate(Headers(scope=scope).get(TOKEN_HEADER))
            except Unauthorized as exc:
                await error_response(exc.status, exc.message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def principal_of(request: Request) -> Principal:
    principal = request.scope.get(_PRINCIPAL)
    if not isinstance(principal, Principal):  # a route outside /v2/ asked for it: a bug
        raise Unauthorized("This call needs an X-Auth-Token header.")
    return principal


def _is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/json"


def require_octet_stream(request: Request) -> None:
    """415 for image data sent as anything but ``application/octet-stream``, or untyped (as Glance)."""
    content_type = request.headers.get("content-type") or ""
    if content_type.split(";", 1)[0].strip().lower() != "application/octet-stream":
        raise UnsupportedMediaType("Image data must be sent as application/octet-stream.")


class Api:
    """The endpoints, bound to one :class:`ImageService`."""

    def __init__(self, service: ImageService) -> None:
        self.service = service
        self.max_depth = service.config.max_json_depth

    # -- discovery -------------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        return JSONResponse(versions_document(base_url(str(request.base_url))), status_code=300)

    async def versions(self, request: Request) -> Response:
        return JSONResponse(versions_document(base_url(str(request.base_url))))

    async def schema_image(self, request: Request) -> Response:
        return JSONResponse(image_schema(self.service.settings))

    async def schema_images(self, request: Request) -> Response:
        return JSONResponse(images_schema(self.service.settings))

    async def schema_import(self, request: Request) -> Response:
        return JSONResponse(import_schema(self.service.settings, self.service.import_methods))

    async def info_import(self, request: Request) -> Response:
        return JSONResponse(import_info(self.service.settings, self.service.import_methods,
                                        halted=self.service.is_halted()))

    # -- images ----------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        principal = principal_of(request)
        if not _is_json(request.headers.get("content-type")):
            raise UnsupportedMediaType("The request body must be JSON (Content-Type: application/json).")
        body: Any = parse_json(await read_body(request.stream()), self.max_depth)
        record = self.service.create_image(principal, body)
        image_url = f"{base_url(str(request.base_url))}/v2/images/{record.id}"
        # The SDK imports only when the 201 names the method; none while halted.
        headers = {"Location": f"/v2/images/{record.id}",
                   **create_headers(image_url, self.service.import_methods, halted=self.service.is_halted())}
        return JSONResponse(render_image(record), status_code=201, headers=headers)

    async def index(self, request: Request) -> Response:
        principal = principal_of(request)
        query = request.query_params
        hidden = query.get("os_hidden", "false").strip().lower()
        if hidden not in ("true", "false"):
            raise BadRequest("Invalid os_hidden: must be true or false.", field="os_hidden")
        member_status = query.get("member_status", "accepted")
        if member_status not in (*MEMBER_STATUSES, "all"):
            raise BadRequest(f"Invalid member_status: must be one of {', '.join(MEMBER_STATUSES)}, all.",
                             field="member_status")
        visibility = query.get("visibility")
        if visibility is not None and visibility not in (*VISIBILITIES, "all"):
            raise BadRequest(f"Invalid visibility: must be one of {', '.join(VISIBILITIES)}, all.",
                             field="visibility")
        records = self.service.list_images(principal, visibility=visibility, name=query.get("name"),
                                           status=query.get("status"), hidden=hidden == "true",
                                           member_status=member_status)
        return JSONResponse(images_document(records))

    async def show(self, request: Request) -> Response:
        record = self.service.get_image(principal_of(request), request.path_params["image_id"])
        return JSONResponse(render_image(record))

    async def update(self, request: Request) -> Response:
        principal = principal_of(request)
        kind = media_type(request.headers.get("content-type"))
        self.service.get_image(principal, request.path_params["image_id"])  # 404 before the body is read
        body: Any = parse_json(await read_body(request.stream()), self.max_depth)
        record = self.service.update_image(principal, request.path_params["image_id"], body, kind)
        return JSONResponse(render_image(record))

    async def add_tag(self, request: Request) -> Response:
        self.service.set_tag(principal_of(request), request.path_params["image_id"], request.path_params["tag"],
                             present=True)
        return Response(status_code=204)

    async def delete_tag(self, request: Request) -> Response:
        self.service.set_tag(principal_of(request), request.path_params["image_id"], request.path_params["tag"],
                             present=False)
        return Response(status_code=204)

    # -- members -----------------------------------------------------------------------

    async def schema_member(self, request: Request) -> Response:
        return JSONResponse(member_schema())

    async def schema_members(self, request: Request) -> Response:
        return JSONResponse(members_schema())

    async def _json(self, request: Request) -> Any:
        if not _is_json(request.headers.get("content-type")):
            raise UnsupportedMediaType("The request body must be JSON (Content-Type: application/json).")
        return parse_json(await read_body(request.stream()), self.max_depth)

    async def add_member(self, request: Request) -> Response:
        principal = principal_of(request)
        self.service.get_image(principal, request.path_params["image_id"])  # 404 before the body is read
        member = self.service.add_member(principal, request.path_params["image_id"], await self._json(request))
        return JSONResponse(member_document(member))

    async def members(self, request: Request) -> Response:
        members = self.service.list_members(principal_of(request), request.path_params["image_id"])
        return JSONResponse({"members": [member_document(member) for member in members],
                             "schema": "/v2/schemas/members"})

    async def member(self, request: Request) -> Response:
        member = self.service.get_member(principal_of(request), request.path_params["image_id"],
                                         request.path_params["member_id"])
        return JSONResponse(member_document(member))

    async def update_member(self, request: Request) -> Response:
        principal = principal_of(request)
        self.service.get_image(principal, request.path_params["image_id"])
        member = self.service.update_member(principal, request.path_params["image_id"],
                                            request.path_params["member_id"], await self._json(request))
        return JSONResponse(member_document(member))

    async def delete_member(self, request: Request) -> Response:
        self.service.delete_member(principal_of(request), request.path_params["image_id"],
                                   request.path_params["member_id"])
        return Response(status_code=204)

    async def download(self, request: Request) -> Response:
        record, data = self.service.open_data(principal_of(request), request.path_params["image_id"])
        return data_response(record, data)

    async def delete(self, request: Request) -> Response:
        self.service.delete_image(principal_of(request), request.path_params["image_id"])
        return Response(status_code=204)

    # -- data and import -------------------------------------------------------------

    async def stage(self, request: Request) -> Response:
        require_octet_stream(request)
        try:
            await self.service.stage(principal_of(request), request.path_params["image_id"], request.stream(),
                                     request.headers)
        except UploadCutOff as exc:  # close the connection: uvicorn would read the rest of the body otherwise
            return error_response(exc.status, exc.message, {"Connection": "close"})
        except ClientDisconnect:
            return Response(status_code=400)  # nobody reads it; the image is queued again
        return Response(status_code=204)

    async def upload(self, request: Request) -> Response:
        require_octet_stream(request)
        try:
            await self.service.upload(principal_of(request), request.path_params["image_id"], request.stream(),
                                      request.headers)
        except UploadCutOff as exc:
            return error_response(exc.status, exc.message, {"Connection": "close"})
        except ClientDisconnect:
            return Response(status_code=400)
        return Response(status_code=204)

    async def start_import(self, request: Request) -> Response:
        principal = principal_of(request)
        image_id = request.path_params["image_id"]
        self.service.get_image(principal, image_id)  # 404 before the body is read
        body = await read_body(request.stream())
        check_depth(body, self.max_depth)
        content_type = request.headers.get("content-type")
        # Validation with the method's precheck (a DNS lookup for web-download) off the event loop.
        await run_in_threadpool(parse_import_request, body, content_type, self.service.settings,
                                self.service.import_methods)
        # The caller's own token, for a method that reads their storage with it (swift-local); never logged.
        credentials = {"token": request.headers.get(TOKEN_HEADER, "")}
        self.service.start_import(principal, image_id, body, content_type, credentials)
        return Response(status_code=202)


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return error_response(exc.status, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "The resource could not be found.", 405: "The method is not allowed for this resource."}
    return error_response(exc.status_code, message.get(exc.status_code, exc.detail), dict(exc.headers or {}))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "The image service failed to handle the request.")


def create_app(config: ServiceConfig, *, service: ImageService | None = None) -> Starlette:
    """The ASGI application; the service starts (sweep, runner, recovery) in the lifespan."""
    service = service or ImageService(config)
    api = Api(service)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    routes = [
        Route("/", api.root, methods=["GET"]),
        Route("/versions", api.versions, methods=["GET"]),
        Route("/v2/schemas/image", api.schema_image, methods=["GET"]),
        Route("/v2/schemas/images", api.schema_images, methods=["GET"]),
        Route("/v2/schemas/import", api.schema_import, methods=["GET"]),
        Route("/v2/info/import", api.info_import, methods=["GET"]),
        Route("/v2/images", api.index, methods=["GET"]),
        Route("/v2/images", api.create, methods=["POST"]),
        Route("/v2/images/{image_id}", api.show, methods=["GET"]),
        Route("/v2/images/{image_id}", api.update, methods=["PATCH"]),
        Route("/v2/images/{image_id}", api.delete, methods=["DELETE"]),
        Route("/v2/images/{image_id}/file", api.download, methods=["GET"]),
        Route("/v2/images/{image_id}/tags/{tag}", api.add_tag, methods=["PUT"]),
        Route("/v2/images/{image_id}/tags/{tag}", api.delete_tag, methods=["DELETE"]),
        Route("/v2/images/{image_id}/members", api.members, methods=["GET"]),
        Route("/v2/images/{image_id}/members", api.add_member, methods=["POST"]),
        Route("/v2/images/{image_id}/members/{member_id}", api.member, methods=["GET"]),
        Route("/v2/images/{image_id}/members/{member_id}", api.update_member, methods=["PUT"]),
        Route("/v2/images/{image_id}/members/{member_id}", api.delete_member, methods=["DELETE"]),
        Route("/v2/schemas/member", api.schema_member, methods=["GET"]),
        Route("/v2/schemas/members", api.schema_members, methods=["GET"]),
        Route("/v2/images/{image_id}/stage", api.stage, methods=["PUT"]),
        Route("/v2/images/{image_id}/file", api.upload, methods=["PUT"]),
        Route("/v2/images/{image_id}/import", api.start_import, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={RequestError: _request_error, HTTPException: _http_error,
                                        Exception: _server_error})
    app.add_middleware(TokenMiddleware, auth=TokenAuth(config.tokens))
    app.state.service = service
    return app
