"""The ``ova`` plugin on real archives: benign OVAs unpack and are inspected as disks; every attack is refused.

Archives are written with tarfile (every hostile member is one more member of an
otherwise valid package), disks with qemu-img, and read by the real libarchive; no
mocks. Every run must end in a verdict with the expected code, never
``pipeline.plugin_failed``, with the run's temporary directory empty afterwards.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from importhooks import Claims, ImportRequest, Pipeline, Settings, Severity, Verdict
from importhooks.settings import PluginSettings

from . import ova_images as o
from . import vmdk_images
from .helpers import codes

DISK = o.DISK


@pytest.fixture
def ova_settings(settings: Settings) -> Settings:
    return settings.replace(container_formats=("bare", "ova", "compressed"))


@pytest.fixture(scope="module")
def vmdk(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return o.stream_vmdk(tmp_path_factory.mktemp("vmdk") / "disk.vmdk")


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return o.qcow2_disk(tmp_path_factory.mktemp("qcow2") / "disk.qcow2")


def audit(settings: Settings, path: Path, workdir: Path | None = None, **claims: str):
    claims = {"container_format": "ova", **claims}
    result = Pipeline.from_settings(settings).run(ImportRequest(path=path, claims=Claims(**claims)))
    assert "pipeline.plugin_failed" not in codes(result), result.findings
    if workdir is not None:
        assert list(workdir.iterdir()) == [], "the run left files in its temporary directory"
    return result


def errors(result) -> list[str]:
    return [f.code for f in result.findings if f.severity is Severity.ERROR]


def test_benign_vmdk_ova_is_accepted_with_both_layers(ova_settings, workdir, tmp_path, vmdk):
    path = o.package(vmdk).write(tmp_path / "vm.ova")
    result = audit(ova_settings, path, workdir, disk_format="vmdk")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.findings == ()
    tar, disk = result.layers
    assert (tar.kind, disk.kind) == ("staged", "extracted")
    assert tar.facts["container_format"] == "tar" and tar.facts["members"] == 3
    assert tar.facts["disk_member"] == DISK and tar.facts["ovf_disk_format"] == "vmdk"
    assert tar.facts["compressed_size"] == path.stat().st_size
    assert tar.facts["uncompressed_size"] == len(vmdk) == disk.size
    assert tar.facts["ratio"] == round(len(vmdk) / path.stat().st_size, 4)
    assert tar.facts["manifest"] == "verified" and tar.facts["ovf_os_type"] == "ubuntu64Guest"
    assert disk.facts["container_format"] == "bare" and disk.facts["disk_format"] == "vmdk"
    assert disk.facts["subformat"] == "streamOptimized"
    assert result.checksums is not None and result.checksums.md5 == hashlib.md5(vmdk).hexdigest()


def test_benign_qcow2_ova_with_links_and_directories(ova_settings, workdir, tmp_path, qcow2):
    """VirtualBox order (manifest last, SHA1), a directory, relative symlinks that stay inside: accepted."""
    descriptor = o.ovf_descriptor([("disk.qcow2", "qcow2")])
    path = o.ova(tmp_path / "vm.ova", [
        o.regular("vm.ovf", descriptor),
        o.regular("disk.qcow2", qcow2),
        o.directory("extras/"),
        o.directory("extras/docs"),
        o.regular("extras/docs/README", b"notes\n"),
        o.symlink("extras/disk", "../disk.qcow2"),
        o.symlink("latest", "extras/docs"),
        o.symlink("readme", "latest/README"),
        o.directory("./extras"),  # a directory may repeat
        o.directory("EXTRAS"),  # even in another case
        o.regular("vm.mf", o.manifest({"vm.ovf": descriptor, "disk.qcow2": qcow2}, "SHA1")),
    ])
    result = audit(ova_settings, path, workdir, disk_format="qcow2")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert codes(result) == ["ova.unreferenced_member"]
    assert "4 member(s)" in (result.findings[0].detail or "")
    assert result.layers[0].facts["manifest"] == "verified"
    assert result.detected["disk_format"] == "qcow2" and result.detected["virtual_size"] == 64 << 20


# -- the member rules: every attack, one more member in a valid package ---------------------

ATTACKS, LONG = o.MEMBER_ATTACKS, o.LONG


@pytest.mark.parametrize("case", sorted(ATTACKS))
def test_member_attacks_are_rejected(ova_settings, workdir, tmp_path, vmdk, case):
    extra, code = ATTACKS[case]
    pack = o.package(vmdk)
    pack.extra = extra
    result = audit(ova_settings, pack.write(tmp_path / "evil.ova"), workdir, disk_format="vmdk")
    assert result.verdict is Verdict.REJECT
    assert errors(result) == [code], result.findings
    assert result.findings[-1].stage == "sanitize" and len(result.layers) == 1
    for finding in result.findings:  # member names stay in details
        assert "evil" not in finding.message and "passwd" not in finding.message and "/" not in finding.message


def test_gnu_long_names_are_checked_like_any_name(ova_settings, workdir, tmp_path, vmdk):
    pack = o.package(vmdk)
    pack.extra = [o.regular("/" + LONG + "evil", b"x")]
    result = audit(ova_settings, pack.write(tmp_path / "gnu.ova", fmt=tarfile.GNU_FORMAT), workdir)
    assert errors(result) == ["tar.absolute_name"]
    pack.extra = [o.regular(LONG + "ok", b"x"), o.symlink(LONG + "lnk", "../" * 61 + "etc")]
    result = audit(ova_settings, pack.write(tmp_path / "gnu2.ova", fmt=tarfile.GNU_FORMAT), workdir)
    assert errors(result) == ["tar.link_escape"]


def test_undecodable_name_is_a_bad_name(ova_settings, workdir, tmp_path, vmdk):
    pack = o.package(vmdk)
    pack.extra = [o.regular("caf\udce9", b"x")]
    path = tmp_path / "latin1.ova"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, errors="surrogateescape") as archive:
        for member in pack.members():
            archive.addfile(member.info, io.BytesIO(member.data or b""))
    assert b"caf\xe9" in path.read_bytes()
    assert errors(audit(ova_settings, path, workdir)) == ["tar.bad_name"]


@pytest.mark.parametrize(("option", "value", "extra", "code"), [
    ("max_members", 4, [o.regular("a", b""), o.regular("b", b"")], "tar.too_many_members"),
    ("max_total_size", "64KiB", [], "tar.too_large"),
    ("max_name_length", 10, [o.regular("a-rather-long-name", b"")], "tar.bad_name"),
    ("max_link_depth", 2, [o.symlink("l1", "l2"), o.symlink("l2", "l3"), o.symlink("l3", "l4")],
     "tar.link_escape"),
    ("allow_sparse", True, [o.sparse_pax("huge", 1 << 50)], "tar.too_large"),
    ("max_name_length", 20, [o.symlink("l", "x/" * 20)], "tar.bad_name"),
    ("max_header_bytes", "1KiB", [o.regular("notes", b"x", pax={"comment": "c" * 1100})], "tar.header_too_large"),
    ("max_trailing_bytes", "8KiB", [o.Member(None, raw=bytes(16 << 10))], "tar.trailing_data"),
])
def test_limits_are_options(ova_settings, workdir, tmp_path, vmdk, option, value, extra, code):
    pack = o.package(vmdk)
    pack.extra = extra
    configured = ova_settings.replace(plugin={"ova": {option: value}})
    assert errors(audit(configured, pack.write(tmp_path / "x.ova"), workdir)) == [code]


def test_crafted_link_chains_stay_cheap(ova_settings, workdir, tmp_path, vmdk):
    """Each link names the one before twice: naive resolution doubles per link; the hop limit stops it."""
    pack = o.package(vmdk)
    pack.extra = [o.directory("d/"), o.symlink("l0", "d")]
    pack.extra += [o.symlink(f"l{i}", f"l{i - 1}/../l{i - 1}/" * 4) for i in range(1, 200)]
    path = pack.write(tmp_path / "chain.ova")
    started = time.monotonic()
    result = audit(ova_settings, path, workdir)
    assert errors(result) == ["tar.link_escape"] and "links deep" in (result.findings[-1].detail or "")
    assert time.monotonic() - started < 10


def test_small_sparse_member_is_accepted_when_allowed(ova_settings, workdir, tmp_path, vmdk):
    pack = o.package(vmdk)
    pack.extra = [o.sparse_pax("holes", 1 << 20)]
    path = pack.write(tmp_path / "x.ova")
    assert errors(audit(ova_settings, path, workdir)) == ["tar.sparse"]
    result = audit(ova_settings.replace(plugin={"ova": {"allow_sparse": True}}), path, workdir)
    assert result.verdict is Verdict.ACCEPT and codes(result) == ["ova.unreferenced_member"]


def test_modes_and_backslashes_are_warnings(ova_settings, workdir, tmp_path, vmdk):
    pack = o.package(vmdk)
    pack.extra = [o.regular("tool", b"x", mode=0o4755), o.regular("shared", b"x", mode=0o666),
                  o.regular("docs\\evil", b"x"), o.symlink("win", "docs\\x")]
    result = audit(ova_settings, pack.write(tmp_path / "x.ova"), workdir)
    assert result.verdict is Verdict.ACCEPT
    assert sorted(codes(result)) == ["ova.unreferenced_member", "tar.backslash", "tar.mode"]
    by_code = {f.code: f for f in result.findings}
    assert by_code["tar.mode"].severity is Severity.WARNING and "2 member(s)" in (by_code["tar.mode"].detail or "")
    assert "2 member(s)" in (by_code["tar.backslash"].detail or "")
    assert all("evil" not in f.message for f in result.findings)


# -- the package: descriptor, references, manifest, formats --------------------------------

def test_descriptor_must_be_the_first_member(ova_settings, workdir, tmp_path, vmdk):
    pack = o.package(vmdk, with_manifest=False)
    path = o.ova(tmp_path / "late.ova", [pack.disk, pack.descriptor])
    assert errors(audit(ova_settings, path, workdir)) == ["ova.no_descriptor"]
    nested = o.ova(tmp_path / "nested.ova", [o.directory("vm/"), o.regular("vm/vm.ovf", pack.descriptor.data or b""),
                                             pack.disk])
    assert errors(audit(ova_settings, nested, workdir)) == ["ova.no_descriptor"]
    linked = o.ova(tmp_path / "link.ova", [o.symlink("vm.ovf", "real.ovf"), pack.disk])
    assert errors(audit(ova_settings, linked, workdir)) == ["ova.no_descriptor"]


def test_one_disk_only(ova_settings, workdir, tmp_path, vmdk):
    descriptor = o.ovf_descriptor([(DISK, "vmdk"), ("disk2.vmdk", "vmdk")])
    path = o.ova(tmp_path / "two.ova", [o.regular("vm.ovf", descriptor), o.regular(DISK, vmdk),
                                        o.regular("disk2.vmdk", vmdk)])
    assert errors(audit(ova_settings, path, workdir)) == ["ova.multiple_disks"]


@pytest.mark.parametrize("case", ["absent", "other file absent", "a symlink", "the descriptor"])
def test_every_referenced_file_must_be_a_member(ova_settings, workdir, tmp_path, vmdk, case):
    if case == "absent":
        members = [o.regular("vm.ovf", o.ovf_descriptor([(DISK, "vmdk")])), o.regular("other.vmdk", vmdk)]
    elif case == "other file absent":
        members = [o.regular("vm.ovf", o.ovf_descriptor([(DISK, "vmdk")], extra_files=("vm.nvram",))),
                   o.regular(DISK, vmdk)]
    elif case == "a symlink":
        members = [o.regular("vm.ovf", o.ovf_descriptor([(DISK, "vmdk")])), o.regular("real.vmdk", vmdk),
                   o.symlink(DISK, "real.vmdk")]
    else:
        members = [o.regular("vm.ovf", o.ovf_descriptor([("vm.ovf", "vmdk")]))]
    result = audit(ova_settings, o.ova(tmp_path / "x.ova", members), workdir)
    assert errors(result) == ["ova.missing_member"]
    assert all("vmdk" not in f.message and "nvram" not in f.message for f in result.findings)


def test_href_with_a_path_is_refused_by_the_ovf_parser(ova_settings, workdir, tmp_path, vmdk):
    descriptor = o.ovf_descriptor([("disks/disk.vmdk", "vmdk")])
    path = o.ova(tmp_path / "x.ova", [o.regular("vm.ovf", descriptor), o.directory("disks/"),
                                      o.regular("disks/disk.vmdk", vmdk)])
    assert errors(audit(ova_settings, path, workdir)) == ["ovf.href"]


def test_descriptor_errors_without_the_ovf_plugin_still_reject(ova_settings, workdir, tmp_path, vmdk):
    """With the ovf plugin disabled its codes are undeclared: the refusal is ova.no_descriptor, naming the code."""
    descriptor = o.ovf_descriptor([("../disk.vmdk", "vmdk")])
    path = o.ova(tmp_path / "x.ova", [o.regular("vm.ovf", descriptor), o.regular(DISK, vmdk)])
    no_ovf = ova_settings.replace(plugins=PluginSettings(disabled=("ovf",), entry_points=False))
    result = audit(no_ovf, path, workdir)
    assert errors(result) == ["ova.no_descriptor"]
    assert (result.findings[0].detail or "").startswith("ovf.href: ")


def test_declared_format_must_match_the_disk(ova_settings, workdir, tmp_path, qcow2, vmdk):
    path = o.package(qcow2, "qcow2", name="disk.img", declared="vmdk").write(tmp_path / "x.ova")
    result = audit(ova_settings, path, workdir, disk_format="qcow2")
    assert errors(result) == ["ova.format_mismatch"]
    assert result.findings[0].stage == "inspect" and result.layers[1].kind == "extracted"
    assert "qcow2" in result.findings[0].message and "vmdk" in result.findings[0].message
    unknown = o.package(vmdk, declared="http://example.com/disk-format#x").write(tmp_path / "y.ova")
    assert errors(audit(ova_settings, unknown, workdir)) == ["ova.format_mismatch"]


def test_disk_format_claim_is_checked_on_the_extracted_disk(ova_settings, workdir, tmp_path, vmdk):
    result = audit(ova_settings, o.package(vmdk).write(tmp_path / "x.ova"), workdir, disk_format="qcow2")
    assert errors(result) == ["format.claim_mismatch"]
    assert len(result.layers) == 2


def test_descriptor_only_vmdk_inside_an_ova_is_rejected(ova_settings, workdir, tmp_path):
    flat = vmdk_images.created(tmp_path / "flat.vmdk", "monolithicFlat", "1M")
    text = flat.read_text().replace('"flat-flat.vmdk"', '"/etc/passwd"')
    assert '"/etc/passwd"' in text
    path = o.package(text.encode()).write(tmp_path / "x.ova")
    result = audit(ova_settings, path, workdir, disk_format="vmdk")
    assert result.verdict is Verdict.REJECT
    assert "vmdk.descriptor_only" in errors(result), result.findings
    assert len(result.layers) == 2 and result.layers[1].kind == "extracted"
    assert all(f.stage == "inspect" for f in result.findings)
    assert all("passwd" not in f.message for f in result.findings)


@pytest.mark.parametrize("where", ["disk", "descriptor", "disk, manifest last"])
def test_manifest_digests_are_verified(ova_settings, workdir, tmp_path, vmdk, where):
    pack = o.package(vmdk)
    descriptor = pack.descriptor.data or b""
    listed = {"vm.ovf": descriptor + (b" " if where == "descriptor" else b""),
              DISK: vmdk + (b"" if where == "descriptor" else b"x")}
    pack.manifest = o.regular("vm.mf", o.manifest(listed, "SHA512" if "last" in where else "SHA256"))
    members = pack.members()
    if "last" in where:
        members = [members[0], members[2], members[1]]
    result = audit(ova_settings, o.ova(tmp_path / "x.ova", members), workdir)
    assert errors(result) == ["ova.manifest_mismatch"]


def test_manifest_line_styles(ova_settings, workdir, tmp_path, vmdk):
    """ovftool writes ``SHA256(name)= hex``, VirtualBox ``SHA1 (name) = hex``, with CRLF at times."""
    pack = o.package(vmdk)
    descriptor = pack.descriptor.data or b""
    lines = (f"SHA1 (vm.ovf) = {hashlib.sha1(descriptor).hexdigest()}\r\n"
             f"SHA1 ({DISK}) = {hashlib.sha1(vmdk).hexdigest().upper()}\r\n")
    pack.manifest = o.regular("vm.mf", lines.encode())
    result = audit(ova_settings, pack.write(tmp_path / "x.ova"), workdir)
    assert result.verdict is Verdict.ACCEPT and result.layers[0].facts["manifest"] == "verified"
    pack.manifest = o.regular("vm.mf", lines.replace("SHA1 (vm", "SHA1 (other").encode())
    result = audit(ova_settings, pack.write(tmp_path / "y.ova"), workdir)
    assert result.verdict is Verdict.ACCEPT  # an entry for a file that is not read is not verified
    pack.manifest = o.regular("vm.mf", o.manifest({"vm.ovf": descriptor}))
    result = audit(ova_settings, pack.write(tmp_path / "z.ova"), workdir)
    assert result.verdict is Verdict.ACCEPT and result.layers[0].facts["manifest"] == "disk not listed"


@pytest.mark.parametrize("manifest", [b"SHA256(vm.ovf)= nothex\n", b"MD5(vm.ovf)= " + b"0" * 32 + b"\n",
                                      b"\xff\xfe", b"SHA1(x)= " + b"0" * 40 + b"\n" + b"SHA1(x)= " + b"1" * 40])
def test_manifest_that_cannot_be_read(ova_settings, workdir, tmp_path, vmdk, manifest):
    pack = o.package(vmdk)
    pack.manifest = o.regular("vm.mf", manifest)
    assert errors(audit(ova_settings, pack.write(tmp_path / "x.ova"), workdir)) == ["ova.manifest_invalid"]


def test_size_and_compression_of_the_disk_file(ova_settings, workdir, tmp_path, vmdk):
    pack = o.package(vmdk, with_manifest=False)
    pack.descriptor = o.regular("vm.ovf", o.ovf_descriptor([(DISK, "vmdk")], sizes={DISK: len(vmdk) + 512}))
    assert errors(audit(ova_settings, pack.write(tmp_path / "size.ova"), workdir)) == ["ova.size_mismatch"]
    pack.descriptor = o.regular("vm.ovf", o.ovf_descriptor([(DISK, "vmdk")], compression="gzip"))
    assert errors(audit(ova_settings, pack.write(tmp_path / "gz.ova"), workdir)) == ["ova.unsupported"]


def test_a_tar_inside_an_ova_is_not_unpacked(ova_settings, workdir, tmp_path, vmdk):
    inner = o.package(vmdk).write(tmp_path / "inner.ova").read_bytes()
    path = o.package(inner, "raw", name="disk.raw").write(tmp_path / "outer.ova")
    result = audit(ova_settings, path, workdir, disk_format="raw")
    assert errors(result) == ["container.not_unpacked"]
    assert [layer.kind for layer in result.layers] == ["staged", "extracted"]


def test_ova_inside_gzip_is_unpacked_only_where_ova_is_accepted(ova_settings, workdir, tmp_path, vmdk):
    path = tmp_path / "vm.ova.gz"
    path.write_bytes(gzip.compress(o.package(vmdk).write(tmp_path / "vm.ova").read_bytes()))
    result = audit(ova_settings, path, workdir, container_format="compressed", disk_format="vmdk")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.layers[-1].kind == "extracted" and result.detected["disk_format"] == "vmdk"
    no_ova = ova_settings.replace(container_formats=("bare", "compressed"))
    result = audit(no_ova, path, workdir, container_format="compressed", disk_format="vmdk")
    assert errors(result) == ["container.not_unpacked"] and result.detected["container_format"] == "tar"


# -- damaged archives and budgets ------------------------------------------------------------

def test_damaged_archives_are_corrupt(ova_settings, workdir, tmp_path, vmdk):
    good = o.package(vmdk).write(tmp_path / "good.ova").read_bytes()
    with tarfile.open(tmp_path / "good.ova") as archive:
        offsets = [member.offset for member in archive.getmembers()]
    disk_header = offsets[-1]
    cases = {
        "ends mid-header": good[: disk_header + 100],
        "ends mid-data": good[: disk_header + 512 + 4096],
        "bad header checksum": good[:disk_header] + b"X" + good[disk_header + 1:],
        "random bytes after the descriptor": good[: offsets[1]] + random.Random(5).randbytes(4096),
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.ova"
        path.write_bytes(data)
        result = audit(ova_settings, path, workdir)
        assert errors(result) == ["tar.corrupt"], (name, result.findings)
        assert result.findings[0].detail


def test_random_bytes_named_ova_are_rejected(ova_settings, workdir, tmp_path):
    path = tmp_path / "random.ova"
    path.write_bytes(random.Random(7).randbytes(64 << 10))
    result = audit(ova_settings, path, workdir)
    assert result.verdict is Verdict.REJECT and "container.claim_mismatch" in errors(result)


def test_read_budget_stops_the_scan_through_the_libarchive_callback(ova_settings, workdir, tmp_path):
    disk = random.Random(3).randbytes(3 << 20)
    path = o.package(disk, "raw", name="disk.raw").write(tmp_path / "big.ova")
    assert audit(ova_settings, path, workdir, disk_format="raw").verdict is Verdict.ACCEPT
    result = audit(ova_settings.replace(max_read_passes=0), path, workdir, disk_format="raw")  # 1 MiB slack only
    assert errors(result) == ["data.read_budget"] and result.findings[0].stage == "sanitize"


# -- hypothesis: damaged headers always end in a verdict -----------------------------------------

@pytest.fixture(scope="module")
def real_ova(tmp_path_factory: pytest.TempPathFactory, vmdk: bytes) -> tuple[bytes, list[int]]:
    """A benign OVA (descriptor, manifest, qemu-img's VMDK, a directory, a link) and its header offsets."""
    pack = o.package(vmdk)
    pack.extra = [o.directory("d/"), o.symlink("d/l", "../" + DISK)]
    path = pack.write(tmp_path_factory.mktemp("real") / "real.ova")
    with tarfile.open(path) as archive:
        offsets = [member.offset for member in archive.getmembers()]
    return path.read_bytes(), offsets


@hsettings(derandomize=True, max_examples=50, deadline=None)
@given(data=st.data())
def test_mutated_headers_always_get_a_verdict(real_ova, data):
    """Bytes of the headers (and the data after them) changed, checksums often mended, the archive often cut."""
    original, offsets = real_ova
    mutated = bytearray(original)
    touched = set()
    for _ in range(data.draw(st.integers(1, 6), label="edits")):
        header = data.draw(st.sampled_from(offsets), label="header")
        at = header + data.draw(st.integers(0, 1023), label="offset")
        mutated[at % len(mutated)] = data.draw(st.integers(0, 255), label="byte")
        touched.add(header)
    if data.draw(st.booleans(), label="mend checksums"):
        for header in touched:
            o.fix_checksum(mutated, header)
    if data.draw(st.booleans(), label="truncate"):
        mutated = mutated[: data.draw(st.integers(1, len(mutated)), label="length")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        path = Path(tmp) / "mutated.ova"
        path.write_bytes(bytes(mutated))
        settings = Settings(work_dir=work, plugins=PluginSettings(entry_points=False),
                            container_formats=("bare", "ova", "compressed"))
        result = audit(settings, path, work, disk_format="vmdk")
        assert result.verdict in (Verdict.ACCEPT, Verdict.REJECT)
        if result.verdict is Verdict.ACCEPT:
            assert result.detected["disk_format"] == "vmdk" and result.layers[-1].kind == "extracted"
