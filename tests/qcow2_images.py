"""Builders of benign and hostile qcow2 images: qemu-img first, then byte patches where no tool makes the attack."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

from .disk_builders import write_clusters
from .images import qemu_img, qemu_img_luks

#: Header fields (docs/interop/qcow2.rst): name -> (offset, struct format).
FIELDS = {
    "version": (4, ">I"),
    "backing_file_offset": (8, ">Q"),
    "backing_file_size": (16, ">I"),
    "cluster_bits": (20, ">I"),
    "size": (24, ">Q"),
    "crypt_method": (32, ">I"),
    "l1_size": (36, ">I"),
    "l1_table_offset": (40, ">Q"),
    "refcount_table_offset": (48, ">Q"),
    "refcount_table_clusters": (56, ">I"),
    "nb_snapshots": (60, ">I"),
    "snapshots_offset": (64, ">Q"),
    "incompatible_features": (72, ">Q"),
    "refcount_order": (96, ">I"),
    "header_length": (100, ">I"),
    "compression_type": (104, ">B"),
}


def create(path: Path, size: str = "64M", *options: str) -> Path:
    """An empty qcow2 made by ``qemu-img create`` with ``-o`` options (``compat=0.10`` ...)."""
    args = ["create", "-f", "qcow2"]
    if options:
        args += ["-o", ",".join(options)]
    qemu_img(*args, str(path), size)
    return path


def encrypted(path: Path, how: str, size: str = "1M") -> Path:
    """A qcow2 encrypted with ``how`` (``aes`` or ``luks``) by qemu-img.

    For LUKS, qemu-img benchmarks PBKDF2 for about half a second of CPU time whatever
    ``iter-time`` says, and fails now and then on a loaded machine ("Unable to get
    accurate CPU usage"): it is retried.
    """
    args = ["create", "-f", "qcow2", "--object", "secret,id=sec0,data=passphrase", "-o",
            f"encrypt.format={how},encrypt.key-secret=sec0" + (",encrypt.iter-time=10" if how == "luks" else ""),
            str(path), size]
    qemu_img_luks(*args)
    return path


def compressible_raw(path: Path, size: int = 4 << 20) -> Path:
    """A raw disk full of non-zero, compressible data."""
    line = b"importhooks qcow2 test data, compressible but not zero. "
    path.write_bytes((line * (size // len(line) + 1))[:size])
    return path


def converted(path: Path, raw: Path, *options: str, compress: bool = False) -> Path:
    """``qemu-img convert`` of ``raw`` to qcow2, compressed with ``-c``."""
    args = ["convert", "-O", "qcow2"] + (["-c"] if compress else []) + (["-o", ",".join(options)] if options else [])
    qemu_img(*args, str(raw), str(path))
    return path


def read_field(path: Path, name: str) -> int:
    offset, fmt = FIELDS[name]
    with open(path, "rb") as handle:
        handle.seek(offset)
        (value,) = struct.unpack(fmt, handle.read(struct.calcsize(fmt)))
    return int(value)


def patch_field(path: Path, name: str, value: int) -> Path:
    """Overwrite one header field of ``path`` in place."""
    offset, fmt = FIELDS[name]
    return patch_bytes(path, offset, struct.pack(fmt, value))


def patch_bytes(path: Path, offset: int, data: bytes) -> Path:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)
    return path


def extension(kind: int, data: bytes) -> bytes:
    """One header extension: type, length, data padded to 8 bytes."""
    return struct.pack(">II", kind, len(data)) + data + b"\0" * (-len(data) % 8)


def set_extensions(path: Path, *extensions: bytes, end: bool = True) -> Path:
    """Replace the header extensions of a version 3 image (they start at header_length)."""
    start = read_field(path, "header_length")
    area = b"".join(extensions) + (extension(0, b"") if end else b"")
    return patch_bytes(path, start, area)


def set_l1_entry(path: Path, index: int, entry: int) -> Path:
    return patch_bytes(path, read_field(path, "l1_table_offset") + 8 * index, struct.pack(">Q", entry))


# -- tables: read and patch entries of a real image -------------------------------------


def written(path: Path, size: str, *writes: tuple[int, int], options: tuple[str, ...] = ()) -> Path:
    """``qemu-img create`` then ``qemu-io`` writes of a pattern at (offset, length): allocated clusters."""
    create(path, size, *options)
    write_clusters(path, "qcow2", *writes)
    return path


def read_u64(path: Path, offset: int) -> int:
    with open(path, "rb") as handle:
        handle.seek(offset)
        (value,) = struct.unpack(">Q", handle.read(8))
    return int(value)


def l2_table(path: Path, l1_index: int = 0) -> int:
    """The offset of the L2 table that L1 entry ``l1_index`` names."""
    return read_u64(path, read_field(path, "l1_table_offset") + 8 * l1_index) & 0x00FFFFFFFFFFFE00


def l2_entry(path: Path, index: int, l1_index: int = 0, stride: int = 8) -> int:
    return read_u64(path, l2_table(path, l1_index) + stride * index)


def set_l2_entry(path: Path, index: int, entry: int, l1_index: int = 0, stride: int = 8) -> Path:
    return patch_bytes(path, l2_table(path, l1_index) + stride * index, struct.pack(">Q", entry))


def refcount_block(path: Path, index: int = 0) -> int:
    """The offset of the refcount block that refcount table entry ``index`` names."""
    return read_u64(path, read_field(path, "refcount_table_offset") + 8 * index) & ~0x1FF


def set_refcount(path: Path, cluster: int, refcount: int) -> Path:
    """Set the 16-bit refcount of ``cluster`` (default refcount width, first refcount block)."""
    return patch_bytes(path, refcount_block(path) + 2 * cluster, struct.pack(">H", refcount))


def check(path: Path) -> tuple[int, dict[str, object]]:
    """``qemu-img check``'s exit status and JSON report, as the tests verify what qemu says too."""
    done = subprocess.run(["qemu-img", "check", "--output=json", "-U", "-f", "qcow2", str(path)],
                          capture_output=True, check=False)
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}
