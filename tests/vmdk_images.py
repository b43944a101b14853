"""Builders of benign and hostile VMDK images: qemu-img makes them, byte patches make the attacks.

qemu-img cannot write a hostile VMDK (a second extent in the embedded descriptor,
a parent link, a damaged header), so those are made by rewriting a file qemu-img
made, in place, keeping every size and offset that is not the point of the test.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from random import Random

from .images import qemu_img

SECTOR = 512
#: Byte offsets of the hosted sparse extent header's fields (VMware's SparseExtentHeader).
FIELDS = {
    "version": (4, "<I"),
    "flags": (8, "<I"),
    "capacity": (12, "<Q"),
    "grain_size": (20, "<Q"),
    "descriptor_offset": (28, "<Q"),
    "descriptor_size": (36, "<Q"),
    "num_gtes_per_gt": (44, "<I"),
    "rgd_offset": (48, "<Q"),
    "gd_offset": (56, "<Q"),
    "overhead": (64, "<Q"),
    "compress_algorithm": (77, "<H"),
}
GD_AT_END = 0xFFFFFFFFFFFFFFFF


def created(path: Path, subformat: str, size: str = "64M") -> Path:
    """An empty VMDK made by ``qemu-img create`` (descriptor-only subformats make extra files beside it)."""
    qemu_img("create", "-f", "vmdk", "-o", f"subformat={subformat}", str(path), size)
    return path


def converted(path: Path, subformat: str, random: int = 256 << 10) -> Path:
    """A VMDK converted from a 4 MiB raw disk with ``random`` bytes of noise first and text at the end."""
    raw = path.with_suffix(".raw")
    with open(raw, "wb") as handle:
        handle.write(Random(random).randbytes(random))  # seeded: every run builds the same image
        handle.truncate(4 << 20)
        handle.seek((4 << 20) - (64 << 10))
        handle.write(b"importhooks" * 5000)
    qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}", str(raw), str(path))
    raw.unlink()
    return path


def read_header(path: Path) -> dict[str, int]:
    head = path.read_bytes()[:SECTOR]
    return {name: struct.unpack_from(fmt, head, offset)[0] for name, (offset, fmt) in FIELDS.items()}


def patch_header(path: Path, *, at: int = 0, **fields: int) -> Path:
    """Overwrite header fields (of the header at byte ``at``) in place."""
    with open(path, "r+b") as handle:
        for name, value in fields.items():
            offset, fmt = FIELDS[name]
            handle.seek(at + offset)
            handle.write(struct.pack(fmt, value))
    return path


def patch_bytes(path: Path, offset: int, data: bytes) -> Path:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)
    return path


def descriptor_text(path: Path) -> str:
    """The embedded descriptor of a sparse VMDK, up to its NUL padding."""
    header = read_header(path)
    region = path.read_bytes()[header["descriptor_offset"] * SECTOR:][: header["descriptor_size"] * SECTOR]
    return region.split(b"\0", 1)[0].decode("ascii")


def rewrite_descriptor(path: Path, change: Callable[[str], str], *, tail: bytes = b"",
                       encoding: str = "latin-1") -> Path:
    """Rewrite the embedded descriptor in place, NUL-padded to the same region; ``tail`` goes after the NUL.

    The new text is written in ``encoding`` (latin-1 by default: one byte per character, so
    a test can place any byte).
    """
    header = read_header(path)
    length = header["descriptor_size"] * SECTOR
    text = change(descriptor_text(path)).encode(encoding) + b"\0" + tail
    assert len(text) <= length, "the new descriptor does not fit its region"
    return patch_bytes(path, header["descriptor_offset"] * SECTOR, text.ljust(length, b"\0"))


def add_line_after(anchor: str, line: str) -> Callable[[str], str]:
    """A descriptor change inserting ``line`` after the line that starts with ``anchor``."""

    def change(text: str) -> str:
        lines = text.split("\n")
        index = next(i for i, old in enumerate(lines) if old.startswith(anchor))
        return "\n".join([*lines[: index + 1], line, *lines[index + 1 :]])

    return change


def replace_line(anchor: str, line: str) -> Callable[[str], str]:
    """A descriptor change replacing the line that starts with ``anchor``."""

    def change(text: str) -> str:
        lines = text.split("\n")
        index = next(i for i, old in enumerate(lines) if old.startswith(anchor))
        lines[index] = line
        return "\n".join(lines)

    return change


def with_footer(path: Path) -> Path:
    """Turn a qemu streamOptimized VMDK into the VMware layout: grain directory 'at end', found via a footer.

    The footer (a footer marker, a copy of the header with the real gdOffset, an
    end-of-stream marker) is appended; the first header's gdOffset becomes GD_AT_END.
    """
    data = path.read_bytes()
    assert len(data) % SECTOR == 0
    marker = struct.pack("<QII", 1, 0, 3).ljust(SECTOR, b"\0")
    footer = data[:SECTOR]
    eos = bytes(SECTOR)
    path.write_bytes(data + marker + footer + eos)
    return patch_header(path, gd_offset=GD_AT_END)


def truncated(source: Path, path: Path, length: int) -> Path:
    path.write_bytes(source.read_bytes()[:length])
    return path
