"""The service's own refusals, beside the kit's: each a :class:`importhooks.errors.RequestError` with its status.

The kit's request errors (400, 408, 409, 413, 415, 503) and these share one error response
(:func:`importhooks_image_service.documents.error_document`), chosen by ``.status`` alone.
"""

from __future__ import annotations

from importhooks.errors import RequestError


class Unauthorized(RequestError):
    """No token, or one the service does not know (401)."""

    status = 401


class Forbidden(RequestError):
    """The caller may not do this (403): a reserved or protected property, the trusted path, a protected image."""

    status = 403


class NotFound(RequestError):
    """No such image for this caller (404): unknown, another project's, deleted, or not a UUID."""

    status = 404


class Conflict(RequestError):
    """The request conflicts with the image's state in a way the status machine does not cover (409)."""

    status = 409


class StorageFull(RequestError):
    """The filesystem of the staging area or the store is full (413, as Glance answers ``StorageFull``)."""

    status = 413


class DatabaseUnavailable(RequestError):
    """The image records cannot be written now, e.g. their filesystem is full (503; the service goes on)."""

    status = 503


class UploadCutOff(NotFound):
    """The image was deleted during its upload (404); the answer closes the connection, the rest goes unread."""
