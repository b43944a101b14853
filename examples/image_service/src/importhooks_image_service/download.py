"""``GET /v2/images/{id}/file``: the image's data, streamed from the store, with Glance's headers.

Glance answers ``Content-Type: application/octet-stream``, ``Content-Length`` and, when the
image has a checksum, ``Content-MD5`` holding the image's ``checksum`` (its md5 in hex, not
base64 as RFC 1864 has it): ``glance image-download`` and ``openstack image save`` compare
the data they received with it. An image without data (not ``active``) is a 204, as in Glance.
The file is opened before the response starts, so a delete during the download does not cut it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import IO

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from .db import ImageRecord

CHUNK = 1 << 20


async def _chunks(data: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        while chunk := await run_in_threadpool(data.read, CHUNK):
            yield chunk
    finally:
        data.close()


def data_response(record: ImageRecord, data: IO[bytes] | None) -> Response:
    """The download's response: the data with its headers, or 204 when there is none."""
    if data is None:
        return Response(status_code=204)
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(record.size or 0)}
    if record.checksum:
        headers["Content-MD5"] = record.checksum
    return StreamingResponse(_chunks(data), headers=headers, media_type="application/octet-stream")
