"""Builders of benign and hostile test images, made with real tools (qemu-img) inside tests."""

from __future__ import annotations

import subprocess
from pathlib import Path


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


#: How often to retry qemu-img's LUKS key setup, which times PBKDF2 with the thread's
#: CPU clock and fails on a busy machine ("Unable to get accurate CPU usage").
LUKS_ATTEMPTS = 6


def qemu_img_luks(*args: str) -> None:
    """``qemu-img`` for a command that sets up a LUKS key (luks images, LUKS-encrypted qcow2)."""
    for attempt in range(LUKS_ATTEMPTS):
        try:
            qemu_img(*args)
            return
        except subprocess.CalledProcessError as exc:
            if b"accurate CPU usage" not in exc.stderr or attempt == LUKS_ATTEMPTS - 1:
                raise


def raw_image(path: Path, size: int = 1 << 20, fill: bytes = b"\0") -> Path:
    """A raw disk of ``size`` bytes."""
    path.write_bytes(fill * size)
    return path


def qcow2_image(path: Path, size: str = "64M") -> Path:
    """A benign, empty qcow2."""
    qemu_img("create", "-f", "qcow2", str(path), size)
    return path


def qcow2_with_backing_file(path: Path, backing: str = "/etc/passwd", size: str = "64M") -> Path:
    """A qcow2 whose backing file is a host path (-u: qemu-img does not open it)."""
    qemu_img("create", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", str(path), size)
    return path
