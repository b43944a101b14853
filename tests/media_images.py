"""Windows installation media for the os_type tests: ISO 9660, UDF, FAT and exFAT volumes holding
``bootmgr``, ``efi/microsoft/`` and ``sources/install.wim``, made by real tools.

System packages (Debian): xorriso (ISO 9660 + Joliet + Rock Ridge), genisoimage (``genisoimage -udf``:
UDF-bridge media like Windows', which xorriso cannot make), udftools and udfclient (``mkudffs``, then
``udfclient`` writes files into the UDF image without mounting it), dosfstools and mtools (``mkfs.vfat``,
then ``mmd``/``mcopy`` without mounting), exfatprogs (``mkfs.exfat`` and ``fsck.exfat``; no tool writes
exFAT files unmounted, so :func:`exfat_media` writes the directory entry sets itself and has
``fsck.exfat`` check them).
"""

from __future__ import annotations

import struct
from pathlib import Path

from .disk_builders import run
from .guest_images import MIB

# --- installation media ----------------------------------------------------------------------

#: The files of a Windows installation medium's tree that are Windows evidence, and a README.
WINDOWS_MEDIA_FILES = ("README.TXT", "bootmgr", "efi/microsoft/boot/bcd", "sources/install.wim")


def media_tree(root: Path, files: tuple[str, ...] = WINDOWS_MEDIA_FILES) -> Path:
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x" * 100)
    return root


def xorriso_media(path: Path, tree: Path, *extra: str) -> Path:
    """An ISO 9660 image with Joliet and Rock Ridge names (``xorriso -as mkisofs -J -R``)."""
    run("xorriso", "-as", "mkisofs", "-quiet", "-J", "-R", *extra, "-o", str(path), str(tree))
    return path


def udf_bridge(path: Path, tree: Path) -> Path:
    """A UDF-bridge disc as Windows media are: ISO 9660 with Joliet and Rock Ridge names and a UDF
    volume over the same files (``genisoimage -udf -J -R``)."""
    run("genisoimage", "-quiet", "-udf", "-J", "-R", "-o", str(path), str(tree))
    return path


def hide_from_iso9660(path: Path, names: tuple[str, ...]) -> Path:
    """Rename ``names`` in the ISO 9660, Joliet and Rock Ridge trees of an image (their first letter
    becomes ``q``), leaving UDF's identifiers: what ISO readers list then differs from what Windows,
    reading UDF, lists."""
    data = path.read_bytes()
    for name in names:
        upper, hidden = name.upper().encode(), b"Q" + name.upper().encode()[1:]
        for old, new in ((upper + b".;1", hidden + b".;1"), (upper + b";1", hidden + b";1"),
                         (bytes([len(upper[:8])]) + upper[:8], bytes([len(upper[:8])]) + hidden[:8])):
            data = data.replace(old, new)
        data = data.replace(name.encode("utf-16-be"), ("q" + name[1:]).encode("utf-16-be"))
        nm = b"NM" + bytes([5 + len(name), 1, 0])
        data = data.replace(nm + name.encode(), nm + b"q" + name.encode()[1:])
    path.write_bytes(data)
    return path


def udf_media(path: Path, files: tuple[str, ...] = WINDOWS_MEDIA_FILES, size: int = 8 * MIB,
              *mkudffs: str) -> Path:
    """A UDF volume (``mkudffs``, 512-byte blocks, with the ``mkudffs`` options given) with ``files``
    written by ``udfclient``, which writes to an image file without mounting it."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    run("mkudffs", "--media-type=hd", "--blocksize=512", "--uuid=0123456789abcdef", "--label=MEDIA", *mkudffs,
        str(path))
    source = media_tree(path.with_name(f"{path.name}.tree"), files)
    volume = "0123456789abcdefLinuxUDF:MEDIA:MEDIA:LinuxUDF"
    tops = sorted({name.split("/", 1)[0] for name in files})
    commands = [f"cd {volume}", f"lcd {source}", f"mput {' '.join(tops)}"]
    run("udfclient", "-W", str(path), stdin=("\n".join([*commands, "quit"]) + "\n").encode())
    return path


def fat_media(path: Path, bits: int, files: tuple[str, ...] = WINDOWS_MEDIA_FILES, size: int = 40 * MIB) -> Path:
    """A FAT``bits`` volume (``mkfs.vfat -F``) holding ``files``, as USB installation media do, written
    with ``mmd``/``mcopy`` (mtools: no mounting)."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    run("mkfs.vfat", "-F", str(bits), str(path))
    source = media_tree(path.with_name(f"{path.name}.tree"), files)
    made: set[str] = set()
    for name in files:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder not in made:
                run("mmd", "-i", str(path), f"::{folder}")
                made.add(folder)
        run("mcopy", "-i", str(path), str(source / name), f"::{name}")
    return path


