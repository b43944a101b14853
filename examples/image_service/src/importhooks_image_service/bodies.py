"""JSON request bodies: read within a size budget, nesting bounded *before* they are parsed.

Python's ``json`` module recurses once per nested array or object, so a body of 64 KiB of
``[`` raises :class:`RecursionError`. :func:`nesting_depth` measures the depth in one pass
over the bytes (brackets inside strings do not count) and :func:`parse_json` refuses a body
deeper than the ``max_json_depth`` setting with a 400 before ``json`` sees it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable
from typing import Any

from importhooks.errors import BadRequest

#: Largest JSON request body read (create, import, PATCH), in bytes.
MAX_JSON_BODY = 64 << 10
_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")
_QUOTE, _BACKSLASH = ord('"'), ord("\\")


async def read_body(chunks: AsyncIterable[bytes], limit: int = MAX_JSON_BODY) -> bytes:
    """The request body, refused (400) past ``limit`` bytes without reading further."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"The request body is larger than {limit} bytes.", field="body")
        parts.append(chunk)
    return b"".join(parts)


def nesting_depth(raw: bytes, stop_after: int) -> int:
    """The deepest nesting of arrays and objects in ``raw`` (JSON text), or ``stop_after + 1`` once past it."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPEN:
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_after:
                    return deepest
        elif byte in _CLOSE:
            depth -= 1
    return deepest


def check_depth(raw: bytes, max_depth: int) -> None:
    """400 when ``raw`` nests arrays and objects deeper than ``max_depth``."""
    if nesting_depth(raw, max_depth) > max_depth:
        raise BadRequest(f"The request body nests arrays and objects deeper than {max_depth} levels.",
                         field="body")


def parse_json(raw: bytes, max_depth: int) -> Any:
    """The JSON value of ``raw``; 400 for a body too deep or not JSON."""
    check_depth(raw, max_depth)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("The request body is not valid JSON.", field="body") from None
