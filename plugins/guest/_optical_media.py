"""Windows boot and setup files on installation media: the union of what ISO 9660 and UDF readers see.

Windows installation media are UDF-bridge discs: an ISO 9660 volume (with Joliet names for Windows
and Rock Ridge names for Linux) and a UDF volume over the same bytes. Each reader lists its own
directory tree, so the ISO 9660 part can show only a README while Windows reads the UDF part.
:func:`windows_setup_files` looks up :data:`TARGETS` in every tree it finds (the primary volume's
names and their Rock Ridge ``NM`` names, each Joliet or other supplementary volume, the directories
each volume's L and M path tables list, and the UDF file set), case-insensitively as Windows does,
and returns what any tree holds.

Reads go through the layout reader (clamped to the disk, counted against its cap; the cap ending a
read raises and the disk is rejected). At most :data:`MAX_DIRECTORIES` directories and
:data:`MAX_CONTINUATIONS` Rock Ridge continuation areas are read per tree; a tree that needs more, or
a UDF volume this reader cannot walk, is a problem (``media.*``), never an exception.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Literal

from ._filesystems import Prober, _u16, _u32

#: Filesystems whose trees are searched.
OPTICAL = frozenset({"iso9660", "udf"})
#: Paths whose presence is Windows evidence: boot manager, EFI boot files, setup images.
TARGETS = (("bootmgr",), ("efi", "microsoft"), ("sources", "install.wim"), ("sources", "install.esd"))
#: The most directories read per tree (the lookups need at most four).
MAX_DIRECTORIES = 16
#: The most Rock Ridge continuation areas (``CE``) followed per directory.
MAX_CONTINUATIONS = 8
#: Volume descriptors read from byte 32768: ISO 9660's and UDF's volume recognition sequence.
MAX_DESCRIPTORS = 16
#: The largest ISO 9660 path table read (a Windows medium's is a few KiB, a Linux DVD's some 100 KiB).
MAX_PATH_TABLE = 1 << 20
#: UDF logical block sizes tried for the anchor at block 256.
UDF_BLOCK_SIZES = (2048, 512, 4096, 1024)
#: The most descriptors read from a UDF main volume descriptor sequence.
MAX_UDF_DESCRIPTORS = 64
JOLIET_ESCAPES = (b"%/@", b"%/C", b"%/E")


#: What the media readers need of the layout reader: the filesystem prober's protocol.
MediaReader = Prober


#: A directory's entries: each a set of names (lower case) and the handle of the entry's own directory.
Entries = list[tuple[frozenset[str], object]]
Lister = Callable[[object], Entries]


class TooManyDirectories(Exception):
    """A lookup needed more than :data:`MAX_DIRECTORIES` directory reads."""


def lookup(tree: str, root: object, list_dir: Lister) -> list[str]:
    """The :data:`TARGETS` found in a tree, as ``"<tree>: <path>"``, listing directories with ``list_dir``
    (each at most once); raises TooManyDirectories past :data:`MAX_DIRECTORIES`."""
    listed: dict[object, Entries] = {}

    def entries(handle: object) -> Entries:
        if handle not in listed:
            if len(listed) >= MAX_DIRECTORIES:
                raise TooManyDirectories
            listed[handle] = list_dir(handle)
        return listed[handle]

    found = []
    for target in TARGETS:
        level = [root]
        for depth, component in enumerate(target):
            matches = [child for handle in level for names, child in entries(handle) if component in names]
            if not matches:
                break
            if depth == len(target) - 1:
                found.append(f"{tree}: {'/'.join(target)}" + ("/" if target[-1] == "microsoft" else ""))
            level = [m for m in matches if m is not None]
    return found


def windows_setup_files(reader: MediaReader, base: int, size: int) -> tuple[str, ...]:
    """The :data:`TARGETS` that any ISO 9660, Joliet, Rock Ridge or UDF tree at ``base`` holds."""
    found: list[str] = []
    trees: list[tuple[str, object, Lister]] = []
    nsr = False
    for number in range(MAX_DESCRIPTORS):
        descriptor = reader.read(base + (32 << 10) + 2048 * number, 2048)
        ident = descriptor[1:6]
        if ident == b"CD001" and descriptor[0] in (1, 2):
            trees += _iso_trees(reader, base, descriptor)
        elif ident in (b"NSR02", b"NSR03"):
            nsr = True
        elif ident not in (b"CD001", b"BEA01", b"BOOT2", b"CDW02", b"TEA01"):
            break
    if nsr:
        udf = _udf_tree(reader, base, size)
        if udf is not None:
            trees.append(udf)
    for name, root, list_dir in trees:
        try:
            found += lookup(name, root, list_dir)
        except TooManyDirectories:
            reader.problem("media.directories", f"{name}: more than {MAX_DIRECTORIES} directories to read")
    # what a path table shows is named only where its volume's directory records do not show it
    seen = set(found)
    return tuple(dict.fromkeys(f for f in found if f.replace(" path table:", ":", 1) == f
                               or f.replace(" path table:", ":", 1) not in seen))


# --- ISO 9660, Joliet, Rock Ridge --------------------------------------------------------------


def _iso_trees(reader: MediaReader, base: int, descriptor: bytes) -> list[tuple[str, object, Lister]]:
    """A volume's directory-record tree, and the trees its L and M path tables give (Linux walks the
    records; a reader may find a directory through a path table instead)."""
    block = _u16(descriptor, 128)
    if block not in (512, 1024, 2048):
        reader.problem("media.iso_block_size", f"ISO 9660 volume descriptor: logical block size {block}")
        return []
    joliet = descriptor[0] == 2 and bytes(descriptor[88:91]) in JOLIET_ESCAPES
    label = "Joliet" if joliet else "ISO 9660"

    def records(extent: int, length: int) -> Entries:
        return _iso_records(reader, base, block, reader.read(base + extent * block, length), joliet)

    def list_dir(handle: object) -> Entries:
        assert isinstance(handle, tuple)
        return records(*handle)

    def records_at(extent: int) -> Entries:
        """A directory's records, its length taken from its first record (``.``)."""
        head = reader.read(base + extent * block, 34)
        return records(extent, _u32(head, 10) if len(head) == 34 and head[0] >= 34 else block)

    trees: list[tuple[str, object, Lister]] = [
        (label, (_u32(descriptor, 156 + 2), _u32(descriptor, 156 + 10)), list_dir)]
    size = _u32(descriptor, 132)
    if size > MAX_PATH_TABLE:
        reader.problem("media.directories", f"{label}: a path table of {size} bytes")
        return trees
    for kind, location in (("L", _u32(descriptor, 140)), ("M", int.from_bytes(descriptor[148:152], "big"))):
        table = _path_table(reader.read(base + location * block, size), "little" if kind == "L" else "big", joliet)
        if table:
            trees.append((f"{label} path table", 1, _path_lister(table, records_at)))
    return trees


