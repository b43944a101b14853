"""The member rules of a tar archive, checked one header at a time, without touching a filesystem.

Used by the ``ova`` plugin (it has no hooks of its own). :class:`TarRules` is fed
every member's header, as libarchive decoded it (PAX ``path``/``linkpath`` and GNU
long names already applied), and raises :class:`Violation` at the first member
that breaks a rule. Every name is resolved as a :class:`~pathlib.PurePosixPath`-like
list of components under a *virtual* root: nothing is looked up on, or written to,
the host. The rules are those of CPython's PEP 706 ``data`` extraction filter, and
stricter:

* absolute names and any ``..`` component (``tar.absolute_name``, ``tar.dotdot``),
  even one that would stay inside the root;
* symbolic links whose target is absolute or leaves the root once resolved through
  the archive's other symbolic links (chains, and links added later that change an
  earlier link's meaning: every link is resolved again at the end), loops, and hard
  links that do not name an earlier regular member (``tar.link_escape``);
* a member whose parent path passes through a symbolic link (``tar.through_symlink``);
* device nodes, FIFOs and sockets (``tar.special_file``);
* a name used twice (compared normalised: ``./a`` is ``a``), a member replacing a
  directory an earlier member implied, a file used as a directory
  (``tar.duplicate``); only a directory may repeat a directory. Names are also
  compared as Windows and macOS compare them (case, Unicode normal form, trailing
  dots and spaces ignored): ``VM.VMDK`` after ``vm.vmdk`` replaces it there;
* more members than ``max_members``, more bytes in total than ``max_total_size``,
  GNU sparse members (``tar.too_many_members``, ``tar.too_large``, ``tar.sparse``);
* empty, over-long or undecodable names (``tar.bad_name``);
* names Windows reads as climbing out or absolute (``..\\x``, ``.. /x``, ``\\x``,
  ``C:x``: ``tar.dotdot``, ``tar.absolute_name``); a name that is another member's once
  ``\\`` is a separator is ``tar.duplicate``;
* set-user-ID, set-group-ID and world-writable modes, and other backslashes in names
  or link targets, are warnings (``tar.mode``, ``tar.backslash``): nothing is
  extracted, so they harm nothing here, but they show how the archive was made.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from importhooks import FindingCode, Severity


def _code(name: str, summary: str, help_text: str, severity: Severity = Severity.ERROR) -> FindingCode:
    return FindingCode(f"tar.{name}", summary, help_text, severity)


ABSOLUTE_NAME = _code(
    "absolute_name", "The archive holds a file with an absolute path.",
    "A member name starting with '/' would be written outside the extraction directory by a naive tool; so "
    "would one starting with '\\' or a drive letter ('C:') on Windows.")
DOTDOT = _code(
    "dotdot", "The archive holds a file whose path contains '..'.",
    "A '..' path component climbs out of the extraction directory (also when set by a PAX 'path' record or a "
    "GNU long name, or when '\\' separates it, as on Windows). Any '..' is refused, even one that would stay "
    "inside.")
LINK_ESCAPE = _code(
    "link_escape", "The archive holds a link that points outside the archive.",
    "A symbolic link is absolute, or leaves the archive's root once resolved through the archive's other "
    "symbolic links (chains included), or loops; or a hard link does not name an earlier regular file.")
THROUGH_SYMLINK = _code(
    "through_symlink", "The archive holds a file placed through a symbolic link.",
    "A member's parent directory is a symbolic link in the archive: extracting it writes wherever the link "
    "points, a classic way around path checks.")
SPECIAL_FILE = _code(
    "special_file", "The archive holds a device node, FIFO or socket.",
    "Special files have no place in an image archive; extracting a device node gives access to host hardware.")
DUPLICATE = _code(
    "duplicate", "The archive holds two members with the same name.",
    "A later member with the name of an earlier one (compared after normalisation: './a' is 'a') replaces it "
    "on extraction, so tools disagree on what the archive holds; so does a member that replaces a directory "
    "an earlier member implied, or a file used as a directory. Names that differ only in case, Unicode normal "
    "form or trailing dots and spaces are one name on Windows and macOS. Only directories may repeat.")
TOO_MANY_MEMBERS = _code(
    "too_many_members", "The archive holds too many files.",
    "The archive has more members than the ova plugin's max_members option allows; an OVA holds a few.")
TOO_LARGE = _code(
    "too_large", "The archive's files are larger in total than this cloud accepts.",
    "The sizes declared by the member headers add up to more than the ova plugin's max_total_size option.")
SPARSE = _code(
    "sparse", "The archive holds a sparse file, which is not accepted.",
    "A GNU sparse member declares a size its data need not back (a few bytes can claim petabytes). OVA "
    "writers never make them; the ova plugin's allow_sparse option accepts them within max_total_size.")
BAD_NAME = _code(
    "bad_name", "The archive holds a file with an invalid name.",
    "A member name is empty, names the archive root without being a directory, is longer than the ova "
    "plugin's max_name_length option, or is not valid UTF-8.")
CORRUPT = _code(
    "corrupt", "The archive is damaged or is not a tar archive.",
    "libarchive could not read the archive: a truncated file, a header checksum error, a malformed PAX or "
    "GNU header, or data that is not tar at all. The detail has libarchive's message.")
MODE = _code(
    "mode", "The archive holds files with unusual permissions.",
    "Members with the set-user-ID or set-group-ID bit, or writable by everyone (symbolic links aside). "
    "Nothing is extracted with these modes; the warning shows how the archive was made.", Severity.WARNING)
BACKSLASH = _code(
    "backslash", "The archive holds a name with a backslash.",
    "A backslash in a member name or link target is a path separator on Windows ('..\\\\..\\\\x'); "
    "nothing is extracted by name here, but the archive was likely crafted.", Severity.WARNING)

CODES = (ABSOLUTE_NAME, DOTDOT, LINK_ESCAPE, THROUGH_SYMLINK, SPECIAL_FILE, DUPLICATE, TOO_MANY_MEMBERS, TOO_LARGE,
         SPARSE, BAD_NAME, CORRUPT, MODE, BACKSLASH)

#: Components processed while resolving one link, at most (bounds the cost of crafted link chains).
RESOLVE_STEPS = 4096
_SETID = 0o6000
_DRIVE = re.compile(r"[A-Za-z]:")
_WORLD_WRITABLE = 0o002


class Kind(enum.Enum):
    """What a member is, from its header."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    SPECIAL = "special"


