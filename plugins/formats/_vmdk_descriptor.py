"""The VMDK descriptor text: parsing it, and what a single-file VMDK's descriptor may say.

Used by :mod:`.vmdk` for the descriptor embedded in a hosted sparse extent and, for
the operator's detail, for descriptor-only files. The text is UTF-8 (ASCII is a
subset); anything else non-ASCII is refused, because readers that decode it with
another code page see other characters. Extent file names may be any printable
Unicode that no reader can turn into a path: they are checked as written and in
their NFKC compatibility form, and characters that Windows' best-fit code-page
mapping turns into a path separator are refused.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from importhooks import FindingCode, Severity

#: Most lines, and longest line in characters, of a descriptor (real ones: about 20 lines of < 80).
DESCRIPTOR_MAX_LINES, DESCRIPTOR_MAX_LINE_LENGTH = 1000, 1024
#: Longest extent file name, in UTF-8 bytes (a file name's limit on Linux, Windows and VMFS).
EXTENT_NAME_MAX = 255
#: createType values accepted, lower case, with their usual spelling (the ``subformat`` fact).
CREATE_TYPES = {"monolithicsparse": "monolithicSparse", "streamoptimized": "streamOptimized"}
HEADER_KEYS = ("version", "encoding", "cid", "parentcid", "isnativesnapshot", "createtype")
#: ``encoding`` values under which non-ASCII text is read as it is here (VMware writes "UTF-8").
UTF8_NAMES = ("utf-8", "utf8")
ACCESS_MODES = ("RW", "RDONLY", "NOACCESS")
NO_PARENT_CID = "ffffffff"
#: Characters Windows' best-fit mapping to a legacy code page turns into '/' or '\' (yen and won
#: signs in the Japanese and Korean code pages, slash and backslash look-alikes).
SEPARATOR_LOOKALIKES = frozenset("\u00a5\u20a9\u2215\u2044\u29f5\u29f8\u2216\ufe68\uff0f\uff3c")
_NAME_PUNCTUATION = frozenset(" ._+()[]{}~,@#!&'=%-")
_EXTENT = re.compile(r'(\S+)\s+(\S+)\s+(\S+)(?:\s+"([^"]*)")?(?:\s+(\S+))?', re.ASCII)
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.]*")
_OTHER_FILE_KIND = re.compile(r"-(flat|delta|ctk|s[0-9]{3}|f[0-9]{3})\.vmdk$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: How createType must be written: oslo.utils finds it by the substring ``createtype="``.
_CREATE_TYPE_LINE = re.compile(r'createType="[^"]*"', re.IGNORECASE)


def _code(name: str, summary: str, help_text: str, severity: Severity = Severity.ERROR) -> FindingCode:
    return FindingCode(f"vmdk.{name}", summary, help_text, severity)


DESCRIPTOR_LOCATION = _code(
    "descriptor_location", "The VMDK image's descriptor is missing or not where it must be.",
    "The embedded descriptor must start at sector 1 and not be empty; a sparse extent without one is a "
    "piece of a multi-file disk (twoGbMaxExtentSparse).")
DESCRIPTOR_SYNTAX = _code(
    "descriptor_syntax", "The VMDK image's descriptor could not be parsed safely.",
    "The embedded descriptor is not text of known lines: not UTF-8, non-ASCII text declared in another "
    "encoding, unknown or repeated keys, a keyword hidden in a comment or value, control or invisible "
    "characters, too many or too long lines, or data after its end.")
CREATE_TYPE = _code(
    "create_type", "The VMDK subformat is not accepted; use monolithicSparse or streamOptimized.",
    "The descriptor's createType is missing or names a multi-file or host-device layout (monolithicFlat, "
    "twoGbMaxExtent*, vmfs*, partitionedDevice, custom ...).")
EXTENTS = _code(
    "extents", "The VMDK image must have exactly one data extent, in the image itself.",
    "The descriptor lists no extent, several, or one that is not readable. A second extent smuggled into the "
    "embedded descriptor of a sparse VMDK is how host files get attached to the disk.")
EXTENT_TYPE = _code(
    "extent_type", "The VMDK image has an extent type that is not accepted.",
    "Only SPARSE extents are accepted; FLAT, VMFS, VMFSSPARSE, VMFSRDM, VMFSRAW, ZERO, SESPARSE and others "
    "map other files or devices into the disk.")
FILE_REFERENCE = _code(
    "file_reference", "The VMDK image refers to another file.",
    "An extent file name is a path (also once Unicode compatibility forms or Windows' best-fit mapping turn "
    "look-alike characters into '/', '\\' or '.'), a protocol (json:, nbd:), names a flat, split or "
    "change-tracking file, or the descriptor has a changeTrackPath. The image must name only itself.")
CAPACITY_MISMATCH = _code(
    "capacity_mismatch", "The VMDK image's descriptor and header disagree on the disk size.",
    "The sizes of the descriptor's extents do not add up to the header's capacity: VMware sizes the disk "
    "from the extents, qemu from the header.")
PARENT = _code(
    "parent", "The VMDK image is a linked clone; only self-contained images are accepted.",
    "The descriptor has a parentFileNameHint (qemu opens it as a backing file, even from a comment) or a "
    "parentCID other than ffffffff. Consolidate the disk first.")
SUBFORMAT_MISMATCH = _code(
    "subformat_mismatch", "The VMDK image's subformat does not match its header.",
    "streamOptimized normally has deflate-compressed grains, monolithicSparse uncompressed grains and its "
    "grain directory in the header. Every reader goes by the header (qemu ignores createType in a sparse "
    "file), so this is a warning: the image was not written by a usual tool.", Severity.WARNING)


class Problem(Exception):
    """A finding that ends the parse: later structures cannot be trusted."""

    def __init__(self, code: FindingCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass
class Descriptor:
    """What the descriptor text says: header keys (lower case) and extent lines."""

    keys: dict[str, str]
    extents: list[tuple[str, str, str, str | None, str | None]]  # access, size, type, name, offset
    problems: list[tuple[FindingCode, str]]


def _invisible(line: str) -> bool:
    """A control character, or a non-ASCII character that does not print (C1 controls, format, spaces)."""
    return bool(_CONTROL.search(line)) or (not line.isascii() and not all(c.isprintable() or c == "\t"
                                                                          for c in line))


def decode(raw: bytes) -> str:
    """Descriptor bytes as text: UTF-8, which ASCII is part of (raises :class:`Problem` otherwise)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Problem(DESCRIPTOR_SYNTAX, f"not UTF-8 at byte {exc.start}") from None


