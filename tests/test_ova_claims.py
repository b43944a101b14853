"""Findings fit what the user claimed (issue 12): a ``.tar.gz`` claimed ``compressed`` is not an OVA.

The ``ova`` plugin unpacks a tar archive found inside a compressed upload only when it is
an OVA (its first member is the descriptor). Any other tar under the ``compressed`` claim
is left packed, and ``content_type`` rejects it as a tar nobody unpacks: no finding talks
about an OVF descriptor the user never mentioned.
"""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from importhooks import Settings, Verdict

from . import ova_images as o
from .helpers import audit, codes


@pytest.fixture
def ova_settings(settings: Settings) -> Settings:
    return settings.replace(container_formats=("bare", "ova", "compressed"))


def tar_gz(members: list[o.Member]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for member in members:
            assert member.info is not None
            archive.addfile(member.info, io.BytesIO(member.data or b""))
    return gzip.compress(buffer.getvalue())


@pytest.mark.parametrize("members", [[o.regular("disk.raw", bytes(64 << 10))],
                                     [o.directory("disk/"), o.regular("disk/disk.raw", b"x" * 4096)]],
                         ids=["a disk", "a directory first"])
def test_a_tar_gz_claimed_compressed_is_not_called_an_ova(ova_settings, workdir, tmp_path, members):
    path = tmp_path / "disk.tar.gz"
    path.write_bytes(tar_gz(members))
    result = audit(ova_settings, path, container_format="compressed", disk_format="raw")
    assert result.verdict is Verdict.REJECT
    assert codes(result) == ["container.not_unpacked"], result.findings
    assert all("OVA" not in f.message and "OVF" not in f.message and "descriptor" not in f.message
               for f in result.findings)
    assert "tar" in result.findings[0].message and list(workdir.iterdir()) == []


def test_the_same_tar_claimed_ova_lacks_its_descriptor(ova_settings, workdir, tmp_path):
    path = tmp_path / "disk.ova"
    path.write_bytes(gzip.decompress(tar_gz([o.regular("disk.raw", bytes(64 << 10))])))
    result = audit(ova_settings, path, container_format="ova", disk_format="raw")
    assert codes(result) == ["ova.no_descriptor"]


def test_a_hostile_tar_gz_claimed_compressed_is_refused_as_an_archive(ova_settings, workdir, tmp_path):
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(tar_gz([o.regular("../../etc/evil", b"x"), o.regular("disk.raw", b"x")]))
    result = audit(ova_settings, path, container_format="compressed", disk_format="raw")
    assert codes(result) == ["tar.dotdot"] and result.verdict is Verdict.REJECT
    assert "archive" in result.findings[0].message and "OVA" not in result.findings[0].message
