"""``web-download``: the service downloads the image from a URL the user gives, then imports it.

The request is ``{"method": {"name": "web-download", "uri": "https://..."}}``. The URL is
checked when the request is answered (:func:`precheck`: a refused URL is a 400) and again, with
every redirect, by the fetcher itself (:func:`~._fetch.fetch_to_staging`), which connects only
to the addresses it checked. See :mod:`._url_policy` for what is refused and :mod:`._fetch` for
the limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ...settings import Settings
from . import ImportMethod, MethodRequest, register
from ._fetch import DownloadFailed, fetch_to_staging
from ._url_policy import RefusedURL, check_url

__all__ = ["METHOD", "DownloadFailed", "RefusedURL", "bring", "precheck"]


def precheck(parameters: Mapping[str, Any], settings: Settings) -> None:
    """Refuse (400) a URL the fetcher would not fetch, while the import request is answered."""
    check_url(str(parameters.get("uri", "")), settings.web_download)


def bring(request: MethodRequest) -> int:
    """Download the request's ``uri`` into staging; the bytes staged."""
    return fetch_to_staging(str(request.parameters.get("uri", "")), request.image_id, request.staging,
                            request.settings, halted=request.halted)


METHOD = register(ImportMethod(
    "web-download",
    MappingProxyType({"uri": {"type": "string", "format": "uri", "minLength": 1, "maxLength": 4096,
                              "description": "URL the image data is downloaded from."}}),
    ("uri",), bring=bring, precheck=precheck,
    description="Download the image from a URL, then import it.",
))