class Violation(Exception):
    """A member broke a rule: ``code`` and an operator ``detail`` (names quoted and clipped)."""

    def __init__(self, code: FindingCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits :class:`TarRules` enforces (the ova plugin's options)."""

    max_members: int = 256
    max_total_size: int = 1 << 40
    max_link_depth: int = 40
    max_name_length: int = 1024
    allow_sparse: bool = False


def fold(name: str) -> str:
    """A name as a case-insensitive, normalising filesystem (Windows, macOS) sees it, for comparison only."""
    folded = name.casefold() if name.isascii() else unicodedata.normalize("NFC", name).casefold()
    if "\\" in folded:
        folded = "/".join(part for part in folded.replace("\\", "/").split("/") if part not in ("", "."))
    if ". " in folded or "./" in folded or " /" in folded or folded[-1:] in (".", " "):
        folded = "/".join(part.rstrip(". ") for part in folded.split("/"))
    return folded


def clip(text: object, limit: int = 120) -> str:
    """``repr`` of untrusted text, cut to about ``limit`` characters, for finding details."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "..."


class TarRules:
    """The rules, applied member by member; :meth:`finish` once after the last member.

    ``check`` (the run's deadline check) is called every 64 members and for each
    link resolved at the end. Warnings are counted in :attr:`warnings`:
    ``{code: (count, first detail)}``.
    """

    def __init__(self, limits: Limits, check: Callable[[], None] = lambda: None) -> None:
        self.limits = limits
        self._check = check
        self.count = 0
        self.total_size = 0
        self._kinds: dict[str, Kind] = {}
        self._implied: set[str] = set()
        self._symlinks: dict[str, str] = {}  # normalised name -> raw target
        self._folded: dict[str, tuple[str, Kind]] = {}  # fold(name) -> first name and kind
        self._folded_implied: dict[str, str] = {}  # fold(implied directory) -> its name
        self.warnings: dict[FindingCode, tuple[int, str]] = {}

    def _warn(self, code: FindingCode, detail: str) -> None:
        count, first = self.warnings.get(code, (0, detail))
        self.warnings[code] = (count + 1, first)

    def _split(self, raw: str, what: str) -> list[str]:
        """Components of a member name or hard link target; absolute names and '..' are violations."""
        if raw[:1] == "/":
            raise Violation(ABSOLUTE_NAME if what == "name" else LINK_ESCAPE, f"absolute {what} {clip(raw)}")
        parts = raw.split("/")
        if ".." in parts:
            raise Violation(DOTDOT if what == "name" else LINK_ESCAPE, f"'..' in {what} {clip(raw)}")
        if "" in parts or "." in parts:
            return [part for part in parts if part not in ("", ".")]
        return parts

    def add(self, raw_name: object, kind: Kind, *, size: int, mode: int, link: object = None,
            sparse: bool = False) -> str:
        """Check one member's header and return its normalised name; raise :class:`Violation` if it breaks a rule.

        The common case (a plain relative name) takes a short path: this runs once
        per member, and an archive may have thousands.
        """
        self.count = count = self.count + 1
        if not count & 63:
            self._check()
        limits = self.limits
        if count > limits.max_members:
            raise Violation(TOO_MANY_MEMBERS, f"more than {limits.max_members} members")
        if type(raw_name) is not str or not raw_name:
            raise Violation(BAD_NAME, f"member {count}: name {clip(raw_name)} is empty or not UTF-8")
        if len(raw_name) > limits.max_name_length:
            raise Violation(BAD_NAME, f"member {count}: name of {len(raw_name)} characters {clip(raw_name)}")
        if "\\" in raw_name or raw_name[1:2] == ":" or ". " in raw_name or "..." in raw_name:
            self._windows_name(raw_name)
        parts = self._split(raw_name, "name")
        name = "/".join(parts)
        if kind is Kind.SPECIAL:
            raise Violation(SPECIAL_FILE, f"{clip(raw_name)}: mode {mode:o}")
        if sparse and not limits.allow_sparse:
            raise Violation(SPARSE, f"{clip(raw_name)}: sparse, declares {size} bytes")
        if size > 0:
            self.total_size += size
            if self.total_size > limits.max_total_size:
                raise Violation(TOO_LARGE, f"{self.total_size} bytes by {clip(raw_name)}, "
                                           f"limit {limits.max_total_size}")
        if mode & (_SETID | _WORLD_WRITABLE) and kind is not Kind.SYMLINK:
            self._warn(MODE, f"{clip(raw_name)}: mode {mode & 0o7777:o}")
        if not parts:
            if kind is not Kind.DIR:
                raise Violation(BAD_NAME, f"{clip(raw_name)} names the archive root but is a {kind.value}")
            return name
        if len(parts) > 1 and name.rpartition("/")[0] not in self._implied:
            self._check_parents(parts, raw_name)
        if name in self._kinds or (kind is not Kind.DIR and name in self._implied):
            self._check_name(name, kind, raw_name)
        self._check_folded(name, kind, raw_name)
        if kind is Kind.SYMLINK:
            self._add_symlink(name, parts, link)
        elif kind is Kind.HARDLINK:
            self._check_hardlink(link, raw_name)
        self._kinds.setdefault(name, kind)
        return name

    def kind_of(self, name: str) -> Kind | None:
        """The kind of the first member named ``name`` (normalised), if any."""
        return self._kinds.get(name)

    def _windows_name(self, raw_name: str) -> None:
        """A name as Windows reads it, where '\\' separates and 'C:' is a drive: no climbing out, no drive."""
        parts = raw_name.replace("\\", "/").split("/")
        if raw_name[:1] == "\\" or _DRIVE.match(parts[0]):
            raise Violation(ABSOLUTE_NAME, f"{clip(raw_name)} is an absolute path on Windows")
        if any(part.count(".") >= 2 and not part.strip(". ") for part in parts):  # Windows trims '.. ' to '..'
            raise Violation(DOTDOT, f"'..' in name {clip(raw_name)} as Windows reads it")
        if "\\" in raw_name:
            self._warn(BACKSLASH, f"name {clip(raw_name)}")

    def _check_parents(self, parts: list[str], raw_name: str) -> None:
        prefix = ""
        for part in parts[:-1]:
            prefix = f"{prefix}/{part}" if prefix else part
            kind = self._kinds.get(prefix)
            if kind is Kind.SYMLINK:
                raise Violation(THROUGH_SYMLINK, f"{clip(raw_name)}: parent {clip(prefix)} is a symbolic link")
            if kind is not None and kind is not Kind.DIR:
                raise Violation(DUPLICATE, f"{clip(raw_name)}: parent {clip(prefix)} is a {kind.value}")
            folded = fold(prefix)
            earlier = self._folded.get(folded)
            if earlier is not None and earlier[1] is not Kind.DIR:
                raise Violation(DUPLICATE, f"{clip(raw_name)}: parent {clip(prefix)} is the {earlier[1].value} "
                                           f"{clip(earlier[0])} where names ignore case")
            self._folded_implied.setdefault(folded, prefix)
            self._implied.add(prefix)

    def _check_name(self, name: str, kind: Kind, raw_name: str) -> None:
        earlier = self._kinds.get(name)
        if earlier is not None and not (earlier is Kind.DIR and kind is Kind.DIR):
            raise Violation(DUPLICATE, f"{clip(raw_name)}: a {kind.value} after a {earlier.value} of that name")
        if kind is not Kind.DIR and name in self._implied:
            raise Violation(DUPLICATE, f"{clip(raw_name)}: a {kind.value} replaces a directory of earlier members")

    def _check_folded(self, name: str, kind: Kind, raw_name: str) -> None:
        """Two names one to Windows or macOS: only directories may share one."""
        folded = fold(name)
        earlier_name, earlier_kind = self._folded.setdefault(folded, (name, kind))
        if earlier_name != name and not (earlier_kind is Kind.DIR and kind is Kind.DIR):
            raise Violation(DUPLICATE, f"{clip(raw_name)}: the same name as the {earlier_kind.value} "
                                       f"{clip(earlier_name)} where names ignore case")
        implied = self._folded_implied.get(folded)
        if kind is not Kind.DIR and implied is not None and implied != name:
            raise Violation(DUPLICATE, f"{clip(raw_name)}: the same name as the directory {clip(implied)} "
                                       "where names ignore case")

    def _check_link_text(self, link: object, what: str) -> str:
        """A link target that is text, not empty, not too long, not escaping on Windows (backslashes warned about)."""
        if not isinstance(link, str) or not link:
            raise Violation(LINK_ESCAPE, f"{what}: target {clip(link)} empty or not UTF-8")
        if len(link) > self.limits.max_name_length:
            raise Violation(BAD_NAME, f"{what}: target of {len(link)} characters {clip(link)}")
        if "\\" in link:  # a separator on Windows: there, no '..' and no root or drive
            parts = link.replace("\\", "/").split("/")
            if link[:1] in ("\\", "/") or _DRIVE.match(parts[0]) or any(
                    part.count(".") >= 2 and not part.strip(". ") for part in parts):
                raise Violation(LINK_ESCAPE, f"{what}: target {clip(link)} leaves the archive as Windows reads it")
            self._warn(BACKSLASH, f"link target {clip(link)}")
        return link

    def _add_symlink(self, name: str, parts: list[str], link: object) -> None:
        link = self._check_link_text(link, f"symbolic link {clip(name)}")
        self._symlinks[name] = link
        self.resolve_link(name, parts)

    def resolve_link(self, name: str, parts: list[str] | None = None) -> list[str]:
        """Resolve the symbolic link ``name`` inside the virtual root; a violation if it leaves it or loops."""
        if parts is None:
            parts = name.split("/")
        target = self._symlinks[name]
        if target.startswith("/"):
            raise Violation(LINK_ESCAPE, f"symbolic link {clip(name)}: absolute target {clip(target)}")
        resolved: list[str] = []
        pending = list(reversed(parts[:-1] + target.split("/")))
        hops, steps = 1, 0  # the link itself is the first one followed
        while pending:
            steps += 1
            if steps > RESOLVE_STEPS:
                raise Violation(LINK_ESCAPE, f"symbolic link {clip(name)}: resolving takes over {RESOLVE_STEPS} steps")
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not resolved:
                    raise Violation(LINK_ESCAPE, f"symbolic link {clip(name)} -> {clip(target)} leaves the archive")
                resolved.pop()
                continue
            resolved.append(part)
            inner = self._symlinks.get("/".join(resolved))
            if inner is None:
                continue
            hops += 1
            if hops > self.limits.max_link_depth:
                raise Violation(LINK_ESCAPE, f"symbolic link {clip(name)}: more than {self.limits.max_link_depth} "
                                             "links deep, or a loop")
            if inner.startswith("/"):
                raise Violation(LINK_ESCAPE, f"symbolic link {clip(name)} resolves through an absolute link")
            resolved.pop()
            pending.extend(reversed(inner.split("/")))
        return resolved

    def _check_hardlink(self, link: object, raw_name: str) -> None:
        link = self._check_link_text(link, f"hard link {clip(raw_name)}")
        parts = self._split(link, "hard link target")
        target = "/".join(parts)
        prefix = ""
        for part in parts[:-1]:
            prefix = f"{prefix}/{part}" if prefix else part
            if self._kinds.get(prefix) is Kind.SYMLINK:
                raise Violation(LINK_ESCAPE, f"hard link {clip(raw_name)}: target passes through a symbolic link")
        if self._kinds.get(target) not in (Kind.FILE, Kind.HARDLINK):
            raise Violation(LINK_ESCAPE, f"hard link {clip(raw_name)}: target {clip(link)} is not an earlier file")

    def finish(self) -> None:
        """After the last member: resolve every symbolic link again, with every link the archive holds."""
        for name in self._symlinks:
            self._check()
            self.resolve_link(name)
