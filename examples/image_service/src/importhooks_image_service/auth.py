"""Static-token authentication: ``X-Auth-Token`` names a :class:`Principal` from the configuration.

Everything under ``/v2/`` needs a known token (401 otherwise); ``GET /`` and ``GET /versions``
(version discovery, which the clients call before they send a token) need none.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from .config import Principal
from .errors import Forbidden, Unauthorized

TOKEN_HEADER = "X-Auth-Token"  # noqa: S105 - a header name, not a secret
#: Roles that may use the trusted upload path, ``PUT /v2/images/{id}/file``.
TRUSTED_UPLOAD_ROLES = ("admin", "service")


class TokenAuth:
    """Looks tokens up in the configured table, comparing in constant time."""

    def __init__(self, tokens: Mapping[str, Principal]) -> None:
        self._tokens = tuple(tokens.items())

    def authenticate(self, token: str | None) -> Principal:
        """The principal of ``token``; :class:`Unauthorized` when it is missing or unknown."""
        if not token:
            raise Unauthorized("This call needs an X-Auth-Token header.")
        found: Principal | None = None
        for known, principal in self._tokens:
            if hmac.compare_digest(known.encode(), token.encode()):
                found = principal
        if found is None:
            raise Unauthorized("The authentication token is not valid.")
        return found


def require_trusted_upload(principal: Principal) -> None:
    """:class:`Forbidden` unless ``principal`` may use the trusted upload path (``PUT /file``)."""
    if not principal.has_role(*TRUSTED_UPLOAD_ROLES):
        raise Forbidden("Uploading image data directly is reserved to the cloud's administrators and services; "
                        "use image import (stage, then import) instead.")