def parse_descriptor(raw: bytes) -> Descriptor:
    """Parse descriptor text; every line must be understood (raises :class:`Problem` if it cannot be read)."""
    text = decode(raw)
    lines = text.split("\n")
    if len(lines) > DESCRIPTOR_MAX_LINES:
        raise Problem(DESCRIPTOR_SYNTAX, f"{len(lines)} lines, limit {DESCRIPTOR_MAX_LINES}")
    result = Descriptor({}, [], [])
    for number, full in enumerate(lines, 1):
        line = full.removesuffix("\r").strip(" \t")
        where = f"line {number} {line[:80]!a}"
        if len(line) > DESCRIPTOR_MAX_LINE_LENGTH or _invisible(line):
            raise Problem(DESCRIPTOR_SYNTAX, f"line {number}: too long, or control or invisible characters")
        if not line or line.startswith("#"):
            continue
        if line[:4].lower() == "ddb.":
            if "=" not in line:
                result.problems.append((DESCRIPTOR_SYNTAX, f"{where}: ddb line without '='"))
            continue
        if line.split(None, 1)[0].upper() in ACCESS_MODES:
            match = _EXTENT.fullmatch(line)
            if match is None:
                result.problems.append((DESCRIPTOR_SYNTAX, f"{where}: malformed extent line"))
            else:
                access, size, kind, name, offset = match.groups()
                result.extents.append((access.upper(), size, kind.upper(), name, offset))
            continue
        key, equals, value = line.partition("=")
        key = key.strip()
        if not equals or not _KEY.fullmatch(key):
            result.problems.append((DESCRIPTOR_SYNTAX, f"{where}: unrecognised line"))
        elif key.lower() == "parentfilenamehint":
            result.problems.append((PARENT, f"{where}: parentFileNameHint"))
        elif key.lower() == "changetrackpath":
            result.problems.append((FILE_REFERENCE, f"{where}: changeTrackPath"))
        elif key.lower() not in HEADER_KEYS:
            result.problems.append((DESCRIPTOR_SYNTAX, f"{where}: unknown key"))
        elif key.lower() in result.keys:
            result.problems.append((DESCRIPTOR_SYNTAX, f"{where}: repeated key"))
        elif key.lower() == "createtype" and not _CREATE_TYPE_LINE.fullmatch(line):
            result.problems.append((DESCRIPTOR_SYNTAX, f"{where}: not written createType=\"...\""))
        else:
            result.keys[key.lower()] = value.strip().strip('"')
    encoding = result.keys.get("encoding")
    if not text.isascii() and (encoding is None or encoding.lower() not in UTF8_NAMES):
        result.problems.append((DESCRIPTOR_SYNTAX, f"non-ASCII text with encoding {(encoding or '')[:32]!a}"
                                                   " (only UTF-8 is read the same by every reader)"))
    lowered = text.lower()
    if "parentfilenamehint" in lowered and not any(code is PARENT for code, _ in result.problems):
        result.problems.append((PARENT, "parentFileNameHint in a comment or value (qemu still follows it)"))
    for key in ("createtype", "parentcid"):
        if lowered.count(key) > (key in result.keys):
            result.problems.append((DESCRIPTOR_SYNTAX, f"{key!r} appears outside its header line"))
    return result


