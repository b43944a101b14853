"""Builders of benign and hostile OVAs: tarfile writes the archive, qemu-img the disks.

An OVA is a tar archive: the OVF descriptor first, then an optional ``.mf``
manifest, then the disk. :func:`ova` takes the members in order, so every hostile
case (absolute names, ``..``, links, devices, PAX records, GNU long names, sparse
members) is one more member in an otherwise valid package: the rule under test, not
a missing descriptor, is what rejects it.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from . import vmdk_images
from .images import qemu_img

NS = "http://schemas.dmtf.org/ovf/envelope/1"
DISK = "vm-disk1.vmdk"  # the disk member of package()
FORMAT_URIS = {
    "vmdk": "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
    "qcow2": "http://www.gnome.org/~markmc/qcow-image-format.html",
    "raw": "raw",
}


@dataclass
class Member:
    """One tar member to write: its header and, for a regular file, its data."""

    info: tarfile.TarInfo | None
    data: bytes | None = None
    raw: bytes = b""  # for ``info=None``: header and data blocks written as they are


def _info(name: str, kind: bytes, *, mode: int = 0o644, link: str = "", size: int = 0,
          pax: dict[str, str] | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = kind, mode, link, size
    info.mtime = 1_700_000_000
    info.pax_headers = dict(pax or {})
    return info


def regular(name: str, data: bytes, *, mode: int = 0o644, pax: dict[str, str] | None = None) -> Member:
    return Member(_info(name, tarfile.REGTYPE, mode=mode, size=len(data), pax=pax), data)


def directory(name: str, mode: int = 0o755) -> Member:
    return Member(_info(name, tarfile.DIRTYPE, mode=mode))


def symlink(name: str, target: str, *, pax: dict[str, str] | None = None) -> Member:
    return Member(_info(name, tarfile.SYMTYPE, mode=0o777, link=target, pax=pax))


def hardlink(name: str, target: str) -> Member:
    return Member(_info(name, tarfile.LNKTYPE, link=target))


def special(name: str, kind: bytes) -> Member:
    """A device node (``tarfile.CHRTYPE``, ``BLKTYPE``) or a FIFO (``FIFOTYPE``)."""
    return Member(_info(name, kind, mode=0o600))


def sparse_pax(name: str, declared: int, *, minor: str = "0") -> Member:
    """A GNU sparse member (PAX format 1.0, or 0.1 with ``minor="1"``) declaring ``declared`` bytes.

    tarfile has no API to write sparse files, but the PAX records and the 1.0 map
    block are plain data it writes as given; 512 real bytes back the declared size.
    """
    if minor == "0":
        body = b"1\n0\n512\n".ljust(512, b"\0") + b"x" * 512
        pax = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": name,
               "GNU.sparse.realsize": str(declared)}
        return regular(f"GNUSparseFile.0/{name}", body, pax=pax)
    pax = {"GNU.sparse.map": "0,512", "GNU.sparse.numblocks": "1", "GNU.sparse.size": str(declared)}
    return regular(name, b"x" * 512, pax=pax)


def sparse_old_gnu(name: str, declared: int) -> Member:
    """An old GNU sparse member (type ``S``, map in the header) declaring ``declared`` bytes, 512 of them real.

    tarfile writes the type but leaves the sparse map and real size empty; they are
    filled in here (base-256 for sizes over 8 GiB, as GNU tar does) and the header
    checksum computed again.
    """
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime = tarfile.GNUTYPE_SPARSE, 512, 1_700_000_000
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT)[: tarfile.BLOCKSIZE])
    header[386:410] = b"%011o\0%011o\0" % (0, 512)  # one sparse entry: offset 0, 512 bytes
    header[483:495] = b"%011o\0" % declared if declared < 8**11 else b"\x80" + declared.to_bytes(11, "big")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return Member(None, raw=bytes(header) + b"x" * 512)


def fix_checksum(data: bytearray, header: int) -> None:
    """Recompute the checksum of the tar header at ``header`` in ``data`` (after changing its fields)."""
    block = data[header: header + tarfile.BLOCKSIZE]
    if len(block) == tarfile.BLOCKSIZE:
        block[148:156] = b" " * 8
        data[header + 148: header + 156] = b"%06o\0 " % sum(block)


def ovf_descriptor(disks: list[tuple[str, str]], *, extra_files: tuple[str, ...] = (),
                   sizes: dict[str, int] | None = None, compression: str | None = None,
                   os_type: str = 'ovf:id="94" ovf:osType="ubuntu64Guest"') -> bytes:
    """A minimal OVF 1.x descriptor: one File and one Disk per ``(href, format)``, plus ``extra_files``."""
    sizes = sizes or {}
    files, disk_lines = [], []
    for index, (href, fmt) in enumerate(disks, 1):
        size = f' ovf:size="{sizes[href]}"' if href in sizes else ""
        packed = f' ovf:compression="{compression}"' if compression else ""
        files.append(f'    <File ovf:href="{href}" ovf:id="file{index}"{size}{packed}/>')
        disk_lines.append(f'    <Disk ovf:capacity="64" ovf:capacityAllocationUnits="byte * 2^20" '
                          f'ovf:diskId="vmdisk{index}" ovf:fileRef="file{index}" '
                          f'ovf:format="{FORMAT_URIS.get(fmt, fmt)}"/>')
    for index, href in enumerate(extra_files, len(disks) + 1):
        files.append(f'    <File ovf:href="{href}" ovf:id="file{index}"/>')
    text = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Envelope xmlns="{NS}" xmlns:ovf="{NS}" '
            f'xmlns:vmw="http://www.vmware.com/schema/ovf">\n'
            f"  <References>\n{chr(10).join(files)}\n  </References>\n"
            f"  <DiskSection>\n    <Info>Virtual disks</Info>\n{chr(10).join(disk_lines)}\n  </DiskSection>\n"
            '  <VirtualSystem ovf:id="vm">\n    <Info>A virtual machine</Info>\n'
            f'    <OperatingSystemSection {os_type}><Info>OS</Info>'
            "</OperatingSystemSection>\n  </VirtualSystem>\n</Envelope>\n")
    return text.encode()


def manifest(files: dict[str, bytes], algo: str = "SHA256") -> bytes:
    """An OVF manifest (``.mf``) with the ``algo`` digest of each ``name: data``."""
    lines = [f"{algo}({name})= {hashlib.new(algo.lower(), data).hexdigest()}\n" for name, data in files.items()]
    return "".join(lines).encode()


def ova(path: Path, members: list[Member], *, fmt: int = tarfile.PAX_FORMAT) -> Path:
    """Write ``members`` in order as a tar archive (PAX by default; GNU for GNU long names)."""
    with tarfile.open(path, "w", format=fmt) as archive:
        for member in members:
            if member.info is None:  # hand-made blocks: tarfile has no API for them
                assert len(member.raw) % tarfile.BLOCKSIZE == 0
                archive.fileobj.write(member.raw)
                archive.offset += len(member.raw)
            else:
                archive.addfile(member.info, io.BytesIO(member.data) if member.data is not None else None)
    return path


def stream_vmdk(path: Path) -> bytes:
    """The bytes of a streamOptimized VMDK made by ``qemu-img convert`` (4 MiB, some data)."""
    return vmdk_images.converted(path, "streamOptimized").read_bytes()


def qcow2_disk(path: Path) -> bytes:
    """The bytes of a benign 64 MiB qcow2 made by ``qemu-img create``."""
    qemu_img("create", "-f", "qcow2", str(path), "64M")
    return path.read_bytes()


@dataclass
class Package:
    """The members of a benign OVA, to write as is or with hostile members added."""

    descriptor: Member
    disk: Member
    manifest: Member | None = None
    extra: list[Member] = field(default_factory=list)

    def members(self) -> list[Member]:
        head = [self.descriptor] + ([self.manifest] if self.manifest else [])
        return [*head, self.disk, *self.extra]

    def write(self, path: Path, *, fmt: int = tarfile.PAX_FORMAT) -> Path:
        return ova(path, self.members(), fmt=fmt)


def package(disk: bytes, fmt: str = "vmdk", *, name: str = DISK, declared: str | None = None,
            with_manifest: bool = True, manifest_data: dict[str, bytes] | None = None,
            **descriptor_options: str) -> Package:
    """A benign package: ``vm.ovf`` naming ``name`` as a ``declared`` (default ``fmt``) disk, a manifest."""
    descriptor = ovf_descriptor([(name, declared or fmt)], sizes={name: len(disk)}, **descriptor_options)
    listed = manifest_data if manifest_data is not None else {"vm.ovf": descriptor, name: disk}
    return Package(regular("vm.ovf", descriptor), regular(name, disk),
                   regular("vm.mf", manifest(listed)) if with_manifest else None)


LONG = "d/" * 60  # over 100 characters: a GNU long name or a PAX path record

#: Hostile members, each added to a benign package, and the code that must reject it.
MEMBER_ATTACKS = {
    "absolute name": ([regular("/etc/cron.d/evil", b"x")], "tar.absolute_name"),
    "dotdot": ([regular("../../evil", b"x")], "tar.dotdot"),
    "dotdot that stays inside": ([regular("a/../evil", b"x")], "tar.dotdot"),
    "dotdot as Windows reads it": ([regular("..\\..\\evil", b"x")], "tar.dotdot"),
    "dotdot with a trailing space (Windows)": ([regular("a/.. /.. /evil", b"x")], "tar.dotdot"),
    "Windows drive": ([regular("C:\\Windows\\evil", b"x")], "tar.absolute_name"),
    "Windows root": ([regular("\\evil", b"x")], "tar.absolute_name"),
    "symlink escaping as Windows reads it": ([symlink("lnk", "..\\..\\etc")], "tar.link_escape"),
    "hardlink escaping as Windows reads it": ([hardlink("h", "..\\etc\\passwd")], "tar.link_escape"),
    "name of a member once a backslash separates": ([directory("sub/"), regular("sub/x", b"x"),
                                                      regular("sub\\x", b"x")], "tar.duplicate"),
    "pax path override": ([regular("innocent", b"x", pax={"path": "../../etc/evil"})], "tar.dotdot"),
    "pax absolute path": ([regular("innocent", b"x", pax={"path": "/etc/evil"})], "tar.absolute_name"),
    "pax linkpath override": ([symlink("lnk", "ok", pax={"linkpath": "/etc/shadow"})], "tar.link_escape"),
    "long name with dotdot": ([regular(LONG + "../../../../../../../../../../" * 8 + "evil", b"x")],
                              "tar.dotdot"),
    "absolute symlink": ([symlink("lnk", "/etc/passwd")], "tar.link_escape"),
    "relative symlink escaping": ([symlink("sub/lnk", "../../etc/passwd")], "tar.link_escape"),
    "symlink chain escaping once resolved": ([symlink("top", "sub/.."), symlink("sub", ".")],
                                             "tar.link_escape"),
    "symlink chain through a later link": ([symlink("up", "deep/link/.."), directory("deep/"),
                                            symlink("deep/link", "..")], "tar.link_escape"),
    "symlink loop": ([symlink("x", "y"), symlink("y", "x")], "tar.link_escape"),
    "hardlink absolute": ([hardlink("h", "/etc/passwd")], "tar.link_escape"),
    "hardlink dotdot": ([hardlink("h", "../etc/passwd")], "tar.link_escape"),
    "hardlink to no member": ([hardlink("h", "not-here")], "tar.link_escape"),
    "hardlink through a symlink": ([directory("sub/"), symlink("s", "sub"), hardlink("h", "s/x")],
                                   "tar.link_escape"),
    "write through a symlinked directory": ([directory("sub/"), symlink("d", "sub"),
                                             regular("d/x", b"x")], "tar.through_symlink"),
    "character device": ([special("dev/kmem", tarfile.CHRTYPE)], "tar.special_file"),
    "block device": ([special("sda", tarfile.BLKTYPE)], "tar.special_file"),
    "fifo": ([special("pipe", tarfile.FIFOTYPE)], "tar.special_file"),
    "duplicate disk": ([regular(DISK, b"other data")], "tar.duplicate"),
    "duplicate after normalising": ([regular("./vm.ovf", b"<x/>")], "tar.duplicate"),
    "file replaces an implied directory": ([regular("d/f", b"x"), regular("d", b"x")], "tar.duplicate"),
    "symlink replaces an implied directory": ([regular("d/f", b"x"), symlink("d", "elsewhere")],
                                              "tar.duplicate"),
    "file used as a directory": ([regular("f", b"x"), regular("f/g", b"x")], "tar.duplicate"),
    "disk name in capitals (Windows, macOS)": ([regular(DISK.upper(), b"other data")], "tar.duplicate"),
    "disk name with a trailing dot (Windows)": ([regular(DISK + ".", b"other data")], "tar.duplicate"),
    "one name in two Unicode forms (macOS)": ([regular("caf\u00e9", b"x"), regular("cafe\u0301", b"x")],
                                              "tar.duplicate"),
    "file used as a directory in another case": ([regular("f", b"x"), regular("F/g", b"x")], "tar.duplicate"),
    "file replaces a directory in another case": ([regular("d/f", b"x"), regular("D", b"x")], "tar.duplicate"),
    "too many members": ([regular(f"f{i}", b"") for i in range(300)], "tar.too_many_members"),
    "sparse, PAX 1.0, 1 PiB": ([sparse_pax("huge", 1 << 50)], "tar.sparse"),
    "sparse, PAX 0.1, 1 PiB": ([sparse_pax("huge", 1 << 50, minor="1")], "tar.sparse"),
    "sparse, old GNU, 1 PiB": ([sparse_old_gnu("huge", 1 << 50)], "tar.sparse"),
    "regular file named like the root": ([regular(".", b"x")], "tar.bad_name"),
}
