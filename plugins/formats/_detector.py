"""Driving oslo.utils' format inspectors over one stream, and the raw-disk layout helpers.

oslo.utils' ``InspectWrapper`` feeds every inspector each chunk and drops those that
raise; :class:`Detector` does the same with the same inspector classes, and mends
two of the wrapper's gaps that untrusted data reaches:

* after the stream, ``InspectWrapper.formats`` still asks the inspectors that raised
  whether they match, so a header that made its inspector fail half-way can be
  taken as that format (``vhdxfile`` followed by garbage was accepted as VHDX);
  here such an inspector is *broken*, which the caller turns into a finding;
* ``format_match`` itself can raise (the VMDK inspector on text with a non-ASCII
  byte), which ``InspectWrapper.formats`` lets escape; here it means "no match".

It also keeps the last sector of the stream (a fixed VHD's footer) and stops feeding
inspectors that have seen enough to know they do not match.

:func:`qemu_probes_vmdk` is qemu's own test for a VMDK (block/vmdk.c, ``vmdk_probe``):
oslo.utils takes any file whose first 512 bytes are printable text and that contains
``createType="`` within its first MiB for a VMDK descriptor, qemu only a file whose
first line that is neither a comment nor blank is ``version=1`` to ``3``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from oslo_utils.imageutils import format_inspector as fi

SECTOR = 512
#: Leading bytes of the formats oslo.utils knows, to tell "damaged X" from "raw".
MAGICS = {
    b"QFI\xfb": "qcow2",
    b"KDMV": "vmdk",
    b"COWD": "vmdk",  # VMware 3 sparse extent: qemu probes and opens it as vmdk, oslo.utils does not know it
    b"conectix": "vhd",
    b"vhdxfile": "vhdx",
    b"QED\x00": "qed",
    b"LUKS\xba\xbe": "luks",
}
VDI_SIGNATURE = (0x40, b"\x7f\x10\xda\xbe")
#: Leading bytes of formats qemu's probe recognises and oslo.utils does not know at all: a file starting
#: with them is that format to qemu, never raw (block/parallels.c, bochs.c, cloop.c probes).
QEMU_ONLY_MAGICS = {
    b"WithoutFreeSpace": "parallels",
    b"WithouFreSpacExt": "parallels",
    b"Bochs Virtual HD Image\0": "bochs",
    b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n": "cloop",
}
#: Bytes qemu reads from the start of a file to guess its format (BLOCK_PROBE_BUF_SIZE), zero-padded.
PROBE_SIZE = 512
_VMDK_VERSION_LINES = tuple(f"version={n}{end}".encode() for n in (1, 2, 3) for end in ("\n", "\r\n"))


def _matches(inspector: fi.FileInspector) -> bool:
    try:
        return bool(inspector.format_match)
    except Exception:  # noqa: BLE001 - an inspector that cannot tell does not match
        return False


class Detector:
    """Feeds chunks to every oslo.utils inspector; then says which matched and which broke."""

    def __init__(self) -> None:
        from oslo_utils.imageutils import format_inspector as fi  # heavy: loaded on first use

        self._live: dict[str, fi.FileInspector] = {name: cls() for name, cls in fi.ALL_FORMATS.items()
                                                   if name != "raw"}
        self._done: dict[str, fi.FileInspector] = {}
        self.broken: dict[str, Exception] = {}
        self.last_sector = b""

    def feed(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Pass ``chunks`` through, inspecting them on the way."""
        for chunk in chunks:
            self.last_sector = (self.last_sector + chunk)[-SECTOR:] if len(chunk) < SECTOR else chunk[-SECTOR:]
            for name, inspector in list(self._live.items()):
                try:
                    inspector.eat_chunk(chunk)
                except Exception as exc:  # noqa: BLE001 - oslo's inspectors raise anything on bad headers
                    del self._live[name]
                    if _matches(inspector):
                        self.broken[name] = exc
                    continue
                if inspector.complete and not _matches(inspector):
                    self._done[name] = self._live.pop(name)  # saw its header: it is not this format
            yield chunk
        for inspector in self._live.values():
            inspector.finish()

    def matches(self) -> dict[str, fi.FileInspector]:
        """The inspectors that matched, by format name (empty: nothing specific, i.e. raw)."""
        return {name: inspector for name, inspector in self._live.items() if _matches(inspector)}


def is_vhd_footer(sector: bytes) -> bool:
    """A VHD footer: cookie, and a one's-complement checksum over the 512 bytes that matches."""
    if len(sector) != SECTOR or not sector.startswith(b"conectix"):
        return False
    stored = int.from_bytes(sector[64:68], "big")
    total = sum(sector[:64]) + sum(sector[68:])
    return (~total & 0xFFFFFFFF) == stored


def boot_sector_filesystem(sector0: bytes) -> str | None:
    """The filesystem whose boot sector fills sector 0 (these carry an MBR-like 0x55AA), or None."""
    if sector0[3:11] == b"NTFS    ":
        return "ntfs"
    if sector0[3:11] == b"EXFAT   ":
        return "exfat"
    if sector0[82:87] == b"FAT32" or sector0[54:59] in (b"FAT12", b"FAT16", b"FAT  "):
        return "vfat"
    return None


def partition_table(head: bytes) -> str:
    """``gpt``, ``mbr`` or ``none`` for the first sectors of a raw disk."""
    if head[SECTOR : SECTOR + 8] == b"EFI PART" or head[4096 : 4096 + 8] == b"EFI PART":
        return "gpt"
    if head[510:512] == b"\x55\xaa" and boot_sector_filesystem(head[:SECTOR]) is None:
        return "mbr"
    return "none"


def qemu_probes_vmdk(head: bytes) -> bool:
    """Whether qemu's format probe calls data starting with ``head`` a VMDK (sparse magic or descriptor text).

    After ``#`` comment lines and lines of spaces (and an optional CR), the first
    line must be ``version=1``, ``2`` or ``3``: an empty line, or any other first
    line, makes qemu call the data raw.
    """
    if head.startswith((b"KDMV", b"COWD")):
        return True
    probe = head[:PROBE_SIZE].ljust(PROBE_SIZE, b"\0")
    pos = 0
    while pos < PROBE_SIZE:
        if probe[pos] == ord("#"):
            pos = probe.find(b"\n", pos)
            if pos < 0:
                return False
            pos += 1
        elif probe[pos] == ord(" "):
            while pos < PROBE_SIZE and probe[pos] == ord(" "):
                pos += 1
            if probe.startswith(b"\r", pos):
                pos += 1
            if not probe.startswith(b"\n", pos):
                return False
            pos += 1
        else:
            return probe.startswith(_VMDK_VERSION_LINES, pos)
    return False


def qemu_only_format(head: bytes) -> str | None:
    """The format qemu would probe for data starting with ``head`` that oslo.utils does not know, or None."""
    for magic, name in QEMU_ONLY_MAGICS.items():
        if head.startswith(magic):
            return name
    return None


def looks_like(head: bytes) -> str | None:
    """The format whose magic ``head`` starts with (a VMDK descriptor as qemu probes it), or None."""
    for magic, name in MAGICS.items():
        if head.startswith(magic):
            return name
    if qemu_probes_vmdk(head):
        return "vmdk"
    offset, signature = VDI_SIGNATURE
    if head[offset : offset + 4] == signature:
        return "vdi"
    return None