def _plain(name: str) -> bool:
    """Letters, digits, ``_`` first; then also space and ``._+()[]{}~,@#!&'=%-``; no trailing space."""
    if not (name[0].isalnum() or name[0] == "_") or name.endswith(" "):
        return False
    return all(c.isalnum() or c in _NAME_PUNCTUATION or (not c.isascii() and c.isprintable()) for c in name)


def name_problem(name: str | None) -> str | None:
    """Why an extent name is not the plain file name a single-file VMDK gives itself, or ``None``."""
    if not name:
        return "no file name"
    if len(name.encode()) > EXTENT_NAME_MAX:
        return f"name of {len(name.encode())} bytes"
    folded = unicodedata.normalize("NFKC", name)
    for form in (name, folded):
        if "/" in form or "\\" in form or ".." in form:
            return "a path"
        if ":" in form:
            return "a protocol or drive prefix"
    if SEPARATOR_LOOKALIKES.intersection(name):
        return "a character Windows maps to a path separator"
    if not folded or not _plain(name) or not _plain(folded):
        return "not a plain file name"
    if _OTHER_FILE_KIND.search(folded):
        return "the name of a flat, split, delta or change-tracking file"
    return None


def check_descriptor(descriptor: Descriptor, capacity: int, compressed: bool,
                     footer: bool) -> list[tuple[FindingCode, str]]:
    """Every problem of a parsed embedded descriptor, against its header's capacity and grain layout."""
    problems = list(descriptor.problems)
    create_type = descriptor.keys.get("createtype")
    if create_type is None or create_type.lower() not in CREATE_TYPES:
        problems.append((CREATE_TYPE, f"createType {ascii(create_type[:64]) if create_type else None}"))
    elif create_type.lower() == "streamoptimized" and not compressed:
        problems.append((SUBFORMAT_MISMATCH, "streamOptimized with uncompressed grains"))
    elif create_type.lower() == "monolithicsparse" and (compressed or footer):
        problems.append((SUBFORMAT_MISMATCH, "monolithicSparse with compressed grains or a footer"))
    parent_cid = descriptor.keys.get("parentcid", NO_PARENT_CID)
    if parent_cid.lower() != NO_PARENT_CID:
        problems.append((PARENT, f"parentCID {parent_cid[:16]!a}"))
    extents = descriptor.extents
    if len(extents) != 1:
        problems.append((EXTENTS, f"{len(extents)} extent lines: {[e[:3] for e in extents[:8]]!a}"))
    total: int | None = 0
    for number, (access, size, kind, name, offset) in enumerate(extents, 1):
        if access == "NOACCESS":
            problems.append((EXTENTS, f"extent {number}: NOACCESS"))
        if kind != "SPARSE":
            problems.append((EXTENT_TYPE, f"extent {number}: type {kind[:16]!a}"))
        elif offset is not None:
            problems.append((DESCRIPTOR_SYNTAX, f"extent {number}: SPARSE extent with an offset {offset[:24]!a}"))
        why = name_problem(name)
        if why is not None:
            problems.append((FILE_REFERENCE, f"extent {number}: {why}: {(name or '')[:80]!a}"))
        if not (size.isascii() and size.isdigit()) or len(size) > 20 or int(size) == 0:
            problems.append((DESCRIPTOR_SYNTAX, f"extent {number}: size {size[:24]!a}"))
            total = None
        elif total is not None:
            total += int(size)
    if total is not None and extents and total != capacity:
        problems.append((CAPACITY_MISMATCH, f"extents {total} sectors, header capacity {capacity}"))
    return problems


def describe_descriptor_file(raw: bytes) -> str:
    """Operator detail for a descriptor-only file: its createType and extent types, escaped."""
    try:
        descriptor = parse_descriptor(raw)
    except Problem as problem:
        return f"descriptor-only file, unparseable: {problem.detail}"
    kinds = [kind[:16] for _access, _size, kind, _name, _offset in descriptor.extents[:8]]
    create_type = descriptor.keys.get("createtype")
    return (f"descriptor-only file: createType {ascii(create_type[:64]) if create_type else None}, "
            f"{len(descriptor.extents)} extent(s) of types {kinds!a}")
