"""OVAs that tar readers may read differently, and what libarchive, CPython tarfile and GNU tar list in each.

Every fixture is a benign package (:func:`ova_images.package`) written by GNU tar or
CPython tarfile, with one thing added: more members, or headers made by hand where no
tool writes them (tarfile's own header builders, then bytes patched and the checksum
mended). Benign ones must be read alike by every reader and accepted; ambiguous ones
rejected. The listings run the real readers: ``tarfile.open`` (with and without
``ignore_zeros``), GNU tar's ``tar -tvf`` and ``tar -itvf``, and libarchive (as
libarchive-c lists it, tar formats only, as the ``ova`` plugin reads).
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import libarchive

from . import ova_images as o

BLOCK = tarfile.BLOCKSIZE
Build = Callable[[o.Package, Path], Path]


def pax_blocks(records: dict[str, str], kind: bytes = tarfile.XHDTYPE) -> bytes:
    """A PAX extended (``x``) or global (``g``) header with its records, as tarfile writes them."""
    return tarfile.TarInfo._create_pax_generic_header(records, kind, "utf-8")  # type: ignore[attr-defined]


def long_name_blocks(name: str, kind: bytes = tarfile.GNUTYPE_LONGNAME) -> bytes:
    """A GNU long name (``L``) or long link (``K``) header and its data."""
    return tarfile.TarInfo._create_gnu_long_header(name, kind, "utf-8", "strict")  # type: ignore[attr-defined]


def header(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, fmt: int = tarfile.USTAR_FORMAT,
           size: int | None = None, link: str = "", patch: dict[int, bytes] | None = None) -> bytes:
    """One member's header block (``patch``: bytes put at offsets, checksum mended) and its padded data."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mtime, info.mode = kind, len(data), link, 1_700_000_000, 0o644
    block = bytearray(info.tobuf(fmt, "utf-8", "strict")[:BLOCK])
    if size is not None:
        block[124:136] = b"%011o\0" % size
    for offset, value in (patch or {}).items():
        block[offset: offset + len(value)] = value
    o.fix_checksum(block, 0)
    return bytes(block) + data + b"\0" * (-len(data) % BLOCK)


def with_raw(pack: o.Package, path: Path, raw: bytes, *, fmt: int = tarfile.PAX_FORMAT) -> Path:
    """The package with ``raw`` blocks (headers made by hand) after its members."""
    pack.extra = [*pack.extra, o.Member(None, raw=raw)]
    return pack.write(path, fmt=fmt)


def gnu_tar(pack: o.Package, path: Path, *options: str) -> Path:
    """The package's members written as files and archived in order by GNU tar."""
    folder = path.with_suffix(".d")
    folder.mkdir()
    names = []
    for member in pack.members():
        assert member.info is not None and member.data is not None
        (folder / member.info.name).parent.mkdir(parents=True, exist_ok=True)
        (folder / member.info.name).write_bytes(member.data)
        names.append(member.info.name)
    subprocess.run(["tar", "-cf", str(path), "--owner=0", "--group=0", "--mtime=@1700000000", *options,
                    "-C", str(folder), *names], check=True)
    return path


def appended(pack: o.Package, path: Path, tail: bytes) -> Path:
    pack.write(path)
    with path.open("ab") as archive:
        archive.write(tail)
    return path


def second_archive(member: o.Member) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        assert member.info is not None
        archive.addfile(member.info, io.BytesIO(member.data or b""))
    return buffer.getvalue()


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(o.DISK, b"another disk")
    return buffer.getvalue()


def signed_checksum(pack: o.Package, path: Path) -> Path:
    """A ustar member whose name has bytes over 127 and whose checksum is the signed sum (old Sun tar)."""
    block = bytearray(header("caf\u00e9.txt", b"x"))
    block[148:156] = b" " * 8
    signed = sum(byte - 256 if byte > 127 else byte for byte in block[:BLOCK])
    assert signed != sum(block[:BLOCK])
    block[148:156] = b"%06o\0 " % signed
    return with_raw(pack, path, bytes(block))


@dataclass(frozen=True)
class Fixture:
    """How to build one OVA, the code that must reject it (None: accepted), and whether tarfile or GNU tar
    (plain or ``-i``) list other members than libarchive reads (``disagree``)."""

    build: Build
    code: str | None = None
    disagree: bool = False


_EVIL = o.regular(o.DISK, b"not the disk that was checked")
_ZERO = b"\0" * BLOCK
EMPTY_ZIP = b"PK\x05\x06" + bytes(18)  # an end of central directory record: a zip with no file

