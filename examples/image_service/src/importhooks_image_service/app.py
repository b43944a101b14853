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
* ``PUT /v2/images/{id}/file``: 204; the trusted upload, admin or service role only.

Every other ``/v2/`` request needs a known ``X-Auth-Token`` too (401). Every error is
``{"error": {"message", "code", "title"}}``; a kit :class:`~importhooks.errors.RequestError`
maps by its ``.status``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from importhooks.errors import BadRequest, RequestError, UnsupportedMediaType
from importhooks.server.discovery import create_headers, import_info, import_schema

from .auth import TOKEN_HEADER, TokenAuth
from .config import Principal, ServiceConfig
from .documents import base_url, error_document, image_schema, images_document, render_image, versions_document
from .errors import Unauthorized
from .service import ImageService
from .validation import json_body

log = logging.getLogger(__name__)

#: Largest JSON request body read (create, import), in bytes.
MAX_JSON_BODY = 64 << 10
_PRINCIPAL = "importhooks_principal"


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_document(status, message), status_code=status, headers=headers)


class TokenMiddleware:
    """401 for any ``/v2/`` request without a known ``X-Auth-Token``; the principal goes in the scope."""

    def __init__(self, app: ASGIApp, auth: TokenAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["path"] == "/v2" or scope["path"].startswith("/v2/")):
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


async def read_json_body(request: Request, limit: int = MAX_JSON_BODY) -> bytes:
    """The request body, refused (400) past ``limit`` bytes without reading further."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"The request body is larger than {limit} bytes.", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def _is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/json"


class Api:
    """The endpoints, bound to one :class:`ImageService`."""

    def __init__(self, service: ImageService) -> None:
        self.service = service

    # -- discovery -------------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        return JSONResponse(versions_document(base_url(str(request.base_url))), status_code=300)

    async def versions(self, request: Request) -> Response:
        return JSONResponse(versions_document(base_url(str(request.base_url))))

    async def schema_image(self, request: Request) -> Response:
        return JSONResponse(image_schema(self.service.settings))

    async def schema_import(self, request: Request) -> Response:
        return JSONResponse(import_schema(self.service.settings))

    async def info_import(self, request: Request) -> Response:
        return JSONResponse(import_info(self.service.settings, halted=self.service.is_halted()))

    # -- images ----------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        principal = principal_of(request)
        if not _is_json(request.headers.get("content-type")):
            raise UnsupportedMediaType("The request body must be JSON (Content-Type: application/json).")
        body = json_body(await read_json_body(request))
        record = self.service.create_image(principal, body)
        image_url = f"{base_url(str(request.base_url))}/v2/images/{record.id}"
        # The SDK imports only when the 201 names the method; none while halted.
        headers = {"Location": f"/v2/images/{record.id}",
                   **create_headers(image_url, halted=self.service.is_halted())}
        return JSONResponse(render_image(record), status_code=201, headers=headers)

    async def index(self, request: Request) -> Response:
        principal = principal_of(request)
        query = request.query_params
        hidden = query.get("os_hidden", "false").strip().lower()
        if hidden not in ("true", "false"):
            raise BadRequest("Invalid os_hidden: must be true or false.", field="os_hidden")
        records = self.service.list_images(principal, name=query.get("name"), status=query.get("status"),
                                           hidden=hidden == "true")
        return JSONResponse(images_document(records))

    async def show(self, request: Request) -> Response:
        record = self.service.get_image(principal_of(request), request.path_params["image_id"])
        return JSONResponse(render_image(record))

    async def delete(self, request: Request) -> Response:
        self.service.delete_image(principal_of(request), request.path_params["image_id"])
        return Response(status_code=204)

    # -- data and import -------------------------------------------------------------

    async def stage(self, request: Request) -> Response:
        try:
            await self.service.stage(principal_of(request), request.path_params["image_id"], request.stream(),
                                     request.headers)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody reads it; the image is queued again
        return Response(status_code=204)

    async def upload(self, request: Request) -> Response:
        try:
            await self.service.upload(principal_of(request), request.path_params["image_id"], request.stream(),
                                      request.headers)
        except ClientDisconnect:
            return Response(status_code=400)
        return Response(status_code=204)

    async def start_import(self, request: Request) -> Response:
        principal = principal_of(request)
        image_id = request.path_params["image_id"]
        self.service.get_image(principal, image_id)  # 404 before the body is read
        body = await read_json_body(request)
        self.service.start_import(principal, image_id, body, request.headers.get("content-type"))
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
        Route("/v2/schemas/import", api.schema_import, methods=["GET"]),
        Route("/v2/info/import", api.info_import, methods=["GET"]),
        Route("/v2/images", api.index, methods=["GET"]),
        Route("/v2/images", api.create, methods=["POST"]),
        Route("/v2/images/{image_id}", api.show, methods=["GET"]),
        Route("/v2/images/{image_id}", api.delete, methods=["DELETE"]),
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