#: A path table: directory number -> (parent number, name, extent).
PathTable = dict[int, tuple[int, str, int]]


def _path_table(data: bytes, order: Literal["little", "big"], joliet: bool) -> PathTable:
    table: PathTable = {}
    position = 0
    while position + 8 <= len(data) and data[position]:
        name_length = data[position]
        extent = int.from_bytes(data[position + 2 : position + 6], order)
        parent = int.from_bytes(data[position + 6 : position + 8], order)
        raw = bytes(data[position + 8 : position + 8 + name_length])
        table[len(table) + 1] = (parent, _iso_name(raw, joliet) if raw != b"\0" else "", extent)
        position += 8 + name_length + name_length % 2
    return table


def _path_lister(table: PathTable, records_at: Callable[[int], Entries]) -> Lister:
    """Directories from the path table (a child names its parent by number), files from each
    directory's records."""
    def list_dir(handle: object) -> Entries:
        assert isinstance(handle, int)
        children: Entries = [(frozenset({name.lower()}), number) for number, (parent, name, _extent)
                             in table.items() if parent == handle and number != handle and name]
        files = [entry for entry in records_at(table[handle][2]) if entry[1] is None] if handle in table else []
        return children + files

    return list_dir


def _iso_records(reader: MediaReader, base: int, block: int, data: bytes, joliet: bool) -> Entries:
    entries: Entries = []
    position = 0
    while position < len(data):
        length = data[position]
        if length == 0:  # records do not cross a block: the rest of this block is padding
            position = (position // block + 1) * block
            continue
        record = data[position : position + length]
        position += length
        if length < 34 or len(record) < length:
            break
        name_length = record[32]
        raw = bytes(record[33 : 33 + name_length])
        if raw in (b"\0", b"\1"):
            continue
        names = {_iso_name(raw, joliet)}
        if not joliet:
            names |= _rock_ridge_names(reader, base, block, bytes(record[33 + name_length + (1 - name_length % 2) :]))
        child = (_u32(record, 2), _u32(record, 10)) if record[25] & 2 else None
        entries.append((frozenset(n.lower() for n in names if n), child))
    return entries


def _iso_name(raw: bytes, joliet: bool) -> str:
    name = raw.decode("utf-16-be", errors="replace") if joliet else raw.decode("latin-1")
    return name.split(";", 1)[0].rstrip(".")


def _rock_ridge_names(reader: MediaReader, base: int, block: int, area: bytes) -> set[str]:
    """The ``NM`` name of a record's System Use area, following ``CE`` continuation areas."""
    parts: list[bytes] = []
    names: set[str] = set()
    for _hop in range(MAX_CONTINUATIONS + 1):
        position, continuation = 0, None
        while position + 4 <= len(area):
            signature, length = bytes(area[position : position + 2]), area[position + 2]
            if length < 4 or position + length > len(area):
                break
            entry = area[position : position + length]
            if signature == b"NM" and length >= 5:
                parts.append(bytes(entry[5:]))
                if not entry[4] & 1:  # no CONTINUE flag: the name is complete
                    names.add(b"".join(parts).decode("utf-8", errors="replace"))
                    parts = []
            elif signature == b"CE" and length >= 28:
                continuation = (_u32(entry, 4), _u32(entry, 12), _u32(entry, 20))
            elif signature == b"ST":
                break
            position += length
        if continuation is None:
            break
        lba, offset, size = continuation
        area = reader.read(base + lba * block + offset, min(size, block))
    if parts:
        names.add(b"".join(parts).decode("utf-8", errors="replace"))
    return names


# --- UDF ---------------------------------------------------------------------------------------


def _tag(data: bytes) -> int:
    return _u16(data, 0) if len(data) >= 16 else -1


def _anchor(reader: MediaReader, base: int, size: int) -> tuple[int, bytes] | None:
    """``(block size, anchor)`` of the first Anchor Volume Descriptor Pointer found (block 256, or the
    last block, or 256 before it)."""
    for block in UDF_BLOCK_SIZES:
        last = size // block - 1
        for lba in dict.fromkeys((256, last, last - 256)):
            if lba < 256:
                continue
            data = reader.read(base + lba * block, 512)
            if _tag(data) == 2 and _u32(data, 12) == lba:
                return block, data
    return None


def _udf_tree(reader: MediaReader, base: int, size: int) -> tuple[str, object, Lister] | None:
    found = _anchor(reader, base, size)
    if found is None:
        reader.problem("media.udf_unreadable", "UDF volume recognised but no anchor volume descriptor found")
        return None
    block, anchor = found
    reasons = []
    for extent in (16, 24):  # the main volume descriptor sequence, then the reserve one, as readers fall back
        volume = _volume(reader, base, block, _u32(anchor, extent + 4), _u32(anchor, extent))
        if not isinstance(volume, str):
            break
        reasons.append(volume)
    else:
        reader.problem("media.udf_unreadable", f"UDF volume: {'; '.join(dict.fromkeys(reasons))}")
        return None
    partitions, maps, fsd = volume

    def position(lbn: int, ref: int) -> int:
        return base + (partitions[maps[ref]] + lbn) * block if ref < len(maps) else -1

    fsd_data = reader.read(position(*fsd), block) if position(*fsd) >= 0 else b""
    if _tag(fsd_data) != 256:
        reader.problem("media.udf_unreadable", "UDF volume: no file set descriptor")
        return None
    root = (_u32(fsd_data, 404), _u16(fsd_data, 408))

    def list_dir(handle: object) -> Entries:
        assert isinstance(handle, tuple)
        return _udf_directory(reader, block, position, handle)

    return "UDF", root, list_dir


def _volume(reader: MediaReader, base: int, block: int, location: int,
            length: int) -> tuple[dict[int, int], list[int], tuple[int, int]] | str:
    """Partition starts, partition maps and file set descriptor location of one volume descriptor
    sequence, or why it has no usable logical volume."""
    partitions: dict[int, int] = {}
    maps: list[int] | str = []
    fsd: tuple[int, int] | None = None
    for number in range(min(length // block, MAX_UDF_DESCRIPTORS)):
        descriptor = reader.read(base + (location + number) * block, block)
        tag = _tag(descriptor)
        if tag == 5:
            partitions[_u16(descriptor, 22)] = _u32(descriptor, 188)
        elif tag == 6:
            fsd = (_u32(descriptor, 252), _u16(descriptor, 256))
            maps = _partition_maps(descriptor)
        elif tag in (8, -1, 0):
            break
    if isinstance(maps, str):
        return maps
    if fsd is None or not maps or any(m not in partitions for m in maps):
        return "no logical volume with a partition map of a partition descriptor"
    return partitions, maps, fsd


def _partition_maps(lvd: bytes) -> list[int] | str:
    """The partition number behind each partition map (type 1, physical, and type 2 sparable maps),
    or why they cannot be read."""
    maps, position = [], 440
    for _number in range(min(_u32(lvd, 268), 8)):
        kind, length = (lvd[position], lvd[position + 1]) if len(lvd) > position + 1 else (0, 0)
        ident = bytes(lvd[position + 5 : position + 28]).rstrip(b"\0")
        if kind == 1 and length == 6:
            maps.append(_u16(lvd, position + 4))
        elif kind == 2 and length == 64 and ident == b"*UDF Sparable Partition":
            maps.append(_u16(lvd, position + 38))
        else:
            return f"a partition map of type {kind} ({ident.decode('ascii', errors='replace')!r}) is not read"
        position += length
    return maps


def _udf_directory(reader: MediaReader, block: int, position: Callable[[int, int], int],
                   icb: tuple[int, int]) -> Entries:
    """The file identifiers of the directory whose (extended) file entry is at ``icb``."""
    where = position(*icb)
    entry = reader.read(where, block) if where >= 0 else b""
    tag = _tag(entry)
    if tag not in (261, 266):
        return []
    ea_at = 168 if tag == 261 else 208
    ea_length, ad_length = _u32(entry, ea_at), _u32(entry, ea_at + 4)
    ads = entry[ea_at + 8 + ea_length : ea_at + 8 + ea_length + ad_length]
    remaining = struct.unpack_from("<Q", entry, 56)[0] if len(entry) >= 64 else 0
    kind = _u16(entry, 34) & 7
    if kind == 3:
        data = bytes(ads[:remaining])
    else:
        chunks = []
        step = 8 if kind == 0 else 16
        for at in range(0, len(ads) - step + 1, step):
            length, lbn = _u32(ads, at), _u32(ads, at + 4)
            ref = icb[1] if kind == 0 else _u16(ads, at + 8)
            if length >> 30 == 3 or length == 0:
                break
            size = min(length & 0x3FFFFFFF, remaining)
            start = position(lbn, ref)
            if length >> 30 == 0 and start >= 0 and size > 0:
                chunks.append(reader.read(start, size))
            remaining -= size
        data = b"".join(chunks)
    return _file_identifiers(data)


def _file_identifiers(data: bytes) -> Entries:
    entries: Entries = []
    position = 0
    while position + 38 <= len(data) and _u16(data, position) == 257:
        characteristics, name_length = data[position + 18], data[position + 19]
        iu_length = _u16(data, position + 36)
        raw = data[position + 38 + iu_length : position + 38 + iu_length + name_length]
        icb = (_u32(data, position + 24), _u16(data, position + 28))
        position += (38 + iu_length + name_length + 3) & ~3
        if characteristics & 0x0C or not raw:  # deleted, or the parent entry
            continue
        name = raw[1:].decode("latin-1") if raw[0] == 8 else raw[1:].decode("utf-16-be", errors="replace")
        entries.append((frozenset({name.lower()}), icb if characteristics & 2 else None))
    return entries
