"""The ``zip`` plugin on real archives: benign ones unpacked and inspected, hostile ones rejected before harm."""

from __future__ import annotations

import random
import shutil
import struct
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from importhooks_plugins.containers import zip as zip_plugin

from importhooks import Claims, ImportRequest, Pipeline, Verdict
from importhooks.result import ImportResult

from . import images
from . import zip_images as zi
from .helpers import codes, documented_options

SECRET = "SECRET-member.raw"  # never in a user message
METHOD_NAMES = {0: "stored", 8: "deflate", 12: "bzip2", 14: "lzma"}


def audit(settings, path: Path, *, store: Path | None = None, options: dict | None = None,
          **claims: object) -> ImportResult:
    """Run the default pipeline on a zip claimed 'compressed'; check what every run must hold."""
    settings = settings.replace(container_formats=("bare", "compressed"), plugin={"zip": options or {}})
    request = ImportRequest(path=path, claims=Claims(container_format="compressed", **claims))
    result = Pipeline.from_settings(settings).run(request, store=(lambda p: shutil.copy(p, store)) if store else None)
    assert "pipeline.plugin_failed" not in codes(result), result.findings
    assert list(settings.work_dir.iterdir()) == []
    assert all(SECRET not in f.message and "/etc/passwd" not in f.message for f in result.findings)
    return result


def rejected_with(result: ImportResult, code: str) -> dict:
    """Assert ``code`` rejected the run in sanitize, and nothing was unpacked; return the zip layer's facts."""
    assert result.verdict is Verdict.REJECT and code in codes(result), result.findings
    assert next(f for f in result.findings if f.code == code).stage == "sanitize"
    assert len(result.layers) == 1 and "uncompressed_size" not in result.layers[0].facts
    return dict(result.layers[0].facts)


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_zipped_raw_disk_is_unpacked_exactly_with_both_layers_facts(settings, tmp_path, method):
    disk = zi.disk_bytes(1 << 20)
    data = zi.zip_bytes({SECRET: disk}, method)
    stored = tmp_path / "stored"
    result = audit(settings, zi.write(tmp_path / "d.zip", data), store=stored, disk_format="raw")
    assert result.verdict is Verdict.ACCEPT, result.findings
    outer, inner = result.layers
    compressed = zipfile.ZipFile(tmp_path / "d.zip").infolist()[0].compress_size
    expected = {"container_format": "zip", "compression": "zip", "members": 1, "disk_member": SECRET,
                "zip_method": METHOD_NAMES[method], "compressed_size": compressed, "uncompressed_size": len(disk),
                "ratio": round(len(disk) / compressed, 1)}
    assert {key: outer.facts.get(key) for key in expected} == expected
    assert inner.kind == "extracted" and inner.facts["disk_format"] == "raw"
    assert inner.facts["container_format"] == "bare" and inner.facts["virtual_size"] == len(disk)
    assert stored.read_bytes() == disk  # sparse writing and the trailing zero block kept
    assert result.checksums is not None and result.checksums.size == len(disk)


@pytest.mark.parametrize("store", [False, True])
def test_qcow2_zipped_with_the_zip_command_is_accepted(settings, tmp_path, store):
    qcow2 = images.qcow2_image(tmp_path / "disk.qcow2", "1G")
    archive = zi.zip_command(tmp_path / "q.zip", qcow2, store=store)
    result = audit(settings, archive, disk_format="qcow2")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.layers[0].facts["zip_method"] == ("stored" if store else "deflate")
    assert result.layers[0].facts["disk_member"] == "disk.qcow2"
    assert result.detected["disk_format"] == "qcow2" and result.detected["virtual_size"] == 1 << 30
    assert result.checksums is not None and result.checksums.size == qcow2.stat().st_size