def _exfat_name_hash(name: str) -> int:
    value = 0
    for char in name.upper().encode("utf-16-le"):  # ASCII names: upcase is str.upper
        value = ((0x8000 if value & 1 else 0) + (value >> 1) + char) & 0xFFFF
    return value


def exfat_entry_set(name: str, *, directory: bool, first: int = 0, length: int = 0) -> bytes:
    """An exFAT directory entry set: File (0x85), Stream Extension (0xC0), File Name entries (0xC1),
    with its SetChecksum, as the exFAT specification lays them out. A directory is one contiguous
    cluster (NoFatChain)."""
    names = [name[i : i + 15] for i in range(0, len(name), 15)]
    file = bytearray(32)
    file[0], file[1] = 0x85, 1 + len(names)
    struct.pack_into("<H", file, 4, 0x10 if directory else 0x20)
    stream = bytearray(32)
    stream[0], stream[1], stream[3] = 0xC0, (0x03 if first else 0x00), len(name)
    struct.pack_into("<HQIQ", stream, 4, _exfat_name_hash(name), length, 0, 0)
    struct.pack_into("<IQ", stream, 20, first, length)
    parts = [bytes([0xC1, 0]) + part.encode("utf-16-le").ljust(30, b"\0") for part in names]
    whole = bytearray(file + stream + b"".join(parts))
    total = 0
    for index, byte in enumerate(whole):
        if index not in (2, 3):
            total = ((0x8000 if total & 1 else 0) + (total >> 1) + byte) & 0xFFFF
    struct.pack_into("<H", whole, 2, total)
    return bytes(whole)


def exfat_media(path: Path, files: tuple[str, ...] = WINDOWS_MEDIA_FILES, size: int = 16 * MIB) -> Path:
    """An exFAT volume (``mkfs.exfat``) holding empty ``files``, their directory entry sets written by
    this code (no tool writes exFAT files without mounting): each directory gets one fresh cluster,
    marked in the allocation bitmap. ``fsck.exfat -n`` accepts the result."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    run("mkfs.exfat", str(path))
    data = bytearray(path.read_bytes())
    sector = 1 << data[108]
    cluster = sector << data[109]
    heap, root = struct.unpack_from("<I", data, 88)[0] * sector, struct.unpack_from("<I", data, 96)[0]

    def at(number: int) -> int:
        return heap + (number - 2) * cluster

    used = 0
    while data[at(root) + used] != 0:
        used += 32
    bitmap_entry = next(at(root) + o for o in range(0, used, 32) if data[at(root) + o] == 0x81)
    bitmap = at(struct.unpack_from("<I", data, bitmap_entry + 20)[0])
    folders = {"": [at(root), used]}
    for name in files:
        parts = name.split("/")
        for depth in range(1, len(parts) + 1):
            key, parent = "/".join(parts[:depth]), "/".join(parts[: depth - 1])
            if key in folders and depth < len(parts):
                continue
            first = 0
            if depth < len(parts):
                first = next(n for n in range(2, 1 << 20) if not data[bitmap + (n - 2) // 8] >> ((n - 2) % 8) & 1)
                data[bitmap + (first - 2) // 8] |= 1 << ((first - 2) % 8)
                folders[key] = [at(first), 0]
            entry_set = exfat_entry_set(parts[depth - 1], directory=depth < len(parts), first=first,
                                        length=cluster if first else 0)
            offset, position = folders[parent]
            data[offset + position : offset + position + len(entry_set)] = entry_set
            folders[parent][1] += len(entry_set)
    path.write_bytes(bytes(data))
    run("fsck.exfat", "-n", str(path))
    return path
