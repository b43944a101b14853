"""Tools for the fault and memory tests: misbehaving programs, a full work directory, a FUSE file
that fails its reads, and a mix of benign and hostile images for soaks.

Everything here is real: the fake ``qemu-img`` is a program found through ``PATH``, the full
work directory is a tmpfs mounted for the test, the failing read comes from the kernel
(``EIO`` from a FUSE file served by :func:`serve_fuse` in a child process). CI runs as root,
as the tests do here; ``mount`` and FUSE need it.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import compression_images, images, ova_images, vmdk_images, zip_images

# -- programs standing in for qemu-img ----------------------------------------------------

def fake_program(directory: Path, name: str, body: str) -> Path:
    """An executable shell script ``directory/name`` (e.g. a ``qemu-img`` to put first on PATH)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def descendants(pid: int) -> list[int]:
    """The live (not zombie) processes below ``pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run_leftovers(existing: Collection[int] = ()) -> list[int]:
    """Processes below this one that a run may have started: all but a FUSE server of :func:`failing_file` and
    the ``existing`` ones (the session's servers, e.g. RabbitMQ, which earlier tests started)."""
    def is_fuse_server(pid: int) -> bool:
        try:
            return b"tests.fault_tools" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    return [pid for pid in descendants(os.getpid()) if pid not in existing and not is_fuse_server(pid)]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init counts as gone)."""
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


# -- a work directory that fills up -------------------------------------------------------

@contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``1M``) mounted on ``path`` for the block; unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "importhooks-test", str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True, capture_output=True)


# -- a file whose reads fail with EIO ------------------------------------------------------

FUSE_NAME = "disk"


def serve_fuse(mountpoint: str, source: str, fail_from: int) -> None:
    """Serve ``source`` read-only as ``mountpoint/disk``; reads at or past ``fail_from`` fail with EIO.

    Runs in a child process (``python -m tests.fault_tools MOUNTPOINT SOURCE FAIL_FROM``)
    until unmounted. ``direct_io`` sends every read to this process: the page cache never
    answers one.
    """
    import mfusepy as fuse

    size = os.stat(source).st_size
    handle = os.open(source, os.O_RDONLY)

    class FailingFile(fuse.Operations):  # type: ignore[misc]
        use_ns = True

        def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
            if path == "/" + FUSE_NAME:
                return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": size}
            raise fuse.FuseOSError(errno.ENOENT)

        def readdir(self, path: str, fh: Any) -> list[str]:
            return [".", "..", FUSE_NAME]

        def open(self, path: str, flags: int) -> int:
            return 0

        def read(self, path: str, length: int, offset: int, fh: Any) -> bytes:
            if offset + length > fail_from and offset < size:
                raise fuse.FuseOSError(errno.EIO)
            return os.pread(handle, length, offset)

    fuse.FUSE(FailingFile(), mountpoint, foreground=True, ro=True, direct_io=True, nothreads=True)


@contextmanager
def failing_file(mountpoint: Path, source: Path, fail_from: int) -> Iterator[Path]:
    """``source`` as a FUSE file whose reads from byte ``fail_from`` on fail with EIO; unmounted after."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    server = subprocess.Popen([sys.executable, "-m", "tests.fault_tools", str(mountpoint), str(source),
                               str(fail_from)], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = mountpoint / FUSE_NAME
    try:
        deadline = time.monotonic() + 20
        while not target.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the FUSE server did not start: {server.stderr.read() if server.stderr else b''!r}")
            time.sleep(0.05)
        yield target
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True)
        try:
            server.wait(timeout=10)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
            if server.stderr is not None:
                server.stderr.close()


# -- a mix of images for soaks ---------------------------------------------------------------

def mixed_images(directory: Path) -> list[tuple[str, Path]]:
    """Benign and hostile images of every family, made by the tests' builders: ``(name, path)`` pairs."""
    directory.mkdir(parents=True, exist_ok=True)
    made: list[tuple[str, Path]] = []

    def add(name: str, path: Path) -> None:
        made.append((name, path))

    add("raw", images.raw_image(directory / "disk.raw"))
    add("qcow2", images.qcow2_image(directory / "disk.qcow2", "16M"))
    add("qcow2 backing file", images.qcow2_with_backing_file(directory / "backing.qcow2", size="16M"))
    add("vmdk", vmdk_images.converted(directory / "stream.vmdk", "streamOptimized"))
    add("vmdk flat descriptor", vmdk_images.created(directory / "flat.vmdk", "monolithicFlat", "1M"))
    disk = zip_images.disk_bytes(256 << 10)
    add("gzip", compression_images.write(directory / "disk.raw.gz", compression_images.compress("gzip", disk)))
    add("xz", compression_images.write(directory / "disk.raw.xz", compression_images.compress("xz", disk)))
    add("gzip of zeros", compression_images.write(directory / "zeros.gz", compression_images.gzip_zeros(8 << 20)))
    add("zip", zip_images.write(directory / "disk.zip", zip_images.zip_bytes({"disk.raw": disk})))
    add("zip traversal", zip_images.write(directory / "evil.zip", zip_images.zip_bytes({"../disk.raw": disk})))
    vmdk = (directory / "stream.vmdk").read_bytes()
    add("ova", ova_images.package(vmdk).write(directory / "vm.ova"))
    hostile = ova_images.package(vmdk)
    hostile.extra.append(ova_images.symlink("lnk", "/etc/passwd"))
    add("ova symlink", hostile.write(directory / "evil.ova"))
    dotdot = ova_images.package(vmdk)
    dotdot.extra.append(ova_images.regular("../../evil", b"x"))
    add("ova dotdot", dotdot.write(directory / "dotdot.ova"))
    head = (directory / "disk.qcow2").read_bytes()[:4096]
    add("qcow2 truncated", compression_images.write(directory / "truncated.qcow2", head))
    add("garbage", compression_images.write(directory / "noise.bin", compression_images.random_after_magic("xz")))
    return made


if __name__ == "__main__":
    serve_fuse(sys.argv[1], sys.argv[2], int(sys.argv[3]))
