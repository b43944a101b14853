"""content_type: containers with and without a claim, and containers other readers open but nothing here unpacks."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import libarchive
import pytest

from importhooks import Settings, Verdict

from . import images
from .helpers import audit, codes

DISK = bytes(4096) + bytes(range(256)) * 16


def _libarchive(path: Path, archive_format: str, filter_name: str | None) -> Path:
    """``DISK`` as ``disk.raw`` written by libarchive, the reader that would open it again."""
    with libarchive.file_writer(str(path), archive_format, filter_name) as archive:
        archive.add_file_from_memory("disk.raw", len(DISK), DISK)
    return path


#: (name content_type gives it, libarchive format, libarchive filter). A "raw" format is the bare stream.
UNPACKED_ELSEWHERE = [
    ("lzma", "raw", "lzma"),
    ("compress", "raw", "compress"),
    ("lz4", "raw", "lz4"),
    ("lzip", "raw", "lzip"),
    ("7z", "7zip", None),
    ("ar", "ar_svr4", None),
    ("cpio", "cpio_newc", None),
    ("xar", "xar", None),
]
COMPRESSION = {"lzma", "compress", "lz4", "lzip", "lzop"}


@pytest.mark.parametrize(("name", "archive_format", "filter_name"), UNPACKED_ELSEWHERE,
                         ids=[case[0] for case in UNPACKED_ELSEWHERE])
def test_containers_other_readers_open_are_never_a_raw_disk(settings, tmp_path, name, archive_format, filter_name):
    path = _libarchive(tmp_path / f"disk.{name}", archive_format, filter_name)
    if archive_format != "raw":  # libarchive sees the disk inside: importhooks must not see a raw disk instead
        with libarchive.file_reader(str(path)) as archive:
            assert [entry.pathname for entry in archive] == ["disk.raw"]
    unclaimed = audit(settings, path)
    assert unclaimed.verdict is Verdict.REJECT
    assert codes(unclaimed) == ["container.not_unpacked"]
    assert unclaimed.findings[0].message == f"The image is a {name} file that this cloud cannot unpack."
    assert unclaimed.detected["container_format"] == name
    assert "disk_format" not in unclaimed.detected  # never taken for a raw disk
    bare = audit(settings, path, container_format="bare", disk_format="raw")
    assert codes(bare) == ["container.claim_mismatch"]
    assert bare.findings[0].message == f"The image looks like a {name} file, not a bare disk."
    compressed = audit(settings, path, container_format="compressed")
    assert codes(compressed) == (["container.not_unpacked"] if name in COMPRESSION else ["container.claim_mismatch"])


def test_lzop_is_found_by_its_magic(settings, tmp_path):
    path = tmp_path / "disk.lzo"  # libmagic names lzop only in its description: content_type checks the magic
    path.write_bytes(b"\x89LZO\x00\r\n\x1a\n" + bytes(range(256)) * 64)
    assert codes(audit(settings, path)) == ["container.not_unpacked"]
    assert codes(audit(settings, path, container_format="bare")) == ["container.claim_mismatch"]


def test_unclaimed_containers_are_unpacked_when_accepted(settings, tmp_path):
    assert settings.container_formats == ("bare", "ova", "compressed") == Settings().container_formats
    raw = images.raw_image(tmp_path / "disk.raw")
    packed = tmp_path / "disk.raw.gz"
    packed.write_bytes(gzip.compress(raw.read_bytes()))
    result = audit(settings, packed)
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert [layer.kind for layer in result.layers] == ["staged", "decompressed"]
    assert result.detected["disk_format"] == "raw"


@pytest.mark.parametrize(("accepted", "make", "message"), [
    (("bare",), "gzip", "The image is a gzip file; this cloud accepts only these container formats: bare."),
    (("bare", "compressed"), "tar", "The image is a tar file; this cloud accepts only these container formats: "
                                    "bare, compressed."),
    (("compressed",), "raw", "The image is a bare disk; this cloud accepts only these container formats: "
                             "compressed."),
])
def test_unclaimed_container_outside_the_settings(settings, tmp_path, accepted, make, message):
    raw = images.raw_image(tmp_path / "disk.raw")
    path = raw
    if make == "gzip":
        path = tmp_path / "disk.gz"
        path.write_bytes(gzip.compress(raw.read_bytes()))
    elif make == "tar":
        path = tmp_path / "disk.tar"
        with tarfile.open(path, "w") as archive:
            archive.add(raw, arcname="disk.raw")
    result = audit(settings.replace(container_formats=accepted), path)
    assert codes(result) == ["container.not_allowed"]
    assert result.findings[0].message == message
    assert result.findings[0].stage == "inspect"
    assert "None" not in (result.findings[0].detail or "")
    assert len(result.layers) == 1  # rejected before anything was unpacked


def test_an_ovf_claim_is_a_disk_claim(settings, tmp_path):
    with_ovf = settings.replace(container_formats=("bare", "ovf", "ova", "compressed"))
    raw = images.raw_image(tmp_path / "disk.raw")
    accepted = audit(with_ovf, raw, container_format="ovf")
    assert accepted.verdict is Verdict.ACCEPT, accepted.findings
    packed = tmp_path / "disk.gz"
    packed.write_bytes(gzip.compress(raw.read_bytes()))
    tar = tmp_path / "vm.tar"
    with tarfile.open(tar, "w") as archive:
        archive.add(raw, arcname="disk.raw")
    for path, name in ((packed, "gzip"), (tar, "tar")):
        result = audit(with_ovf, path, container_format="ovf")
        assert codes(result) == ["container.claim_mismatch"]
        assert result.findings[0].message == f"The image looks like a {name} file, not a bare disk."
        assert result.findings[0].detail == f"claimed 'ovf', libmagic sees {name}"
        assert len(result.layers) == 1  # nothing was unpacked
