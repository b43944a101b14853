"""Unpacks an OVA: checks every tar member, parses the OVF, extracts its one disk (``sanitize``).

When the current layer is a tar archive (``content_type``'s ``container_format``
fact) and ``ova`` is an accepted container format, the archive is read once, in
order, with libarchive through the budgeted reader (:mod:`.tar_reader`). Every
member's header goes through the rules of :mod:`.tar_rules`; the first member must
be the OVF descriptor, parsed by :mod:`.ovf`; the one disk it references is streamed
into a file the pipeline chose (``context.temp_path``), its SHA1/SHA256/SHA512
digests computed on the way; a ``.mf`` manifest is checked against them. No other
member is written anywhere, and no path is ever built from a member name. Before
libarchive, :mod:`.tar_headers` reads every header strictly, alone, and rejects
what GNU tar, CPython tarfile and libarchive could list differently; libarchive's
members must then be the ones it found, one by one. The
archive's facts are recorded on its layer (``members``, ``disk_member``,
``compressed_size``, ``uncompressed_size``, ``ratio``, ``ovf_disk_format``,
``ovf_os_type``, ``manifest``) and the disk becomes the next layer (kind
``extracted``), inspected like any upload. In that next ``inspect`` pass the
detected disk format must be the one the OVF declares (``ova.format_mismatch``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from importhooks import FindingCode, ImportContext, PluginOption, PluginOptions, Severity, hookimpl

from . import tar_headers, tar_rules
from ._tar_fields import AMBIGUOUS
from .tar_headers import HeaderLimits, Member
from .tar_rules import Kind, Limits, TarRules, Violation, clip

if TYPE_CHECKING:
    from .ovf import OvfDescriptor
    from .tar_reader import TarReader

SECTION = "ova"
EXTRACTED = "extracted"
#: Digest algorithms of OVF manifests, by their manifest spelling.
DIGESTS = {"SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
#: ``SHA256(name)= hex`` (ovftool) or ``SHA1 (name) = hex`` (VirtualBox, BSD-style).
_MANIFEST_LINE = re.compile(r"(SHA1|SHA256|SHA512) ?\((.+)\) ?= ?([0-9A-Fa-f]+)")
_HEX_LENGTH = {"sha1": 40, "sha256": 64, "sha512": 128}


def _code(name: str, summary: str, help_text: str, severity: Severity = Severity.ERROR) -> FindingCode:
    return FindingCode(f"ova.{name}", summary, help_text, severity)


NO_DESCRIPTOR = _code(
    "no_descriptor", "The OVA does not start with an OVF descriptor.",
    "The OVF specification puts the descriptor (a regular '.ovf' file at the top of the archive) first; this "
    "archive is empty or starts with another member, or its descriptor is larger than [plugin.ovf] "
    "max_descriptor_bytes.")
MULTIPLE_DISKS = _code(
    "multiple_disks", "The OVA must hold exactly one disk.",
    "The OVF descriptor lists several disks. A Glance image is one disk: export each disk as its own image.")
MISSING_MEMBER = _code(
    "missing_member", "The OVA lacks a file its OVF descriptor names.",
    "A File's ovf:href names no member of the archive, or one that is not a regular file (a link, a "
    "directory, the descriptor or manifest itself).")
SIZE_MISMATCH = _code(
    "size_mismatch", "A file in the OVA is not the size its OVF descriptor gives.",
    "The disk member's size differs from its File's ovf:size.")
UNSUPPORTED = _code(
    "unsupported", "The OVA's disk is stored in a way this cloud does not unpack.",
    "The disk's File has an ovf:compression (gzip ...): export the OVA without compression.")
FORMAT_MISMATCH = _code(
    "format_mismatch", "The disk in the OVA is not in the format its OVF descriptor gives.",
    "The format detected in the extracted disk differs from the Disk's ovf:format in the descriptor, or that "
    "format is unknown. Tools that trust the descriptor would open the disk as another format.")
MANIFEST_MISMATCH = _code(
    "manifest_mismatch", "A file in the OVA does not match the digest in its manifest.",
    "The SHA1/SHA256/SHA512 digest of the descriptor or the disk differs from the one the .mf manifest "
    "gives: the package was altered or damaged after it was made.")
MANIFEST_INVALID = _code(
    "manifest_invalid", "The OVA's manifest could not be read.",
    "The .mf manifest is larger than the ova plugin's max_manifest_bytes, not UTF-8, has a line that is not "
    "'ALGO(name)= hexdigest' with SHA1, SHA256 or SHA512, or the OVA holds two manifests.")
MULTIPLE_DESCRIPTORS = _code(
    "multiple_descriptors", "The OVA holds more than one OVF descriptor.",
    "A member other than the first has a name ending in '.ovf'. Tools that look for 'the' descriptor by its "
    "name could read another one than the one checked here.")
UNREFERENCED = _code(
    "unreferenced_member", "The OVA holds files its OVF descriptor does not name.",
    "Members other than the descriptor, the manifest, a certificate, directories and the Files the "
    "descriptor names were ignored (not extracted, not checked beyond their headers).", Severity.WARNING)
OVA_CODES = (NO_DESCRIPTOR, MULTIPLE_DISKS, MISSING_MEMBER, SIZE_MISMATCH, UNSUPPORTED, FORMAT_MISMATCH,
             MANIFEST_MISMATCH, MANIFEST_INVALID, MULTIPLE_DESCRIPTORS, UNREFERENCED)
#: Kinds of members by their tar type flag, as libarchive reports them.
_KIND_OF_TYPE = {b"0": Kind.FILE, b"\0": Kind.FILE, b"7": Kind.FILE, b"S": Kind.FILE, b"1": Kind.HARDLINK,
                 b"2": Kind.SYMLINK, b"5": Kind.DIR, b"3": Kind.SPECIAL, b"4": Kind.SPECIAL, b"6": Kind.SPECIAL}


class NotAnOva(Exception):
    """A tar archive that does not start with an OVF descriptor, under a claim other than ``ova``."""


def _limit(low: int, high: int) -> Any:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {value!r}")
        return value

    return parse


OPTIONS = PluginOptions(SECTION, (
    PluginOption("max_members", 256, "Most members an OVA may hold (tar.too_many_members).",
                 parse=_limit(1, 1 << 24)),
    PluginOption("max_total_size", 0, "Most bytes all members may declare together (tar.too_large); 0 means "
                 "the max_image_size setting.", size=True),
    PluginOption("max_link_depth", 40, "Most symbolic links followed to resolve one link, itself included "
                 "(tar.link_escape).",
                 parse=_limit(1, 1000)),
    PluginOption("max_name_length", 1024, "Longest member name or link target, in characters (tar.bad_name).",
                 parse=_limit(1, 1 << 16)),
    PluginOption("allow_sparse", False, "Accept GNU sparse members other than the disk (else tar.sparse); "
                 "their declared size still counts against max_total_size."),
    PluginOption("max_manifest_bytes", 64 << 10, "Largest .mf manifest read (ova.manifest_invalid).", size=True),
    PluginOption("max_header_bytes", 64 << 10, "Largest PAX extended header or GNU long name "
                 "(tar.header_too_large).", size=True),
    PluginOption("max_trailing_bytes", 1 << 20, "Most zero bytes after the end-of-archive marker "
                 "(tar.trailing_data).", size=True),
))


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return [*tar_rules.CODES, *tar_headers.CODES, *OVA_CODES]


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    return OPTIONS


def parse_manifest(data: bytes) -> dict[str, dict[str, str]]:
    """``{file name: {hashlib name: lower-case hex digest}}`` of an OVF manifest; :class:`Violation` if bad."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Violation(MANIFEST_INVALID, "the manifest is not UTF-8") from None
    entries: dict[str, dict[str, str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _MANIFEST_LINE.fullmatch(line.strip())
        algo = DIGESTS.get(match[1]) if match else None
        if match is None or algo is None or len(match[3]) != _HEX_LENGTH[algo]:
            raise Violation(MANIFEST_INVALID, f"manifest line {number}: {clip(line)}")
        digests = entries.setdefault(match[2], {})
        if digests.setdefault(algo, match[3].lower()) != match[3].lower():
            raise Violation(MANIFEST_INVALID, f"manifest line {number}: two {match[1]} digests of one file")
    return entries


@dataclass
class _Scan:
    """The state of one pass over an OVA."""

    context: ImportContext
    out: Path
    max_manifest_bytes: int
    rules: TarRules
    header_limits: HeaderLimits = field(default_factory=HeaderLimits)
    descriptor: OvfDescriptor | None = None
    descriptor_name: str = ""
    disk_href: str = ""
    disk_size: int | None = None
    written: int | None = None
    manifest: dict[str, dict[str, str]] | None = None
    digests: dict[str, dict[str, str]] = field(default_factory=dict)
    hrefs: frozenset[str] = frozenset()
    unreferenced: int = 0
    first_unreferenced: str = ""

    def run(self) -> None:
        from .tar_reader import TarReader  # heavy (libarchive through ctypes): loaded on first use

        rules = self.rules
        with self.context.data.open() as handle:  # first the headers alone, read strictly: see tar_headers
            members = tar_headers.scan(handle, self.header_limits, self.context.check)
        with self.context.data.open() as handle, TarReader(handle) as archive:
            for index, (raw_name, kind, size, mode, link, sparse) in enumerate(archive.headers()):
                name = rules.add(raw_name, kind, size=size, mode=mode, link=link, sparse=sparse)
                _same_member(members, index, raw_name, kind, size, link, sparse)
                if self.descriptor is None:
                    self._descriptor(archive, kind, size, name)
                elif kind is Kind.FILE and name == self.disk_href:
                    self._disk(archive, size, sparse)
                elif name[-4:].lower() == ".ovf":
                    raise Violation(MULTIPLE_DESCRIPTORS, f"{clip(name)} after {clip(self.descriptor_name)}")
                elif kind is Kind.DIR or name in self.hrefs:
                    continue
                elif kind is Kind.FILE and name[-3:].lower() == ".mf" and "/" not in name:
                    self._manifest(archive, name, size)
                elif not (name[-5:].lower() == ".cert" and "/" not in name):
                    self.unreferenced += 1
                    self.first_unreferenced = self.first_unreferenced or name
        if rules.count != len(members):
            raise Violation(AMBIGUOUS, f"libarchive lists {rules.count} members, the headers hold {len(members)}")
        rules.finish()
        self._check_references()
        self._check_manifest()

    def _descriptor(self, archive: TarReader, kind: Kind, size: int, name: str) -> None:
        from .ovf import MAX_DESCRIPTOR_BYTES, OvfError, parse_descriptor

        options = self.context.options("ovf")
        limit = options.get("max_descriptor_bytes", MAX_DESCRIPTOR_BYTES)
        if kind is not Kind.FILE or "/" in name or not name.lower().endswith(".ovf"):
            if self.context.claims.container_format != "ova":
                raise NotAnOva
            raise Violation(NO_DESCRIPTOR, f"first member is a {kind.value} named {clip(name)}")
        if size > limit:
            raise Violation(NO_DESCRIPTOR, f"descriptor of {size} bytes, limit {limit}")
        data = archive.read(size)
        kwargs = {key: options[key] for key in ("max_files", "max_disks") if key in options}
        try:
            descriptor = parse_descriptor(data, max_bytes=limit, **kwargs)
        except OvfError as exc:  # the ovf plugin declares its codes; without it, name them in the detail
            ovf_code = exc.code if "ovf" in self.context.enabled_plugins else NO_DESCRIPTOR
            raise Violation(ovf_code, f"{exc.code.code}: {exc.detail}") from None
        if len(descriptor.disks) != 1:
            raise Violation(MULTIPLE_DISKS, f"{len(descriptor.disks)} disks in the descriptor")
        disk = descriptor.disks[0]
        disk_file = next(f for f in descriptor.files if f.id == disk.file_ref)
        if disk_file.compression not in (None, "identity"):
            raise Violation(UNSUPPORTED, f"disk file compression {clip(disk_file.compression)}")
        if disk.disk_format is None:
            raise Violation(FORMAT_MISMATCH, f"unknown ovf:format {clip(disk.format)}")
        self.descriptor, self.descriptor_name = descriptor, name
        self.disk_href, self.disk_size = disk_file.href, disk_file.size
        self.hrefs = frozenset(ref.href for ref in descriptor.files)
        self.digests[name] = {algo: hashlib.new(algo, data).hexdigest() for algo in DIGESTS.values()}

    def _disk(self, archive: TarReader, size: int, sparse: bool) -> None:
        if self.written is not None:  # a second member of that name: the rules reject it first
            raise Violation(tar_rules.DUPLICATE, f"disk member {clip(self.disk_href)} twice")
        if sparse:  # allow_sparse or not: tar readers expand a crafted sparse map differently
            raise Violation(tar_rules.SPARSE, f"disk member {clip(self.disk_href)} is sparse")
        # A manifest read already names the digests to check; one still to come may use any.
        algos = DIGESTS.values() if self.manifest is None else self.manifest.get(self.disk_href, {}).keys()
        hashers = [hashlib.new(algo) for algo in algos]
        with open(self.out, "xb") as sink:

            def write(data: memoryview) -> None:
                sink.write(data)
                for hasher in hashers:
                    hasher.update(data)

            self.written = archive.read_to(write, self.context.check)
        if self.written != size:
            from .tar_reader import ArchiveCorrupt

            raise ArchiveCorrupt(f"disk member holds {self.written} bytes, its header says {size}")
        self.digests[self.disk_href] = {hasher.name: hasher.hexdigest() for hasher in hashers}

    def _manifest(self, archive: TarReader, name: str, size: int) -> None:
        if self.manifest is not None:
            raise Violation(MANIFEST_INVALID, f"a second manifest {clip(name)}")
        if size > self.max_manifest_bytes:
            raise Violation(MANIFEST_INVALID, f"manifest of {size} bytes, limit {self.max_manifest_bytes}")
        self.manifest = parse_manifest(archive.read(size))

    def _check_references(self) -> None:
        if self.descriptor is None and self.context.claims.container_format != "ova":
            raise NotAnOva
        if self.descriptor is None:
            raise Violation(NO_DESCRIPTOR, "the archive holds no member")
        for ref in self.descriptor.files:
            kind = self.rules.kind_of(ref.href)
            if kind is None:
                raise Violation(MISSING_MEMBER, f"File {clip(ref.id)}: no member {clip(ref.href)}")
            if kind is not Kind.FILE or ref.href == self.descriptor_name:
                raise Violation(MISSING_MEMBER, f"File {clip(ref.id)}: member {clip(ref.href)} is a {kind.value}")
        if self.written is None:  # a regular member of that name was the manifest
            raise Violation(MISSING_MEMBER, f"disk member {clip(self.disk_href)} is not a disk file")
        if self.disk_size is not None and self.disk_size != self.written:
            raise Violation(SIZE_MISMATCH, f"disk member of {self.written} bytes, ovf:size {self.disk_size}")

    def _check_manifest(self) -> None:
        for name, expected in (self.manifest or {}).items():
            computed = self.digests.get(name)
            if computed is None:
                continue  # a member that is neither the descriptor nor the disk: not read, not verified
            for algo, digest in expected.items():
                if computed.get(algo) != digest:
                    raise Violation(MANIFEST_MISMATCH, f"{algo} of {clip(name)}: {computed.get(algo)} in the "
                                                       f"archive, {digest} in the manifest")

    def manifest_fact(self) -> str:
        if self.manifest is None:
            return "absent"
        return "verified" if self.disk_href in self.manifest else "disk not listed"


def _same_member(members: list[Member], index: int, name: object, kind: Kind, size: int, link: object,
                 sparse: bool) -> None:
    """libarchive's member ``index`` must be the one the strict header reading found; else the readers disagree."""
    if index >= len(members):
        raise Violation(AMBIGUOUS, f"libarchive lists a member {clip(name)} the headers do not hold")
    member = members[index]
    expected_kind = _KIND_OF_TYPE.get(member.type)
    expected_name = member.name.decode("utf-8", "surrogateescape")
    if kind is Kind.DIR:
        name, expected_name = str(name).rstrip("/"), expected_name.rstrip("/")
    if name != expected_name or kind is not expected_kind:
        raise Violation(AMBIGUOUS, f"member {index + 1}: libarchive reads a {kind.value} {clip(name)}, the header "
                                   f"a {expected_kind.value if expected_kind else '?'} {clip(expected_name)}")
    if kind is Kind.FILE and not sparse and size != member.size:
        raise Violation(AMBIGUOUS, f"member {index + 1}: libarchive reads {size} bytes, the header {member.size}")
    if kind in (Kind.SYMLINK, Kind.HARDLINK) and link != member.link.decode("utf-8", "surrogateescape"):
        raise Violation(AMBIGUOUS, f"member {index + 1}: libarchive reads a link to {clip(link)}, the header to "
                                   f"{clip(member.link)}")


def _limits(context: ImportContext) -> Limits:
    options = context.options(SECTION)
    total = options.get("max_total_size", 0) or context.settings.max_image_size
    return Limits(max_members=options.get("max_members", 256), max_total_size=total,
                  max_link_depth=options.get("max_link_depth", 40),
                  max_name_length=options.get("max_name_length", 1024),
                  allow_sparse=options.get("allow_sparse", False))


def _report_warnings(context: ImportContext, scan: _Scan) -> None:
    for code, (count, first) in scan.rules.warnings.items():
        context.report(code, detail=f"{count} member(s), first: {first}")
    if scan.unreferenced:
        context.report(UNREFERENCED, detail=f"{scan.unreferenced} member(s), first: {clip(scan.first_unreferenced)}")


@hookimpl
def importhooks_sanitize(context: ImportContext) -> None:
    """Unpack the one disk of an OVA into a pipeline-chosen file and make it the data."""
    if context.facts.get("container_format") != "tar" or "ova" not in context.settings.container_formats:
        return
    if any("ovf_disk_format" in layer.facts for layer in context.layers):
        return  # an archive inside an OVA's disk stays packed: content_type rejects it in finalize
    out = context.temp_path(".raw")
    max_manifest = int(context.options(SECTION).get("max_manifest_bytes", 64 << 10))
    options = context.options(SECTION)
    limits = _limits(context)
    header_limits = HeaderLimits(max_members=limits.max_members, allow_sparse=limits.allow_sparse,
                                 max_header_bytes=options.get("max_header_bytes", 64 << 10),
                                 max_trailing_bytes=options.get("max_trailing_bytes", 1 << 20))
    scan = _Scan(context, out, max_manifest, TarRules(limits, context.check), header_limits)
    from .tar_reader import ArchiveCorrupt

    try:
        scan.run()
    except NotAnOva:  # a tar archive under another claim: content_type says it is a tar nobody unpacks
        out.unlink(missing_ok=True)
        return
    except (Violation, ArchiveCorrupt) as exc:
        out.unlink(missing_ok=True)
        _report_warnings(context, scan)
        code = exc.code if isinstance(exc, Violation) else tar_rules.CORRUPT
        context.reject(code, detail=exc.detail)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    _report_warnings(context, scan)
    written = scan.written or 0
    assert scan.descriptor is not None
    context.facts.update({
        "members": scan.rules.count,
        "disk_member": scan.disk_href,
        "compressed_size": context.data.size,
        "uncompressed_size": written,
        "ratio": round(written / context.data.size, 4) if context.data.size else 0.0,
        "ovf_disk_format": scan.descriptor.disks[0].disk_format,
        "ovf_os_type": scan.descriptor.os_type,
        "manifest": scan.manifest_fact(),
    })
    context.replace_data(out, kind=EXTRACTED)


@hookimpl
def importhooks_inspect(context: ImportContext) -> None:
    """On the extracted disk: the detected format must be the one the OVF declared.

    ``disk_format`` (``tryfirst``) has named the format by the time this runs.
    """
    parent = context.data.parent
    if parent is None or context.data.kind != EXTRACTED or "ovf_disk_format" not in parent.facts:
        return
    if context.facts.get("container_format", "bare") != "bare":
        return  # not a disk at all: content_type rejects it as a container nobody unpacked
    declared, detected = parent.facts["ovf_disk_format"], context.facts.get("disk_format")
    if detected != declared:  # both from fixed lists (disk_format's names, ovf's URI table): safe to show
        message = f"The disk in the OVA is {detected}, not {declared} as its OVF descriptor says." if detected else None
        context.report(FORMAT_MISMATCH, message, detail=f"ovf:format {declared!r}, detected {detected!r}")
