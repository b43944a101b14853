"""Windows boot and setup files on a FAT12/16/32 volume: USB installation media.

The Media Creation Tool and Rufus write Windows installation media as a FAT32 volume holding
``bootmgr``, ``efi/microsoft/`` and ``sources/install.esd`` (or ``install.wim``). FAT has two names per
file: the 8.3 short name that firmware and DOS read, and the long (VFAT) name that Linux and Windows
show. :func:`fat_setup_files` looks up the :data:`._optical_media.TARGETS` under both (a long name
counts only if its checksum matches its short entry, as every reader requires) and returns what is
found, as ``"FAT: <path>"``.

Reads go through the layout reader. A directory's cluster chain is followed through the first FAT
(and through the active FAT too when a FAT32 volume turns mirroring off: Windows reads that one) for
at most :data:`MAX_CHAIN` clusters (a loop ends it); at most :data:`._optical_media.MAX_DIRECTORIES`
directories are read. A boot sector that gives an impossible geometry is a ``media.fat_unreadable``
problem.
"""

from __future__ import annotations

from ._optical_media import Entries, MediaReader, TooManyDirectories, lookup

#: The most clusters followed along one directory's chain.
MAX_CHAIN = 256


def _u16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 2], "little") if len(data) >= offset + 2 else 0


def _u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "little") if len(data) >= offset + 4 else 0


class _Fat:
    """A FAT volume's geometry, from its boot sector; raises ValueError if it is impossible."""

    def __init__(self, reader: MediaReader, base: int, boot: bytes) -> None:
        self.reader, self.base = reader, base
        self.sector, self.per_cluster = _u16(boot, 11), boot[13] if len(boot) > 13 else 0
        reserved, fats, root_entries = _u16(boot, 14), boot[16] if len(boot) > 16 else 0, _u16(boot, 17)
        fat_size = _u16(boot, 22) or _u32(boot, 36)
        total = _u16(boot, 19) or _u32(boot, 32)
        if self.sector not in (512, 1024, 2048, 4096) or self.per_cluster not in (1, 2, 4, 8, 16, 32, 64, 128) \
                or not reserved or not fats or not fat_size:
            raise ValueError(f"bytes per sector {self.sector}, sectors per cluster {self.per_cluster}, "
                             f"{reserved} reserved sectors, {fats} FATs of {fat_size} sectors")
        self.fat_start = reserved * self.sector
        root_sectors = (root_entries * 32 + self.sector - 1) // self.sector
        self.root_start = (reserved + fats * fat_size) * self.sector
        self.root_length = root_entries * 32
        self.data_start = self.root_start + root_sectors * self.sector
        clusters = max(total * self.sector - self.data_start, 0) // (self.sector * self.per_cluster)
        self.bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
        self.root_cluster = _u32(boot, 44) if self.bits == 32 else 0
        self.last = clusters + 1
        self.fat_size = fat_size * self.sector
        flags = _u16(boot, 40) if self.bits == 32 else 0  # FAT32 ExtFlags: mirroring off, active FAT
        self.copies = [0] + ([flags & 0x0F] if flags & 0x80 and 0 < flags & 0x0F < fats else [])

    def _next(self, cluster: int, copy: int) -> int:
        fat = self.base + self.fat_start + copy * self.fat_size
        if self.bits == 32:
            return _u32(self.reader.read(fat + 4 * cluster, 4), 0) & 0x0FFFFFFF
        if self.bits == 16:
            return _u16(self.reader.read(fat + 2 * cluster, 2), 0)
        pair = _u16(self.reader.read(fat + cluster * 3 // 2, 2), 0)
        return pair >> 4 if cluster & 1 else pair & 0xFFF

    def directory(self, handle: object) -> Entries:
        """The entries of the root (handle 0) or of the directory starting at cluster ``handle``: its chain
        in the first FAT (Linux's) and, on a FAT32 volume whose ExtFlags turn mirroring off, in the
        active FAT (Windows'), clusters either chain holds."""
        assert isinstance(handle, int)
        if handle == 0 and self.bits != 32:
            return _entries(self.reader.read(self.base + self.root_start, self.root_length))
        clusters: dict[int, None] = {}
        for copy in self.copies:
            cluster = handle or self.root_cluster
            visited: set[int] = set()
            while 2 <= cluster <= self.last and cluster not in visited:
                visited.add(cluster)
                if cluster not in clusters:
                    if len(clusters) >= MAX_CHAIN:
                        self.reader.problem("media.directories", f"FAT: a directory of more than {MAX_CHAIN} clusters")
                        return _entries(self._data(clusters))
                    clusters[cluster] = None
                cluster = self._next(cluster, copy)
        return _entries(self._data(clusters))

    def _data(self, clusters: dict[int, None]) -> bytes:
        size = self.sector * self.per_cluster
        return b"".join(self.reader.read(self.base + self.data_start + (c - 2) * size, size) for c in clusters)


def _checksum(short: bytes) -> int:
    total = 0
    for byte in short:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


def _entries(data: bytes) -> Entries:
    """Each file's short and (checksum-valid) long name, and its first cluster if it is a directory."""
    entries: Entries = []
    long_parts: list[bytes] = []
    long_sum = -1
    for at in range(0, len(data) - 31, 32):
        entry = data[at : at + 32]
        if entry[0] == 0:
            break
        if entry[0] == 0xE5:
            long_parts = []
            continue
        if entry[11] & 0x3F == 0x0F:  # a long-name entry: they come last part first
            if entry[0] & 0x40:
                long_parts, long_sum = [], entry[13]
            long_parts.insert(0, bytes(entry[1:11] + entry[14:26] + entry[28:32]))
            continue
        short = bytes(entry[:11])
        names = {_short_name(short)}
        if long_parts and long_sum == _checksum(short):
            names.add(b"".join(long_parts).decode("utf-16-le", errors="replace").split("\0", 1)[0])
        long_parts = []
        if entry[11] & 0x08 or names & {".", ".."}:  # a volume label, or the entries for . and ..
            continue
        first = (_u16(entry, 20) << 16) | _u16(entry, 26)
        entries.append((frozenset(n.lower() for n in names if n), first if entry[11] & 0x10 and first else None))
    return entries


def _short_name(raw: bytes) -> str:
    raw = b"\xe5" + raw[1:] if raw[0] == 0x05 else raw
    stem, ext = raw[:8].rstrip(b" "), raw[8:11].rstrip(b" ")
    return (stem + (b"." + ext if ext else b"")).decode("latin-1")


def fat_setup_files(reader: MediaReader, base: int, boot: bytes) -> tuple[str, ...]:
    """The Windows boot and setup files of the FAT volume whose boot sector (at ``base``) is ``boot``."""
    try:
        fat = _Fat(reader, base, boot)
    except ValueError as exc:
        reader.problem("media.fat_unreadable", f"FAT boot sector: {exc}")
        return ()
    try:
        return tuple(lookup("FAT", 0, fat.directory))
    except TooManyDirectories:
        reader.problem("media.directories", "FAT: too many directories to read")
        return ()