FIXTURES: dict[str, Fixture] = {
    # -- benign: every reader lists the same members ---------------------------------------------
    "tarfile pax": Fixture(lambda p, d: p.write(d)),
    "tarfile gnu, long name": Fixture(lambda p, d: (p.extra.append(o.regular(o.LONG + "notes", b"x")),
                                                    p.write(d, fmt=tarfile.GNU_FORMAT))[1]),
    "tarfile ustar, prefix": Fixture(lambda p, d: (p.extra.append(o.regular(o.LONG + "notes", b"x")),
                                                   p.write(d, fmt=tarfile.USTAR_FORMAT))[1]),
    "tarfile pax, directories, links, a non-ASCII name": Fixture(lambda p, d: (p.extra.extend([
        o.directory("extras/"), o.regular("extras/caf\u00e9", b"x"), o.symlink("extras/disk", "../" + o.DISK),
        o.hardlink("extras/copy", o.DISK)]), p.write(d))[1]),
    "tarfile global header, comment only": Fixture(lambda p, d: with_raw(
        p, d, pax_blocks({"comment": "made by hand"}, tarfile.XGLTYPE) + header("notes", b"x"))),
    "gnu tar pax": Fixture(lambda p, d: gnu_tar(p, d, "--format=pax")),
    "gnu tar gnu": Fixture(lambda p, d: gnu_tar(p, d, "--format=gnu")),
    "gnu tar pax, global comment": Fixture(lambda p, d: gnu_tar(p, d, "--format=pax",
                                                                "--pax-option=comment=made by GNU tar")),
    "gnu tar ustar": Fixture(lambda p, d: gnu_tar(p, d, "--format=ustar")),
    "gnu tar v7": Fixture(lambda p, d: gnu_tar(p, d, "--format=v7")),
    "gnu tar pax, long name": Fixture(lambda p, d: (p.extra.append(o.regular(o.LONG + "notes", b"x")),
                                                    gnu_tar(p, d, "--format=pax"))[1]),
    "gnu tar gnu, long name": Fixture(lambda p, d: (p.extra.append(o.regular(o.LONG + "notes", b"x")),
                                                    gnu_tar(p, d, "--format=gnu"))[1]),
    "gnu tar ustar, prefix": Fixture(lambda p, d: (p.extra.append(o.regular(o.LONG + "notes", b"x")),
                                                   gnu_tar(p, d, "--format=ustar"))[1]),
    "base-256 size": Fixture(lambda p, d: with_raw(p, d, header(
        "notes", b"y" * 700, fmt=tarfile.GNU_FORMAT, patch={124: b"\x80" + (700).to_bytes(11, "big")}))),
    "signed checksum": Fixture(signed_checksum),
    "hard link to the disk": Fixture(lambda p, d: (p.extra.append(o.hardlink("copy.vmdk", o.DISK)), p.write(d))[1]),
    "zeros after the end": Fixture(lambda p, d: appended(p, d, _ZERO * 40)),
    "octal fields with leading spaces": Fixture(lambda p, d: with_raw(p, d, header(
        "notes", b"x" * 600, patch={100: b"   644 \0", 124: b"       1130\0"}))),
    # -- ambiguous: rejected -----------------------------------------------------------------------
    "global header renames a later member to the disk": Fixture(lambda p, d: with_raw(
        p, d, pax_blocks({"path": o.DISK}, tarfile.XGLTYPE) + header("notes", b"evil")),
        "tar.global_header", disagree=True),
    "gnu tar's own global header renames every member": Fixture(lambda p, d: gnu_tar(
        p, d, "--format=pax", f"--pax-option=path={o.DISK}"), "tar.global_header", disagree=True),
    "global header with a traversal path": Fixture(lambda p, d: with_raw(
        p, d, pax_blocks({"path": "../../etc/cron.d/evil"}, tarfile.XGLTYPE) + header("notes", b"x")),
        "tar.global_header", disagree=True),
    "global header sets a size": Fixture(lambda p, d: with_raw(
        p, d, pax_blocks({"size": "0"}, tarfile.XGLTYPE) + header("notes", b"x" * 600)),
        "tar.global_header", disagree=True),
    "member after the end-of-archive marker": Fixture(lambda p, d: appended(p, d, second_archive(_EVIL)),
                                                      "tar.trailing_data", disagree=True),
    "member after a lone zero block": Fixture(lambda p, d: with_raw(p, d, _ZERO + header(o.DISK, b"evil")),
                                              "tar.trailing_data", disagree=True),
    "zip appended": Fixture(lambda p, d: appended(p, d, zip_bytes()), "tar.trailing_data"),
    "empty zip in a member's padding": Fixture(lambda p, d: with_raw(
        p, d, header("notes", b"x" * 100)[:BLOCK + 100] + EMPTY_ZIP.ljust(BLOCK - 100, b"\0")), "tar.padding_data"),
    "too many zeros after the end": Fixture(lambda p, d: appended(p, d, _ZERO * 2100), "tar.trailing_data"),
    "duplicate disk": Fixture(lambda p, d: (p.extra.append(_EVIL), p.write(d))[1], "tar.duplicate"),
    "second descriptor": Fixture(lambda p, d: (p.extra.append(o.regular("other.ovf", p.descriptor.data or b"")),
                                               p.write(d))[1], "ova.multiple_descriptors"),
    "GNU long name and PAX path": Fixture(lambda p, d: with_raw(
        p, d, long_name_blocks(o.DISK) + pax_blocks({"path": "notes"}) + header("n", b"x")),
        "tar.ambiguous_header", disagree=True),
    "two GNU long names": Fixture(lambda p, d: with_raw(
        p, d, long_name_blocks(o.DISK) + long_name_blocks("notes") + header("n", b"x")),
        "tar.ambiguous_header", disagree=True),
    "two PAX headers for one member": Fixture(lambda p, d: with_raw(
        p, d, pax_blocks({"path": o.DISK}) + pax_blocks({"path": "notes"}) + header("n", b"x")),
        "tar.ambiguous_header", disagree=True),
    "PAX path repeated": Fixture(lambda p, d: with_raw(
        p, d, header("././@PaxHeader", b"14 path=notes\n14 path=other\n", kind=tarfile.XHDTYPE) + header("n", b"x")),
        "tar.ambiguous_header"),
    "PAX size differs from the header": Fixture(lambda p, d: with_raw(
        p, d, pax_blocks({"size": "512"}) + header("notes", b"x" * 512, size=0)), "tar.ambiguous_header"),
    "data after a symbolic link header": Fixture(lambda p, d: with_raw(
        p, d, header("lnk", header("hidden", b"x")[:BLOCK], kind=tarfile.SYMTYPE, link="notes")),
        "tar.ambiguous_header", disagree=True),
    "regular file named with a trailing slash": Fixture(lambda p, d: with_raw(
        p, d, header("notes/", b"x", kind=tarfile.AREGTYPE)), "tar.ambiguous_header", disagree=True),
    "prefix field in a GNU header": Fixture(lambda p, d: with_raw(
        p, d, header("notes", b"x", fmt=tarfile.GNU_FORMAT, patch={345: b"hidden"})),
        "tar.ambiguous_header", disagree=True),
    "prefix field in a v7 header": Fixture(lambda p, d: with_raw(
        p, d, header("notes", b"x", patch={257: b"\0" * 8, 345: b"hidden"})), "tar.ambiguous_header",
        disagree=True),
    "size field with a space inside": Fixture(lambda p, d: with_raw(
        p, d, header("notes", b"x" * 600, patch={124: b"0000 001130\0"})), "tar.ambiguous_header", disagree=True),
    "digits after a NUL in the size field": Fixture(lambda p, d: with_raw(
        p, d, header("notes", b"x" * 600, patch={124: b"0000000\0" + b"1130"})), "tar.ambiguous_header",
        disagree=True),
    "GNU long link and PAX linkpath": Fixture(lambda p, d: with_raw(
        p, d, long_name_blocks(o.DISK, tarfile.GNUTYPE_LONGLINK) + pax_blocks({"linkpath": "notes"})
        + header("lnk", kind=tarfile.SYMTYPE, link="x")), "tar.ambiguous_header", disagree=True),
    "PAX path and GNU.sparse.name": Fixture(lambda p, d: with_raw(
        p, d, pax_blocks({"GNU.sparse.name": o.DISK, "path": "notes"}) + header("n", b"x")),
        "tar.ambiguous_header", disagree=True),
    "data after a hard link header": Fixture(lambda p, d: with_raw(
        p, d, header("copy", header("hidden", b"x")[:BLOCK], kind=tarfile.LNKTYPE, link=o.DISK)),
        "tar.ambiguous_header"),
    "data after a directory header": Fixture(lambda p, d: with_raw(
        p, d, header("dir/", header("hidden", b"x")[:BLOCK], kind=tarfile.DIRTYPE)), "tar.ambiguous_header"),
    "device number field that is not a number": Fixture(lambda p, d: with_raw(
        p, d, header("notes", b"x", patch={329: b"junk\0\0\0\0"}) + header("hidden", b"y")),
        "tar.ambiguous_header", disagree=True),
    "volume label type": Fixture(lambda p, d: with_raw(p, d, header("label", b"", kind=b"V")),
                                 "tar.ambiguous_header", disagree=True),
    "negative base-256 size": Fixture(lambda p, d: with_raw(p, d, header(
        "notes", fmt=tarfile.GNU_FORMAT, patch={124: b"\xff" * 12})), "tar.ambiguous_header", disagree=True),
    "hdrcharset BINARY": Fixture(lambda p, d: with_raw(
        p, d, pax_blocks({"hdrcharset": "BINARY", "path": "notes"}) + header("n", b"x")), "tar.ambiguous_header"),
    "hdrcharset hidden in a comment": Fixture(lambda p, d: with_raw(
        p, d, pax_blocks({"comment": "x\n21 hdrcharset=BINARY\n", "path": "notes"}) + header("n", b"x")),
        "tar.ambiguous_header"),
    "extended header before the end": Fixture(lambda p, d: with_raw(p, d, pax_blocks({"path": "notes"})),
                                              "tar.ambiguous_header", disagree=True),
}