def test_streamed_zip64_and_directory_entries_are_understood(settings, tmp_path):
    disk = zi.disk_bytes(256 << 10)
    streamed = zi.zip_streamed(tmp_path / "s.zip", disk)
    assert zipfile.ZipFile(streamed).infolist()[0].flag_bits & 0x08  # really a data descriptor
    forced = zi.write(tmp_path / "z64.zip", zi.zip_bytes({"disk.raw": disk}, force_zip64=True))
    assert zipfile.ZipFile(forced).infolist()[0].extract_version >= 45  # really zip64
    tidy = zi.write(tmp_path / "dirs.zip", zi.zip_bytes({"img/": b"", "img/README": b"", "img/disk.raw": disk}))
    for archive in (streamed, forced, tidy):
        result = audit(settings, archive)
        assert result.verdict is Verdict.ACCEPT, (archive, result.findings)
        assert result.layers[0].facts["uncompressed_size"] == len(disk)
    assert result.layers[0].facts["members"] == 3


def test_zipped_qcow2_with_a_backing_file_is_rejected_by_the_inner_layer(settings, tmp_path, backing_qcow2):
    result = audit(settings, zi.zip_command(tmp_path / "evil.zip", backing_qcow2), disk_format="qcow2")
    assert result.verdict is Verdict.REJECT and "qcow2.backing_file" in codes(result)
    assert [layer.kind for layer in result.layers] == ["staged", "extracted"]
    assert result.layers[1].facts["disk_format"] == "qcow2"


def test_nesting_is_accepted_up_to_max_depth(settings, tmp_path):
    data = zi.zip_bytes({"disk.raw": zi.disk_bytes(64 << 10)})
    for _ in range(2):
        data = zi.zip_bytes({"inner.zip": data})
    twice, thrice = zi.zip_bytes({"inner.zip": zi.zip_bytes({"disk.raw": zi.disk_bytes(64 << 10)})}), data
    result = audit(settings, zi.write(tmp_path / "2.zip", twice))
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert [layer.facts["container_format"] for layer in result.layers] == ["zip", "zip", "bare"]
    deep = audit(settings, zi.write(tmp_path / "3.zip", thrice))
    assert codes(deep) == ["zip.depth"] and len(deep.layers) == 3
    assert audit(settings, tmp_path / "3.zip", options={"max_depth": 3}).verdict is Verdict.ACCEPT


def test_fifield_overlapping_zip_is_rejected_before_decompressing(settings, tmp_path):
    bomb = zi.write(tmp_path / "overlap.zip", zi.fifield_zip(40, bytes(1 << 20)))
    started = time.monotonic()
    result = audit(settings, bomb)
    assert time.monotonic() - started < 5
    facts = rejected_with(result, "zip.overlap")
    assert facts["members"] == 40 and set(codes(result)) == {"zip.overlap", "zip.multiple_members"}
    few = audit(settings, bomb, options={"max_entries": 8})
    assert set(codes(few)) == {"zip.overlap", "zip.multiple_members", "zip.too_many_entries"}


def test_directory_entries_sharing_one_local_header_overlap(settings, tmp_path):
    data = zi.shared_header_zip(zi.zip_bytes({SECRET: zi.disk_bytes(64 << 10)}), 3)
    rejected_with(audit(settings, zi.write(tmp_path / "shared.zip", data)), "zip.overlap")


def test_a_local_header_naming_another_entry_overlaps(settings, tmp_path):
    data = zi.zip_bytes({SECRET: zi.disk_bytes(64 << 10)})
    data = data.replace(b"SECRET-member", b"secret-member", 1)  # only the local header's copy
    result = audit(settings, zi.write(tmp_path / "renamed.zip", data))
    rejected_with(result, "zip.overlap")
    assert "local header" in next(f.detail for f in result.findings if f.code == "zip.overlap")


def test_members_must_be_exactly_one_disk(settings, tmp_path):
    two = zi.zip_bytes({SECRET: zi.disk_bytes(64 << 10), "other.raw": b"x" * 4096})
    result = audit(settings, zi.write(tmp_path / "two.zip", two))
    rejected_with(result, "zip.multiple_members")
    assert SECRET in next(f.detail for f in result.findings)  # operators see the names
    none = zi.zip_bytes({"a/": b"", "a/empty": b""})
    rejected_with(audit(settings, zi.write(tmp_path / "none.zip", none)), "zip.no_member")


