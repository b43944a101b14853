"""Guest bytes of a disk, block by block within a budget: shared by the guest readers.

``os_type`` and ``nested_headers`` read a disk's guest view the same way: raw and ISO
data directly, the formats qemu maps (:data:`THROUGH_QEMU`) through a fetch function
(:func:`importhooks_plugins.formats._qemu.read_guest`), one :data:`BLOCK` at a time,
cached, and never past the caller's budget.
"""

from __future__ import annotations

from collections.abc import Callable

from ._guest_layout import ReadBudgetExhausted

#: Guest bytes fetched per block from a qemu-read disk.
BLOCK = 128 << 10
SECTOR = 512
#: Disk formats read directly from the data, and those qemu-img reads through their mapping.
DIRECT = frozenset({"raw", "iso"})
THROUGH_QEMU = frozenset({"qcow2", "vmdk", "vhd", "vhdx", "vdi", "qed"})


class GuestBlocks:
    """Guest bytes of a qemu-read disk, fetched :data:`BLOCK` at a time and cached, within a budget."""

    def __init__(self, fetch: Callable[[list[tuple[int, int]]], bytes], disk_size: int, budget: int) -> None:
        self._fetch = fetch
        self._size = disk_size
        self._budget = budget
        self._cache: dict[int, bytes] = {}

    def _span(self, block: int) -> tuple[int, int]:
        start = block * BLOCK
        return start, min(BLOCK, self._size - start) // SECTOR * SECTOR

    def _load(self, blocks: list[int], *, required: bool) -> None:
        spans = []
        for block in sorted(set(blocks) - set(self._cache)):
            span = self._span(block)
            if span[1] <= 0:
                self._cache[block] = b""
                continue
            if span[1] > self._budget:
                if required:
                    raise ReadBudgetExhausted
                break
            self._budget -= span[1]
            spans.append((block, span))
        if not spans:
            return
        data = self._fetch([span for _block, span in spans])
        position = 0
        for block, (_start, size) in spans:
            self._cache[block] = data[position : position + size]
            position += size

    @staticmethod
    def _blocks(offset: int, size: int) -> list[int]:
        return list(range(offset // BLOCK, (offset + max(size, 1) - 1) // BLOCK + 1))

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        self._load([b for offset, size in ranges for b in self._blocks(offset, size)], required=False)

    def read(self, offset: int, size: int) -> bytes:
        blocks = self._blocks(offset, size)
        self._load(blocks, required=True)
        data = b"".join(self._cache[b] for b in blocks)
        skip = offset - blocks[0] * BLOCK
        return data[skip : skip + size]
