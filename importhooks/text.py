"""Showing untrusted text safely: in a terminal, a log line or a one-line message.

Finding details, facts, paths, image names and exception messages come from
untrusted data or users; whatever prints them (the command, an integration's log,
a server's error) passes them through :func:`escape` first.
"""

from __future__ import annotations

import unicodedata

#: Unicode categories escaped in text output: controls (C0, C1, DEL), format
#: characters (bidirectional overrides, zero-width), line and paragraph
#: separators, lone surrogates (undecodable bytes of a path), unassigned.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(char: str) -> str:
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    if unicodedata.category(char) not in _UNSAFE_CATEGORIES:
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: object) -> str:
    """Return ``str(text)`` with every control or invisible character escaped, repr-style.

    ``"\\x1b[2J"`` becomes ``"\\\\x1b[2J"``, a newline ``"\\\\n"`` and a backslash is
    doubled, so the result is one line of visible characters that cannot drive a
    terminal, and two different inputs never print the same.
    """
    return "".join(_escape_char(char) for char in str(text))