def test_an_empty_central_directory_has_no_member(settings, tmp_path):
    data = bytearray(zi.zip_bytes({SECRET: zi.disk_bytes(64 << 10)}))
    data[-12:-6] = bytes(6)  # the end record: no entries, a directory of 0 bytes
    rejected_with(audit(settings, zi.write(tmp_path / "empty.zip", bytes(data))), "zip.no_member")


def test_an_entry_that_decompresses_to_nothing_is_no_disk(settings, tmp_path):
    empty_blocks = b"\x00\x00\x00\xff\xff" * 10 + b"\x03\x00"  # ten empty stored blocks, an empty final one
    data = zi.single_entry_zip(b"disk.raw", empty_blocks, 0, 0)
    result = audit(settings, zi.write(tmp_path / "nothing.zip", data))
    rejected_with(result, "zip.no_member")
    assert "decompresses to nothing" in (result.findings[0].detail or "")


def test_declared_size_over_the_limit_is_rejected_before_decompressing(settings, tmp_path):
    archive = zi.write(tmp_path / "big.zip", zi.zip_bytes({"disk.raw": bytes(4 << 20)}))
    result = audit(settings.replace(max_image_size=1 << 20), archive)
    rejected_with(result, "zip.too_large")
    assert "1.0 MiB" in result.findings[0].message and "declare " in (result.findings[0].detail or "")


def test_zip_bombs_are_stopped_by_the_ratio_budget(settings, tmp_path):
    ones = zi.write(tmp_path / "bomb.zip", zi.zip_bytes({"disk.raw": b"\x01" * (64 << 20)}))
    result = audit(settings, ones, options={"ratio_grace": 1 << 20})
    rejected_with(result, "zip.ratio")
    assert " data bytes from " in (result.findings[0].detail or "")
    assert audit(settings, ones, options={"ratio_grace": 1 << 20, "max_ratio": 2000}).verdict is Verdict.ACCEPT
    # A fresh sparse disk (zeros, then a little data) is accepted: zeros are not data.
    sparse = zi.zip_bytes({"disk.raw": bytes(32 << 20) + random.Random(1).randbytes(64 << 10)})
    accepted = audit(settings, zi.write(tmp_path / "sparse.zip", sparse), options={"ratio_grace": 1 << 20})
    assert accepted.verdict is Verdict.ACCEPT and accepted.layers[0].facts["ratio"] > 100, accepted.findings
    # bzip2 zeros (over a million to one) pass max_sparse_ratio: the declared size says so first.
    bzipped = zi.write(tmp_path / "bomb.bz.zip", zi.zip_bytes({"disk.raw": bytes(64 << 20)}, zipfile.ZIP_BZIP2))
    declared = audit(settings, bzipped, options={"sparse_grace": 4 << 20})
    rejected_with(declared, "zip.ratio")
    assert "declares" in (declared.findings[0].detail or "") and "max_sparse_ratio 30000.0" in (
        declared.findings[0].detail or "")


def test_lying_central_directory_the_real_output_is_counted(settings, tmp_path):
    data = zi.zip_bytes({"disk.raw": zi.disk_bytes(1 << 20)})
    result = audit(settings, zi.write(tmp_path / "lies.zip", zi.patch_entry(data, usize=4096)))
    rejected_with(result, "zip.corrupt")
    assert "declared 4096" in (result.findings[0].detail or "")
    larger = audit(settings, zi.write(tmp_path / "more.zip", zi.patch_entry(data, usize=(1 << 20) + 1)))
    rejected_with(larger, "zip.corrupt")


def test_encrypted_zip_is_rejected(settings, tmp_path):
    disk = images.raw_image(tmp_path / "disk.raw", 64 << 10)
    archive = zi.zip_command(tmp_path / "enc.zip", disk, password="hunter2")
    rejected_with(audit(settings, archive), "zip.encrypted")


