"""What the values of an OVF descriptor mean: ``ovf:format`` URIs as Glance disk formats, allocation units as bytes.

Tables and pure functions of the ``ovf`` parser (:mod:`.ovf`), kept apart so the parser
stays short; ``ovf`` re-exports them.
"""

from __future__ import annotations

import re

#: ``ovf:format`` URIs (lower case, scheme and fragment removed) -> Glance disk_format.
DISK_FORMAT_URIS = {
    "www.vmware.com/interfaces/specifications/vmdk.html": "vmdk",
    "www.vmware.com/specifications/vmdk.html": "vmdk",
    "www.vmware.com/technical-resources/interfaces/vmdk_access.html": "vmdk",
    "www.gnome.org/~markmc/qcow-image-format.html": "qcow2",
    "people.gnome.org/~markmc/qcow-image-format.html": "qcow2",
    "go.microsoft.com/fwlink/?linkid=137171": "vhd",
    "technet.microsoft.com/en-us/library/bb676673.aspx": "vhd",
    "technet.microsoft.com/en-us/virtualserver/bb676673.aspx": "vhd",
    "www.microsoft.com/en-us/download/details.aspx?id=23850": "vhd",
    "www.microsoft.com/en-us/download/details.aspx?id=34750": "vhdx",
    "forums.virtualbox.org/viewtopic.php?t=8046": "vdi",
    "www.ecma-international.org/publications/standards/ecma-119.htm": "iso",
}
#: Bare Glance disk_format names some tools write as ``ovf:format``.
BARE_DISK_FORMATS = frozenset({"raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "iso"})

_UNITS = re.compile(r"byte(?:\s*\*\s*(2|10)\s*\^\s*([0-9]{1,2}))?", re.ASCII | re.IGNORECASE)


def unit_bytes(units: str) -> int | None:
    """Bytes per unit of an ``ovf:capacityAllocationUnits`` value (``byte * 2^30``), None if unknown."""
    match = _UNITS.fullmatch(units.strip(" \t\r\n"))
    if match is None:
        return None
    if match[1] is None:
        return 1
    base, exponent = int(match[1]), int(match[2])
    if exponent > (63 if base == 2 else 19):
        return None
    return int(base**exponent)


def disk_format_of(uri: str) -> str | None:
    """The Glance disk_format an ``ovf:format`` URI means, or None if it is not a known one."""
    text = uri.strip(" \t\r\n").lower()
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            return DISK_FORMAT_URIS.get(text[len(scheme):].partition("#")[0])
    return text if text in BARE_DISK_FORMATS else None
