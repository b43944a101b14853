"""The foundation's built-in plugins on real data: claims, size limits, content type, disk format."""

from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
from pathlib import Path

import pytest
import zstandard

from importhooks import Claims, ImportRequest, Pipeline, Verdict
from importhooks.settings import PluginSettings

from . import images
from .helpers import codes


def audit(settings, path: Path, **claims):
    return Pipeline.from_settings(settings).run(ImportRequest(path=path, claims=Claims(**claims)))


def test_benign_raw_and_qcow2_are_accepted_with_facts(settings, raw_file, tmp_path):
    result = audit(settings, raw_file, disk_format="raw", container_format="bare")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.detected["disk_format"] == "raw" and result.detected["container_format"] == "bare"
    qcow2 = images.qcow2_image(tmp_path / "ok.qcow2", "1G")
    result = audit(settings, qcow2, disk_format="qcow2")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.detected["virtual_size"] == 1 << 30
    assert result.checksums and result.checksums.size == qcow2.stat().st_size


def test_backing_file_is_rejected_even_when_claimed_raw(settings, backing_qcow2):
    result = audit(settings, backing_qcow2, disk_format="raw")
    assert set(codes(result)) == {"qcow2.backing_file", "format.claim_mismatch"}
    assert all("/etc/passwd" not in f.message for f in result.findings)


def test_raw_claimed_as_qcow2_is_a_mismatch(settings, raw_file):
    assert codes(audit(settings, raw_file, disk_format="qcow2")) == ["format.claim_mismatch"]


def test_virtual_size_over_the_limit(settings, tmp_path):
    big = images.qcow2_image(tmp_path / "big.qcow2", "2T")
    result = audit(settings, big, disk_format="qcow2")
    assert codes(result) == ["format.virtual_size_too_large"]
    assert "1.0 TiB" in result.findings[0].message


def test_claims_outside_the_settings_are_rejected_before_reading(settings, raw_file):
    result = audit(settings.replace(require_os_type=True), raw_file, disk_format="ploop", container_format="rar")
    assert set(codes(result)) == {"claims.disk_format_not_allowed", "claims.container_format_not_allowed",
                                  "claims.os_type_missing"}
    assert all(f.stage == "pre_validate" for f in result.findings)
    assert result.layers[0].facts == {}  # nothing was inspected
    bad_os = audit(settings, raw_file, os_type="beos")
    assert codes(bad_os) == ["claims.os_type_not_allowed"]
    assert "linux, windows" in bad_os.findings[0].message


def test_empty_and_oversized_uploads(settings, tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert codes(audit(settings, empty)) == ["data.empty"]
    small_limit = settings.replace(max_upload_bytes=1000)
    assert codes(audit(small_limit, images.raw_image(tmp_path / "r", 2000))) == ["data.too_large"]


def _compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "bzip2":
        return bz2.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz", "zstd"])
def test_compressed_data_claimed_bare_names_the_container(settings, tmp_path, kind):
    path = tmp_path / "disk.bin"
    path.write_bytes(_compress(kind, b"\0" * 100000))
    result = audit(settings, path, container_format="bare")
    assert "container.claim_mismatch" in codes(result)
    assert kind in next(f.message for f in result.findings if f.code == "container.claim_mismatch")


def test_container_nobody_unpacks_is_rejected_in_finalize(settings, tmp_path):
    disk = images.raw_image(tmp_path / "disk.raw", 4096)
    tar = tmp_path / "image.ova"
    with tarfile.open(tar, "w") as archive:
        archive.add(disk, arcname="disk.raw")
    bare_only = settings.replace(container_formats=("bare",))
    assert codes(audit(bare_only, tar, container_format="ova")) == ["claims.container_format_not_allowed"]
    # Fail closed: with the plugin that unpacks OVAs disabled, the tar is never stored unchecked.
    without_ova = settings.replace(container_formats=("bare", "ova"),
                                   plugins=PluginSettings(entry_points=False, disabled=("ova",)))
    result = audit(without_ova, tar, container_format="ova")
    assert codes(result) == ["container.not_unpacked"]
    assert result.findings[0].stage == "finalize"


@pytest.mark.parametrize(("claim", "content", "named"), [
    ("compressed", "raw", "a bare disk"),
    ("ova", "gzip", "a gzip file"),
])
def test_container_claims_must_match_the_data(settings, tmp_path, claim, content, named):
    path = tmp_path / "data"
    raw = b"\0" * 100000
    path.write_bytes(raw if content == "raw" else _compress(content, raw))
    result = audit(settings.replace(container_formats=("bare", "ova", "compressed")), path, container_format=claim)
    mismatch = [f for f in result.findings if f.code == "container.claim_mismatch"]
    assert mismatch and named in mismatch[0].message and claim in mismatch[0].message


def test_the_disk_claim_is_held_to_the_disk_inside_the_container(settings, tmp_path):
    path = tmp_path / "disk.gz"
    path.write_bytes(gzip.compress(b"\0" * 100000))
    allowed = settings.replace(container_formats=("bare", "compressed"))
    result = audit(allowed, path, disk_format="raw", container_format="compressed")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert [layer.facts["container_format"] for layer in result.layers] == ["gzip", "bare"]
    mismatch = audit(allowed, path, disk_format="qcow2", container_format="compressed")
    assert codes(mismatch) == ["format.claim_mismatch"]
    assert mismatch.findings[0].message == "The image is raw, not qcow2 as the request says."


def test_zip_based_formats_are_zips(settings, tmp_path):
    import zipfile

    path = tmp_path / "book.epub"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mimetype", "application/epub+zip")  # libmagic: application/epub+zip
        archive.writestr("disk.raw", b"\0" * 4096)
    result = audit(settings, path, container_format="bare")
    assert result.layers[0].facts["container_format"] == "zip"
    assert "container.claim_mismatch" in codes(result)
