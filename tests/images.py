"""Builders of benign and hostile test images, made with real tools (qemu-img) inside tests."""

from __future__ import annotations

import subprocess
from pathlib import Path


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


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
