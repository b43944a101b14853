"""Parses an OVF descriptor, the XML file at the head of an OVA, safely and strictly.

The ``ova`` plugin calls :func:`parse_descriptor` on the descriptor it found in the
archive; this module has no stage hooks of its own and is a plugin only to declare
its finding codes and its ``[plugin.ovf]`` options.

The XML is parsed by defusedxml with DTDs, entities and external references all
forbidden, so nothing in it is ever expanded, fetched or included. A document with
a DOCTYPE is refused and classified by what its DTD holds (``ovf.external`` for an
external DTD, entity or include, else ``ovf.entities`` for an entity declaration,
else ``ovf.dtd``). Of the rest, only the parts read are checked, strictly:

* the root: an ``Envelope`` in the OVF 1.x or 2.x namespace;
* ``References/File``: a plain member name as ``href``, unique ids and names, no
  chunked files, at most ``max_files`` of them;
* ``DiskSection/Disk``: at least one, at most ``max_disks``, each naming a File
  that exists (one File per Disk), no parent disks, a capacity in known units;
* the first ``OperatingSystemSection``'s ``osType`` (OVF's or VMware's ``vmw:osType``) or ``id``
  (the ``os_type`` plugin takes a Windows guest id there as evidence).

Attributes are read in the envelope's namespace only; vendor sections are ignored.
Text from the document appears only in :class:`OvfError` details, escaped and cut.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

    from defusedxml.common import EntitiesForbidden  # type: ignore[import-untyped]

from importhooks import FindingCode, PluginOption, PluginOptions, hookimpl
from importhooks.units import parse_size

from ._ovf_formats import disk_format_of, unit_bytes

SECTION = "ovf"
#: Largest descriptor parsed by default (real ones are a few KiB to a few 100 KiB).
MAX_DESCRIPTOR_BYTES = 1 << 20
#: Highest ``max_descriptor_bytes`` an operator may set (parsing holds ~20x in memory).
DESCRIPTOR_BYTES_LIMIT = 8 << 20
DEFAULT_MAX_FILES = 64
DEFAULT_MAX_DISKS = 16
FILES_LIMIT = 1024
DISKS_LIMIT = 256
OVF_NAMESPACES = ("http://schemas.dmtf.org/ovf/envelope/1", "http://schemas.dmtf.org/ovf/envelope/2")
XINCLUDE_NAMESPACES = ("http://www.w3.org/2001/XInclude", "http://www.w3.org/2003/XInclude")
MAX_HREF_CHARS = 255
MAX_FORMAT_CHARS = 1024
#: Characters of document text quoted in an error detail.
MAX_DETAIL_CHARS = 80
MAX_UINT64 = (1 << 64) - 1
#: Characters never in a plain member name: paths, drives, URL schemes, queries,
#: fragments and percent-escapes (a reader that decodes them sees another name).
HREF_FORBIDDEN = frozenset("/\\:%?#")

_UINT = re.compile(r"[0-9]{1,20}", re.ASCII)
#: VMware's OVF extension namespace: VMware exports put the guest OS id in its ``osType``.
VMWARE_NS = "http://www.vmware.com/schema/ovf"
_TOKEN = re.compile(r"[A-Za-z0-9_.+-]{1,64}", re.ASCII)

DTD = FindingCode(
    "ovf.dtd", "The OVF descriptor contains a document type declaration, which is not allowed.",
    "The descriptor has a DOCTYPE. OVF needs none, and DTDs are how XML attacks start; remove it.")
ENTITIES = FindingCode(
    "ovf.entities", "The OVF descriptor declares XML entities, which is not allowed.",
    "The descriptor's DTD declares entities (billion laughs, quadratic blowup). Nothing was expanded; "
    "remove the DOCTYPE.")
EXTERNAL = FindingCode(
    "ovf.external", "The OVF descriptor refers to external resources, which is not allowed.",
    "The descriptor names an external DTD or entity, or has an XInclude element: a reader that follows it "
    "would read a file or URL of the uploader's choosing. Nothing was fetched; remove the reference.")
MALFORMED = FindingCode(
    "ovf.malformed", "The OVF descriptor is not a valid OVF document.",
    "The descriptor is too large, not well-formed XML, in an unknown encoding, not an OVF 1.x/2.x Envelope, "
    "or a File/Disk attribute it needs is missing, unqualified or invalid. The detail says which.")
HREF = FindingCode(
    "ovf.href", "The OVF descriptor refers to a file outside the package.",
    "A File's ovf:href must be the plain name of a member of the OVA: no directories, '..', drive letters, "
    "URLs, percent-escapes or control characters.")
REFERENCE = FindingCode(
    "ovf.reference", "The OVF descriptor's file and disk references are inconsistent.",
    "A Disk names no File or a File that does not exist; ids or file names repeat; two Disks share a File; "
    "a Disk has a parent disk; a File is chunked; a section repeats; or there are more Files or Disks "
    "than [plugin.ovf] allows.")
CAPACITY = FindingCode(
    "ovf.capacity", "The OVF descriptor gives a disk capacity that is not valid.",
    "A Disk's ovf:capacity is not a whole number, its ovf:capacityAllocationUnits are not 'byte' or "
    "'byte * 2^N' / 'byte * 10^N', or the capacity exceeds 2^64 - 1 bytes.")
NO_DISK = FindingCode(
    "ovf.no_disk", "The OVF descriptor describes no disk.",
    "The descriptor has no DiskSection, or one without a Disk: there is nothing to import.")
AMBIGUOUS = FindingCode(
    "ovf.ambiguous", "The OVF descriptor says one thing in two different ways.",
    "OVF readers would take different values: an attribute the parser reads (href, id, size, fileRef, "
    "format, capacity ...) is repeated in another namespace on the same element; a References, File, "
    "DiskSection, Disk or OperatingSystemSection element is in the other OVF version's namespace or in none; "
    "or two OperatingSystemSections, or ovf:osType and vmw:osType, name different guests (VMware tools read "
    "vmw:osType, others the OVF attribute).")
CODES = (DTD, ENTITIES, EXTERNAL, MALFORMED, HREF, REFERENCE, CAPACITY, NO_DISK, AMBIGUOUS)
#: Elements the parser reads: a copy in another namespace is what a namespace-blind reader reads too.
READ_ELEMENTS = ("References", "File", "DiskSection", "Disk", "OperatingSystemSection")


@dataclass(frozen=True, slots=True)
class FileRef:
    """One ``<References><File>``: a member of the package."""

    id: str
    href: str  # validated: a plain member name
    size: int | None
    compression: str | None  # the ovf:compression attribute ("gzip" ...) if present


@dataclass(frozen=True, slots=True)
class DiskRef:
    """One ``<DiskSection><Disk>``: a virtual disk and the File holding it."""

    disk_id: str
    file_ref: str  # the FileRef.id it names (validated to exist)
    format: str  # the ovf:format URI
    disk_format: str | None  # the Glance disk_format that URI means, None if unknown
    capacity: int | None  # bytes: ovf:capacity x ovf:capacityAllocationUnits


@dataclass(frozen=True, slots=True)
class OvfDescriptor:
    """What :func:`parse_descriptor` read from a descriptor."""

    files: tuple[FileRef, ...]
    disks: tuple[DiskRef, ...]
    os_type: str | None  # OperatingSystemSection ovf:osType or vmw:osType, else ovf:id


class OvfError(Exception):
    """A descriptor that is refused: ``code`` is the finding code, ``detail`` for operators."""

    def __init__(self, code: FindingCode, detail: str) -> None:
        super().__init__(f"{code.code}: {detail}")
        self.code = code
        self.detail = detail


def _show(text: str | None) -> str:
    """Document text for a detail: escaped by ``repr`` and cut to MAX_DETAIL_CHARS."""
    if text is None:
        return "None"
    clipped = text[:MAX_DETAIL_CHARS]
    return f"{clipped!r}" + ("..." if len(text) > MAX_DETAIL_CHARS else "")


def parse_descriptor(data: bytes, *, max_files: int = DEFAULT_MAX_FILES, max_disks: int = DEFAULT_MAX_DISKS,
                     max_bytes: int = MAX_DESCRIPTOR_BYTES) -> OvfDescriptor:
    """Parse and check an OVF descriptor; raise :class:`OvfError` if it is refused.

    ``max_bytes`` is ``[plugin.ovf] max_descriptor_bytes``; callers should refuse a
    larger member before reading it, and this refuses it again (``ovf.malformed``).
    """
    if len(data) > max_bytes:
        raise OvfError(MALFORMED, f"the descriptor is {len(data)} bytes, over the limit of {max_bytes}")
    root = _parse_xml(data)
    ns = _envelope_namespace(root)
    xinclude = tuple(f"{{{x}}}" for x in XINCLUDE_NAMESPACES)
    elsewhere = {f"{{{other}}}{name}" if other else name for other in (*OVF_NAMESPACES, "") if other != ns
                 for name in READ_ELEMENTS}
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        if element.tag.startswith(xinclude):
            raise OvfError(EXTERNAL, f"XInclude element {_show(element.get('href'))}")
        if element.tag in elsewhere:
            raise OvfError(AMBIGUOUS, f"element {_show(element.tag)} outside the Envelope's namespace")
    files = _files(root, ns, max_files)
    disks = _disks(root, ns, files, max_disks)
    return OvfDescriptor(files, disks, _os_type(root, ns))


def _parse_xml(data: bytes) -> Element:
    import defusedxml.ElementTree as safe_etree  # type: ignore[import-untyped]  # loaded on first use
    from defusedxml.common import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden

    try:
        root: Element = safe_etree.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DTDForbidden as exc:
        if exc.sysid is not None or exc.pubid is not None:
            raise OvfError(EXTERNAL, f"the DOCTYPE names an external DTD "
                                     f"{_show(exc.sysid or exc.pubid)}") from None
        raise _classify_internal_subset(data) from None
    except EntitiesForbidden as exc:  # not raised while DTDs are forbidden; mapped all the same
        raise _entity_error(exc) from None
    except ExternalReferenceForbidden as exc:
        raise OvfError(EXTERNAL, f"external reference {_show(exc.sysid)}") from None
    except (SyntaxError, ValueError, LookupError) as exc:  # ParseError; bad, multi-byte or unknown encodings
        raise OvfError(MALFORMED, f"not well-formed XML: {_show(str(exc))}") from None
    return root


def _classify_internal_subset(data: bytes) -> OvfError:
    """Name what a DOCTYPE without an external DTD holds; parses again, entities still forbidden."""
    import defusedxml.ElementTree as safe_etree
    from defusedxml.common import EntitiesForbidden, ExternalReferenceForbidden

    try:
        safe_etree.fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except EntitiesForbidden as exc:
        return _entity_error(exc)
    except ExternalReferenceForbidden as exc:
        return OvfError(EXTERNAL, f"external reference {_show(exc.sysid)}")
    except (SyntaxError, ValueError, LookupError):
        pass
    return OvfError(DTD, "the descriptor has a DOCTYPE")


def _entity_error(exc: EntitiesForbidden) -> OvfError:
    if exc.sysid is not None or exc.pubid is not None:
        return OvfError(EXTERNAL, f"entity {_show(exc.name)} refers to {_show(exc.sysid or exc.pubid)}")
    return OvfError(ENTITIES, f"the DTD declares entity {_show(exc.name)}")


def _envelope_namespace(root: Element) -> str:
    for ns in OVF_NAMESPACES:
        if root.tag == f"{{{ns}}}Envelope":
            return ns
    raise OvfError(MALFORMED, f"the root element is {_show(str(root.tag))}, not an OVF 1.x or 2.x Envelope")


def _attr(element: Element, ns: str, name: str) -> str | None:
    """``ovf:NAME`` of ``element``; an unqualified ``NAME`` beside it is refused as ambiguous."""
    local = str(element.tag).rpartition("}")[2]
    if name in element.attrib:
        raise OvfError(MALFORMED, f"attribute {name!r} of {local} is not in the OVF namespace")
    qualified = f"{{{ns}}}{name}"
    if any(key.endswith(f"}}{name}") and key != qualified for key in element.attrib):
        raise OvfError(AMBIGUOUS, f"attribute {name!r} of {local} in two namespaces")
    return element.get(qualified)


def _section(root: Element, ns: str, name: str) -> list[Element]:
    """The children of the one Envelope-level ``name`` section (none if it is absent)."""
    found = list(root.iter(f"{{{ns}}}{name}"))
    if len(found) > 1:
        raise OvfError(REFERENCE, f"{len(found)} {name} sections; a descriptor has at most one")
    if not found:
        return []
    if not any(child is found[0] for child in root):
        raise OvfError(MALFORMED, f"the {name} section is not a child of the Envelope")
    return list(found[0])


def _uint(text: str) -> int | None:
    text = text.strip(" \t\r\n")
    if not _UINT.fullmatch(text) or int(text) > MAX_UINT64:
        return None
    return int(text)


def _check_href(href: str | None) -> str:
    if not href:
        raise OvfError(HREF, "a File has an empty or no ovf:href")
    bad = (len(href) > MAX_HREF_CHARS or href in (".", "..") or href != href.strip(" ")
           or any(c in HREF_FORBIDDEN or (unicodedata.category(c)[0] in "CZ" and c != " ") for c in href))
    if bad:
        raise OvfError(HREF, f"ovf:href {_show(href)} is not a plain member name")
    return href


def _files(root: Element, ns: str, max_files: int) -> tuple[FileRef, ...]:
    elements = [e for e in _section(root, ns, "References") if e.tag == f"{{{ns}}}File"]
    if len(elements) > max_files:
        raise OvfError(REFERENCE, f"{len(elements)} File elements, over the limit of {max_files}")
    files: list[FileRef] = []
    names: set[str] = set()
    for element in elements:
        href = _check_href(_attr(element, ns, "href"))
        file_id = _attr(element, ns, "id")
        if not file_id:
            raise OvfError(REFERENCE, f"File {_show(href)} has an empty or no ovf:id")
        if any(f.id == file_id for f in files):
            raise OvfError(REFERENCE, f"two Files have the id {_show(file_id)}")
        if href.casefold() in names:
            raise OvfError(REFERENCE, f"two Files name the member {_show(href)}")
        names.add(href.casefold())
        if _attr(element, ns, "chunkSize") is not None:
            raise OvfError(REFERENCE, f"File {_show(file_id)} is chunked (ovf:chunkSize), which is not supported")
        raw_size = _attr(element, ns, "size")
        size = None if raw_size is None else _uint(raw_size)
        if raw_size is not None and size is None:
            raise OvfError(MALFORMED, f"File {_show(file_id)} has an invalid ovf:size {_show(raw_size)}")
        compression = _attr(element, ns, "compression")
        if compression is not None and not _TOKEN.fullmatch(compression):
            raise OvfError(MALFORMED, f"File {_show(file_id)} has an invalid ovf:compression {_show(compression)}")
        files.append(FileRef(file_id, href, size, compression))
    return tuple(files)


def _disks(root: Element, ns: str, files: tuple[FileRef, ...], max_disks: int) -> tuple[DiskRef, ...]:
    elements = [e for e in _section(root, ns, "DiskSection") if e.tag == f"{{{ns}}}Disk"]
    if not elements:
        raise OvfError(NO_DISK, "no DiskSection/Disk")
    if len(elements) > max_disks:
        raise OvfError(REFERENCE, f"{len(elements)} Disk elements, over the limit of {max_disks}")
    file_ids = {f.id for f in files}
    disks: list[DiskRef] = []
    for element in elements:
        disk_id = _attr(element, ns, "diskId")
        if not disk_id:
            raise OvfError(REFERENCE, "a Disk has an empty or no ovf:diskId")
        if any(d.disk_id == disk_id for d in disks):
            raise OvfError(REFERENCE, f"two Disks have the id {_show(disk_id)}")
        file_ref = _attr(element, ns, "fileRef")
        if file_ref is None:
            raise OvfError(REFERENCE, f"Disk {_show(disk_id)} names no File (an empty disk)")
        if file_ref not in file_ids:
            raise OvfError(REFERENCE, f"Disk {_show(disk_id)} names File {_show(file_ref)}, which does not exist")
        if any(d.file_ref == file_ref for d in disks):
            raise OvfError(REFERENCE, f"two Disks name File {_show(file_ref)}")
        if _attr(element, ns, "parentRef") is not None:
            raise OvfError(REFERENCE, f"Disk {_show(disk_id)} has a parent disk (ovf:parentRef)")
        uri = _attr(element, ns, "format")
        if not uri or len(uri) > MAX_FORMAT_CHARS or any(unicodedata.category(c)[0] == "C" for c in uri):
            raise OvfError(MALFORMED, f"Disk {_show(disk_id)} has an invalid or no ovf:format {_show(uri)}")
        capacity = _capacity(element, ns, disk_id)
        disks.append(DiskRef(disk_id, file_ref, uri, disk_format_of(uri), capacity))
    return tuple(disks)


def _capacity(element: Element, ns: str, disk_id: str) -> int | None:
    raw = _attr(element, ns, "capacity")
    units = _attr(element, ns, "capacityAllocationUnits")
    if raw is None:
        return None
    value = _uint(raw)
    if value is None:
        raise OvfError(CAPACITY, f"Disk {_show(disk_id)} has ovf:capacity {_show(raw)}, not a whole number")
    unit = unit_bytes("byte" if units is None else units)
    if unit is None:
        raise OvfError(CAPACITY, f"Disk {_show(disk_id)} has unknown ovf:capacityAllocationUnits {_show(units)}")
    if value * unit > MAX_UINT64:
        raise OvfError(CAPACITY, f"Disk {_show(disk_id)} capacity {value} x {unit} bytes is over 2^64 - 1")
    return value * unit


def _os_type(root: Element, ns: str) -> str | None:
    """The guest of the OperatingSystemSections: every one, and every attribute naming it, must agree."""
    found: dict[str, str] = {}
    for section in root.iter(f"{{{ns}}}OperatingSystemSection"):
        named = {value.strip() for value in (section.get(f"{{{ns}}}osType"), section.get(f"{{{VMWARE_NS}}}osType"))
                 if value is not None}
        if len(named) > 1:
            raise OvfError(AMBIGUOUS, f"ovf:osType and vmw:osType name different guests: "
                                      f"{', '.join(_show(value) for value in sorted(named))}")
        value = next(iter(named), None) if named else section.get(f"{{{ns}}}id")
        if value is None:
            continue
        found.setdefault(value.strip().casefold(), value.strip())
        if len(found) > 1:
            raise OvfError(AMBIGUOUS, f"OperatingSystemSections name different guests: "
                                      f"{', '.join(_show(value) for value in found.values())}")
    guest = next(iter(found.values()), None)
    return guest if guest is not None and _TOKEN.fullmatch(guest) else None


def _bounded(low: int, high: int, *, size: bool = False) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if size:
            number = parse_size(value)
        elif isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        else:
            number = value
        if not low <= number <= high:
            raise ValueError(f"expected {low} to {high}, got {value!r}")
        return number

    return parse


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return list(CODES)


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    return PluginOptions(SECTION, (
        PluginOption("max_descriptor_bytes", MAX_DESCRIPTOR_BYTES,
                     "Largest OVF descriptor read and parsed (at most 8 MiB); a larger one is ovf.malformed.",
                     size=True, parse=_bounded(1 << 10, DESCRIPTOR_BYTES_LIMIT, size=True)),
        PluginOption("max_files", DEFAULT_MAX_FILES, "Most References/File elements (1 to 1024).",
                     parse=_bounded(1, FILES_LIMIT)),
        PluginOption("max_disks", DEFAULT_MAX_DISKS, "Most DiskSection/Disk elements (1 to 256).",
                     parse=_bounded(1, DISKS_LIMIT)),
    ))