def test_unsupported_method_and_lzma_dictionary(settings, tmp_path):
    deflate64 = zi.patch_entry(zi.zip_bytes({"disk.raw": zi.disk_bytes(64 << 10)}), method=9)
    rejected_with(audit(settings, zi.write(tmp_path / "d64.zip", deflate64)), "zip.method")
    lzma = zi.write(tmp_path / "lzma.zip", zi.zip_bytes({"disk.raw": zi.disk_bytes(64 << 10)}, zipfile.ZIP_LZMA))
    rejected_with(audit(settings, lzma, options={"max_window_size": 4096}), "zip.method")


@pytest.mark.parametrize("damage", ["truncated", "crc", "garbage"])
def test_damaged_zips_are_corrupt(settings, tmp_path, damage):
    data = zi.zip_bytes({"disk.raw": zi.disk_bytes(256 << 10)})
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "crc":
        data = zi.patch_entry(data, crc=zipfile.ZipFile(zi.write(tmp_path / "ok.zip", data)).infolist()[0].CRC ^ 1)
    else:
        data = data[:30] + random.Random(7).randbytes(4096)  # a local header, then noise (libmagic: zip)
    result = audit(settings, zi.write(tmp_path / "bad.zip", data))
    assert rejected_with(result, "zip.corrupt")["container_format"] == "zip"


def test_too_many_entries_and_an_oversized_directory(settings, tmp_path):
    crowded = {f"empty{i}": b"" for i in range(70)} | {"disk.raw": zi.disk_bytes(64 << 10)}
    rejected_with(audit(settings, zi.write(tmp_path / "crowded.zip", zi.zip_bytes(crowded))), "zip.too_many_entries")
    huge = zi.zip_bytes({f"{i:0100d}": b"" for i in range(1500)} | {"disk.raw": b"x"})
    result = audit(settings, zi.write(tmp_path / "huge.zip", huge), options={"max_entries": 1})
    assert codes(result) == ["zip.too_many_entries"] and "central directory" in (result.findings[0].detail or "")
    assert "members" not in result.layers[0].facts  # refused before zipfile parsed it


def test_unsafe_member_names_are_a_warning_and_never_used(settings, tmp_path):
    name = "../../" + SECRET
    result = audit(settings, zi.write(tmp_path / "n.zip", zi.zip_bytes({name: zi.disk_bytes(64 << 10)})))
    assert result.verdict is Verdict.ACCEPT and codes(result) == ["zip.name"]
    assert result.layers[0].facts["disk_member"] == name
    assert not (tmp_path.parent / SECRET).exists() and not (tmp_path / SECRET).exists()


def test_documented_options_are_the_defaults(settings):
    documented = documented_options("containers/zip.rst")["plugin"]
    pipeline = Pipeline.from_settings(settings.replace(plugin=documented))
    defaults = {option.name: option.default for option in zip_plugin.OPTIONS.options}
    assert pipeline.options["zip"] == defaults and set(documented["zip"]) == set(defaults)


BASES = [zi.zip_bytes({"disk.raw": zi.disk_bytes(64 << 10, seed=3)}, method) for method in (0, 8)]
SIZE = min(len(base) for base in BASES)
#: Where mutations land: the first local header, the end record, the central directory, anywhere.
POSITIONS = st.one_of(st.integers(4, 45), st.integers(-22, -1), st.integers(-80, -1), st.integers(0, SIZE - 1))


@hypothesis_settings(derandomize=True, max_examples=50, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(BASES), st.lists(st.tuples(POSITIONS, st.sampled_from([0, 1, 0x7F, 0xFF]) | st.integers(0, 255)),
                                        min_size=1, max_size=6), st.just(0) | st.integers(1, 64))
