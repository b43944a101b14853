"""Importhooks sees what every tar reader sees, or rejects (issue 11).

For every fixture of :mod:`tests.tar_readers` the members importhooks reads are
compared with those CPython tarfile and GNU tar list (``tar -tvf`` and ``tar
-itvf``): for benign OVAs the lists agree and the OVA is accepted; for ambiguous
ones, importhooks rejects, and where the fixture says so the readers are shown to
disagree.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from importhooks_plugins.containers import tar_headers
from importhooks_plugins.containers.tar_rules import Violation

from importhooks import Settings, Severity, Verdict

from . import ova_images as o
from . import tar_readers as r
from .helpers import audit, codes


@pytest.fixture
def ova_settings(settings: Settings) -> Settings:
    return settings.replace(container_formats=("bare", "ova", "compressed"))


@pytest.fixture(scope="module")
def vmdk(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return o.stream_vmdk(tmp_path_factory.mktemp("vmdk") / "disk.vmdk")


def importhooks_names(path: Path) -> list[str]:
    with path.open("rb") as handle:
        members = tar_headers.scan(handle, tar_headers.HeaderLimits())
    return [member.name.decode().rstrip("/") + (f" -> {member.link.decode()}" if member.type in (b"1", b"2") else "")
            for member in members]


@pytest.mark.parametrize("case", list(r.FIXTURES))
def test_importhooks_sees_what_every_reader_sees_or_rejects(ova_settings, workdir, tmp_path, vmdk, case):
    fixture = r.FIXTURES[case]
    path = fixture.build(o.package(vmdk), tmp_path / "x.ova")
    others = r.listings(path)
    result = audit(ova_settings, path, container_format="ova", disk_format="vmdk")
    assert list(workdir.iterdir()) == []
    if fixture.code is None:
        assert result.verdict is Verdict.ACCEPT, result.findings
        assert [f for f in result.findings if f.severity is Severity.ERROR] == []
        ours = importhooks_names(path)
        assert ours[:3] == ["vm.ovf", "vm.mf", o.DISK]
        for reader, names in others.items():
            assert names == ours, (reader, names, ours)
    else:
        assert result.verdict is Verdict.REJECT
        assert [f.code for f in result.findings if f.severity is Severity.ERROR] == [fixture.code], result.findings
        assert result.findings[-1].stage == "sanitize" and len(result.layers) == 1
        if fixture.disagree:
            assert len({str(names) for names in others.values()}) > 1 or any(
                isinstance(names, str) for names in others.values()), others


@pytest.mark.parametrize(("case", "names"), [("zip appended", [o.DISK]), ("empty zip in a member's padding", [])])
def test_a_zip_hidden_where_no_tar_reader_looks_is_what_zip_readers_see(ova_settings, workdir, tmp_path, vmdk, case,
                                                                        names):
    """The tar readers stop at the end marker and skip padding; a zip reader finds the zip hidden there."""
    path = r.FIXTURES[case].build(o.package(vmdk), tmp_path / "x.ova")
    with zipfile.ZipFile(path) as hidden:
        assert hidden.namelist() == names
    result = audit(ova_settings, path, container_format="ova", disk_format="vmdk")
    assert codes(result) == [r.FIXTURES[case].code]
    assert str(tmp_path) not in result.findings[0].message and result.findings[0].detail


def outcome(run: Callable[[], list[tar_headers.Member]]) -> object:
    try:
        return run()
    except Violation as exc:
        return exc.code.code


@pytest.mark.parametrize("chunk", [1, 17, 512, 64 << 10])
def test_header_scan_takes_any_chunk_size(tmp_path, chunk):
    """Fed the whole archive in chunks (no seeking), the scan finds what the seeking scan finds, fixture by fixture."""
    limits = tar_headers.HeaderLimits()
    seen = set()
    for number, fixture in enumerate(r.FIXTURES.values()):
        path = fixture.build(o.package(b"KDMV" + bytes(1020)), tmp_path / f"{number}.ova")
        data = path.read_bytes()

        def fed(data: bytes = data) -> list[tar_headers.Member]:
            parser = tar_headers.HeaderScan(limits)
            for start in range(0, len(data), chunk):
                parser.feed(data[start: start + chunk])
            parser.finish()
            return parser.members

        with path.open("rb") as handle:
            expected = outcome(lambda handle=handle: tar_headers.scan(handle, limits))
        assert outcome(fed) == expected, path
        seen.add(str(expected) if isinstance(expected, str) else "members")
    assert {"members", "tar.global_header", "tar.trailing_data", "tar.ambiguous_header"} <= seen


@pytest.mark.parametrize("minor", ["0", "1"])
def test_a_sparse_disk_is_refused_even_when_sparse_members_are_allowed(ova_settings, workdir, tmp_path, minor):
    """Readers expand a crafted sparse map differently: the disk is never taken from one."""
    descriptor = o.ovf_descriptor([(o.DISK, "raw")])
    path = o.ova(tmp_path / "x.ova", [o.regular("vm.ovf", descriptor), o.sparse_pax(o.DISK, 1 << 20, minor=minor)])
    result = audit(ova_settings.replace(plugin={"ova": {"allow_sparse": True}}), path, container_format="ova",
                   disk_format="raw")
    assert codes(result) == ["tar.sparse"] and "disk member" in (result.findings[-1].detail or "")
    assert list(workdir.iterdir()) == []


def test_old_gnu_sparse_extension_blocks_are_passed_over(tmp_path):
    """An old GNU sparse header continued by an extension block: the scan finds the member after it, as tarfile."""
    sparse = bytearray(o.sparse_old_gnu("huge", 1 << 20).raw)
    sparse[482] = 1  # one extension block follows the header, before the data
    o.fix_checksum(sparse, 0)
    extension = bytearray(BLOCK_BYTES)
    extension[0:24] = b"%011o\0%011o\0" % (0, 0)
    raw = bytes(sparse[:BLOCK_BYTES]) + bytes(extension) + bytes(sparse[BLOCK_BYTES:])
    path = o.ova(tmp_path / "x.tar", [o.Member(None, raw=raw), o.regular("after", b"x")], fmt=tarfile.GNU_FORMAT)
    with path.open("rb") as handle:
        members = tar_headers.scan(handle, tar_headers.HeaderLimits(allow_sparse=True))
    assert [(m.name, m.sparse) for m in members] == [(b"huge", True), (b"after", False)]
    assert r.tarfile_names(path) == ["huge", "after"]


@hsettings(derandomize=True, max_examples=80, deadline=None)
@given(data=st.data())
def test_damaged_headers_end_in_a_violation_at_any_chunk_size(data):
    """Bytes of a benign archive changed (checksums often mended): the scan ends in members or a Violation."""
    original = CORPUS
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8), label="edits")):
        header = data.draw(st.sampled_from(range(0, len(original) - BLOCK_BYTES, BLOCK_BYTES)), label="block")
        mutated[header + data.draw(st.integers(0, BLOCK_BYTES - 1), label="offset")] = data.draw(
            st.integers(0, 255), label="byte")
        if data.draw(st.booleans(), label="mend"):
            o.fix_checksum(mutated, header)
    chunk = data.draw(st.sampled_from([1, 17, 512, 64 << 10]), label="chunk")
    limits = tar_headers.HeaderLimits(allow_sparse=data.draw(st.booleans(), label="sparse"))
    whole = bytes(mutated)

    def fed() -> list[tar_headers.Member]:
        parser = tar_headers.HeaderScan(limits)
        for start in range(0, len(whole), chunk):
            parser.feed(whole[start: start + chunk])
        parser.finish()
        return parser.members

    assert outcome(fed) == outcome(lambda: tar_headers.scan(io.BytesIO(whole), limits))


def _corpus() -> bytes:
    """A small archive with one member of each kind the scan handles: ustar, PAX, GNU long name, link, directory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for member in [o.regular("vm.ovf", b"<x/>"), o.directory("d/"), o.regular("d/" + "n" * 120, b"y" * 700),
                       o.symlink("l", "d"), o.hardlink("h", "vm.ovf")]:
            assert member.info is not None
            archive.addfile(member.info, io.BytesIO(member.data or b""))
    return buffer.getvalue()


CORPUS = _corpus()
BLOCK_BYTES = 512