# -- what the other readers list ------------------------------------------------------------------

def _entry(name: str, link: str | None) -> str:
    """How a listing shows one member: its name, and ``-> target`` for a link."""
    name = name.rstrip("/")
    return f"{name} -> {link}" if link else name


def tarfile_names(path: Path, *, ignore_zeros: bool = False) -> list[str] | str:
    """CPython tarfile's members (names, link targets), or the error it raises."""
    try:
        with tarfile.open(path, ignore_zeros=ignore_zeros) as archive:
            return [_entry(m.name, m.linkname if m.issym() or m.islnk() else None) for m in archive.getmembers()]
    except (tarfile.TarError, ValueError) as exc:
        return f"error: {exc}"


def gnu_tar_names(path: Path, *, ignore_zeros: bool = False) -> list[str] | str:
    """GNU tar's member names from ``tar -tvf`` (``-itvf``), or its error when it exits non-zero."""
    command = ["tar", "-tv", "--full-time", "--numeric-owner", "--quoting-style=literal", "-f", str(path)]
    if ignore_zeros:
        command.insert(1, "-i")
    done = subprocess.run(command, capture_output=True, env={"LC_ALL": "C.UTF-8"})
    if done.returncode:
        return f"error {done.returncode}: {done.stderr.decode(errors='replace').strip()}"
    names = []
    for line in done.stdout.decode("utf-8", "surrogateescape").splitlines():
        name, link = line.split(None, 5)[5], None
        if line.startswith("l"):
            name, _, link = name.rpartition(" -> ")
        elif line.startswith("h"):
            name, _, link = name.rpartition(" link to ")
        names.append(_entry(name, link))
    return names