def test_mutated_zips_always_get_a_verdict(settings, tmp_path, base, flips, cut):
    data = bytearray(base[:len(base) - cut])
    for position, value in flips:
        data[position % len(data)] = value
    result = audit(settings, zi.write(tmp_path / "m.zip", bytes(data)))
    assert result.verdict in (Verdict.ACCEPT, Verdict.REJECT)
    if result.verdict is Verdict.ACCEPT:
        assert [layer.facts["container_format"] for layer in result.layers] == ["zip", "bare"]
        assert result.layers[1].facts["actual_size"] == 64 << 10


def test_a_zip64_local_header_whose_sizes_disagree_with_the_directory_is_rejected(settings, tmp_path):
    disk = zi.disk_bytes(256 << 10)
    data = zi.zip_bytes({"disk.raw": disk}, force_zip64=True)
    usize_at, csize_at = zi.zip64_local_sizes(data)
    for at, delta in ((usize_at, 1), (csize_at, -7)):
        value = int.from_bytes(data[at:at + 8], "little") + delta
        lying = zi.write(tmp_path / "z64.zip", zi.patch_local(data, at, value.to_bytes(8, "little")))
        assert zipfile.ZipFile(lying).read("disk.raw") == disk  # zipfile reads the directory's sizes
        result = audit(settings, lying)
        rejected_with(result, "zip.header_mismatch")
        assert "the local header at 0 says" in (result.findings[0].detail or "")


def test_a_local_header_with_another_method_is_rejected(settings, tmp_path):
    data = zi.zip_bytes({"disk.raw": zi.disk_bytes(64 << 10)})
    stored = zi.write(tmp_path / "m.zip", zi.patch_local(data, 8, struct.pack("<H", zipfile.ZIP_STORED)))
    rejected_with(audit(settings, stored), "zip.header_mismatch")


def test_a_data_descriptor_that_disagrees_is_rejected(settings, tmp_path):
    disk = zi.disk_bytes(256 << 10)
    streamed = zi.zip_streamed(tmp_path / "s.zip", disk).read_bytes()
    at, width = zi.descriptor_at(streamed)  # Info-ZIP writes a zip64 one from a pipe
    usize = (len(disk) + 4096).to_bytes(width, "little")
    lying = zi.write(tmp_path / "d.zip", zi.patch_local(streamed, at + 8 + width, usize))
    result = audit(settings, lying)
    rejected_with(result, "zip.header_mismatch")
    assert "data descriptor" in (result.findings[0].detail or "")


@pytest.mark.parametrize("where", ["prepended", "before the directory", "after the end"])
def test_bytes_outside_every_entry_are_hidden_data(settings, tmp_path, where):
    data = zi.zip_bytes({"disk.raw": zi.disk_bytes(64 << 10)})
    hidden = zi.zip_bytes({"other.raw": b"another disk" * 100})
    entry = hidden[:hidden.index(b"PK\x01\x02")]  # a local header and its data
    if where == "prepended":  # zipfile and unzip skip it; a streaming reader finds other.raw first
        archive = entry + data
    elif where == "before the directory":
        archive = zi.with_gap_before_directory(data, entry)
    else:  # after the end record (and its empty comment): zipfile searches the end record backwards
        archive = data + entry[:64]
    path = zi.write(tmp_path / "h.zip", archive)
    assert zipfile.ZipFile(path).namelist() == ["disk.raw"]
    result = audit(settings, path)
    rejected_with(result, "zip.hidden_data")


def test_an_archive_comment_is_not_hidden_data(settings, tmp_path):
    disk = zi.disk_bytes(64 << 10)
    data = zi.zip_bytes({"disk.raw": disk})
    end = data.rindex(b"PK\x05\x06")
    commented = data[:end + 20] + struct.pack("<H", 9) + b"a comment"
    path = zi.write(tmp_path / "c.zip", commented)
    assert zipfile.ZipFile(path).comment == b"a comment"
    result = audit(settings, path)
    assert result.verdict is Verdict.ACCEPT and result.layers[0].facts["uncompressed_size"] == len(disk)
