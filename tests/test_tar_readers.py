"""Importhooks sees what every tar reader sees, or rejects (issue 11).

For every fixture of :mod:`tests.tar_readers` the members importhooks reads are
compared with those CPython tarfile and GNU tar list (``tar -tvf`` and ``tar
-itvf``): for benign OVAs the lists agree and the OVA is accepted; for ambiguous
ones, importhooks rejects, and where the fixture says so the readers are shown to
disagree.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from importhooks_plugins import tar_headers
from importhooks_plugins.tar_rules import Violation

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