def libarchive_names(path: Path) -> list[str] | str:
    """libarchive's member names (tar formats only, as the ova plugin reads), or its error."""
    try:
        with libarchive.file_reader(str(path), "tar") as archive:
            return [_entry(str(entry.pathname), entry.linkpath if entry.issym or entry.islnk else None)
                    for entry in archive]
    except libarchive.ArchiveError as exc:
        return f"error: {exc}"


def listings(path: Path) -> dict[str, list[str] | str]:
    return {"libarchive": libarchive_names(path), "tarfile": tarfile_names(path),
            "tarfile ignore_zeros": tarfile_names(path, ignore_zeros=True),
            "tar -tvf": gnu_tar_names(path), "tar -itvf": gnu_tar_names(path, ignore_zeros=True)}


def _with_members(extra: list[o.Member]) -> Build:
    def build(pack: o.Package, path: Path) -> Path:
        pack.extra = [*pack.extra, *extra]
        return pack.write(path)

    return build


#: The member rules' attacks (:data:`ova_images.MEMBER_ATTACKS`) are OVA fixtures too: every reader is
#: run on them, and importhooks rejects each with its code.
FIXTURES.update({f"member rule: {case}": Fixture(_with_members(extra), code)
                 for case, (extra, code) in o.MEMBER_ATTACKS.items()})
