"""The compression plugin on real streams: gzip, bzip2, xz and zstd unpacked within budgets.

Benign streams come from the real tools and libraries; bombs, lying headers and damaged
streams are built by tests/compression_images.py at a small scale, with small limits set
through settings and plugin options (full-scale bombs: benchmarks/bench_bombs.py).
"""

from __future__ import annotations

import bz2
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from importhooks_plugins.containers._gzip import header_size
from importhooks_plugins.containers._streaming import SparseWriter

from importhooks import Claims, ConfigError, ImportRequest, Pipeline, Settings, Verdict
from importhooks.settings import PluginSettings

from . import compression_images as ci
from . import images
from .helpers import codes

KINDS = ci.KINDS
MiB = 1 << 20
COMPRESSION_CODES = {"compression.too_large", "compression.ratio", "compression.depth", "compression.corrupt",
                     "compression.trailing_data", "compression.window", "compression.streams", "compression.empty"}


@pytest.fixture
def csettings(settings: Settings) -> Settings:
    """The conftest settings, with compressed containers accepted."""
    return settings.replace(container_formats=("bare", "ova", "compressed"))


def with_options(settings: Settings, **options: object) -> Settings:
    return settings.replace(plugin={"compression": options})


def audit(settings: Settings, path: Path, store=None, **claims):
    claims.setdefault("container_format", "compressed")
    return Pipeline.from_settings(settings).run(ImportRequest(path=path, claims=Claims(**claims)), store=store)


def assert_accepted(result, workdir: Path) -> None:
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert list(workdir.iterdir()) == []


def assert_rejected(result, code: str, workdir: Path) -> str:
    """The run is rejected with ``code``, no plugin failed, nothing is left behind; returns the detail."""
    assert result.verdict is Verdict.REJECT
    assert code in codes(result), result.findings
    assert "pipeline.plugin_failed" not in codes(result), result.findings
    assert list(workdir.iterdir()) == []
    finding = next(f for f in result.findings if f.code == code)
    assert finding.plugin == "compression" or not code.startswith("compression.")
    return finding.detail or ""


def assert_layers(result, kind: str, raw_size: int, streams: int = 1) -> None:
    """Two layers: the compressed upload with its container facts, then the disk."""
    assert [layer.kind for layer in result.layers] == ["staged", "decompressed"]
    outer, inner = result.layers
    assert outer.facts["container_format"] == kind and outer.facts["compression"] == kind
    assert outer.facts["compressed_size"] == outer.size
    assert outer.facts["uncompressed_size"] == raw_size == inner.size
    assert outer.facts["ratio"] == round(raw_size / outer.size, 1)
    assert outer.facts["streams"] == streams
    assert inner.facts["container_format"] == "bare"


# -- benign streams --------------------------------------------------------------------


@pytest.mark.parametrize("maker", ["library", "tool"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_compressed_raw_disk_is_unpacked_and_accepted(csettings, workdir, tmp_path, kind, maker):
    raw = ci.disk_like(4 * MiB)
    source = ci.write(tmp_path / "disk.raw", raw)
    path = tmp_path / f"disk.{kind}"
    if maker == "tool":
        ci.compress_file(kind, source, path)
    else:
        ci.write(path, ci.compress(kind, raw))
    result = audit(csettings, path, disk_format="raw")
    assert_accepted(result, workdir)
    assert_layers(result, kind, len(raw))
    assert result.detected["disk_format"] == "raw" and result.detected["virtual_size"] == len(raw)
    assert result.checksums and result.checksums.md5 == hashlib.md5(raw).hexdigest()
    declared = result.layers[0].facts.get("declared_size")
    assert declared == (len(raw) if kind in ("xz", "zstd") else None)


@pytest.mark.parametrize("kind", KINDS)
def test_a_compressed_qcow2_is_inspected_as_qcow2(csettings, workdir, tmp_path, kind):
    qcow2 = images.qcow2_image(tmp_path / "disk.qcow2", "256M")
    path = ci.compress_file(kind, qcow2, tmp_path / f"disk.qcow2.{kind}")
    result = audit(csettings, path, disk_format="qcow2")
    assert_accepted(result, workdir)
    assert_layers(result, kind, qcow2.stat().st_size)
    assert result.detected["disk_format"] == "qcow2" and result.detected["virtual_size"] == 256 * MiB


def test_the_disk_claim_is_held_against_the_disk_inside(csettings, workdir, tmp_path):
    qcow2 = images.qcow2_image(tmp_path / "disk.qcow2")
    path = ci.compress_file("gzip", qcow2, tmp_path / "disk.qcow2.gz")
    assert_rejected(audit(csettings, path, disk_format="raw"), "format.claim_mismatch", workdir)


def test_the_output_is_written_sparse(csettings, workdir, tmp_path):
    raw = ci.disk_like(64 * MiB, density=0.01)
    path = ci.write(tmp_path / "disk.zst", ci.compress("zstd", raw))
    seen: dict[str, int] = {}

    def store(data: Path) -> None:
        info = os.stat(data)
        seen.update(size=info.st_size, allocated=info.st_blocks * 512)
        assert hashlib.sha256(data.read_bytes()).digest() == hashlib.sha256(raw).digest()

    assert_accepted(audit(csettings, path, store=store), workdir)
    assert seen["size"] == len(raw)
    assert seen["allocated"] < len(raw) // 4  # ~2.4 MiB of data in 64 KiB pieces


def test_a_trailing_hole_keeps_the_size(csettings, workdir, tmp_path):
    raw = os.urandom(5000) + bytes(3 * MiB + 123)
    result = audit(csettings, ci.write(tmp_path / "d.gz", ci.compress("gzip", raw)))
    assert_accepted(result, workdir)
    assert result.layers[1].size == len(raw) and result.checksums.md5 == hashlib.md5(raw).hexdigest()


@pytest.mark.parametrize("kind", KINDS)
def test_concatenated_streams_and_zero_padding_are_one_disk(csettings, workdir, tmp_path, kind):
    parts = [ci.disk_like(MiB, seed=1), ci.disk_like(MiB, seed=2), ci.disk_like(MiB, seed=3)]
    data = b"".join(ci.compress(kind, part) + bytes(4 * i) for i, part in enumerate(parts))
    if kind == "zstd":  # a skippable frame (pzstd writes them) adds nothing
        data = (0x184D2A5A).to_bytes(4, "little") + (6).to_bytes(4, "little") + b"ignore" + data
    result = audit(csettings, ci.write(tmp_path / "multi", data))
    assert_accepted(result, workdir)
    assert_layers(result, kind, 3 * MiB, streams=4 if kind == "zstd" else 3)
    assert result.checksums.md5 == hashlib.md5(b"".join(parts)).hexdigest()
    if kind in ("xz", "zstd"):  # every xz index, every zstd frame header declared its part
        assert result.layers[0].facts["declared_size"] == 3 * MiB


@pytest.mark.parametrize("size", [1, 4096])
def test_many_small_xz_streams_stay_within_the_read_budget(csettings, workdir, tmp_path, size):
    # The indexes are read backwards, stream by stream; tiny streams must not make that
    # cost more than the data is worth (for 1-byte streams the early check gives up).
    raw = ci.disk_like(size, density=1.0)
    path = ci.write(tmp_path / "many.xz", b"".join(ci.compress("xz", raw) for _ in range(400)))
    result = audit(csettings, path)
    assert_accepted(result, workdir)
    assert_layers(result, "xz", 400 * size, streams=400)
    assert result.layers[0].facts.get("declared_size") == (400 * size if size > 1 else None)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("trailer", [b"junk", b"\0\0\0\0PK\x03\x04", b"\x1f\x8b-not-quite"])
def test_data_after_the_last_stream_is_rejected(csettings, workdir, tmp_path, kind, trailer):
    if trailer.startswith(b"\x1f\x8b") and kind == "gzip":
        trailer = b"BZh91AY&SY"  # another format's stream after a gzip
    path = ci.write(tmp_path / "t", ci.compress(kind, ci.disk_like(MiB)) + trailer)
    detail = assert_rejected(audit(csettings, path), "compression.trailing_data", workdir)
    assert "after 1 stream(s)" in detail


# -- nesting -----------------------------------------------------------------------------


def test_gzip_of_bzip2_is_unpacked_twice(csettings, workdir, tmp_path):
    raw = ci.disk_like(2 * MiB)
    inner = ci.compress("bzip2", raw)
    path = ci.write(tmp_path / "disk.bz2.gz", ci.compress("gzip", inner))
    result = audit(csettings, path, disk_format="raw")
    assert_accepted(result, workdir)
    assert [layer.kind for layer in result.layers] == ["staged", "decompressed", "decompressed"]
    outer, middle, disk = result.layers
    assert outer.facts["compression"] == "gzip" and outer.facts["uncompressed_size"] == len(inner)
    assert middle.facts["compression"] == "bzip2" and middle.facts["uncompressed_size"] == len(raw)
    assert disk.facts["disk_format"] == "raw" and disk.size == len(raw)


def test_nesting_deeper_than_max_depth_is_rejected(csettings, workdir, tmp_path):
    raw = ci.disk_like(MiB)
    three = ci.write(tmp_path / "3", ci.compress("gzip", ci.compress("bzip2", ci.compress("xz", raw))))
    detail = assert_rejected(audit(csettings, three), "compression.depth", workdir)
    assert detail == "xz: depth 3, max_depth 2"
    assert_accepted(audit(with_options(csettings, max_depth=3), three), workdir)
    two = ci.write(tmp_path / "2", ci.compress("gzip", ci.compress("bzip2", raw)))
    assert_rejected(audit(with_options(csettings, max_depth=1), two), "compression.depth", workdir)


# -- bombs, at a small scale ---------------------------------------------------------------


def fill_stream(kind: str, size: int, fill: int) -> bytes:
    """``size`` bytes of ``fill`` in ``kind``, with no declared size where the format allows (zstd streaming)."""
    payload = bytes([fill]) * size
    return {"gzip": ci.gzip_zeros(size, fill=fill), "bzip2": bz2.compress(payload), "xz": ci.compress("xz", payload),
            "zstd": ci.zstd_stream(payload)}[kind]


def produced(detail: str) -> int:
    """The output count a ratio detail starts with."""
    return int(detail.split(": ", 1)[1].split(" ", 1)[0])


@pytest.mark.parametrize("kind", KINDS)
def test_a_sparse_raw_disk_is_accepted_whatever_its_ratio(csettings, workdir, tmp_path, kind):
    # A fresh 128 MiB disk holding 32 KiB, by the real tool: 800:1 (gzip) to 4000:1 (bzip2), far over
    # max_ratio, which applies to the data only; zero runs cost time, not disk.
    raw = tmp_path / "fresh.raw"
    with open(raw, "wb") as handle:
        handle.write(os.urandom(32 << 10))
        handle.truncate(128 * MiB)
    path = ci.compress_file(kind, raw, tmp_path / f"fresh.{kind}")
    result = audit(csettings, path, disk_format="raw")
    assert_accepted(result, workdir)
    assert_layers(result, kind, 128 * MiB)
    assert result.layers[0].facts["ratio"] > 500
    assert result.checksums.md5 == hashlib.md5(raw.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", KINDS)
def test_a_data_bomb_is_stopped_by_max_ratio_after_the_grace(csettings, workdir, tmp_path, kind):
    # 32 MiB of 0x01 bytes: as compressible as zeros, but data, written to disk.
    path = ci.write(tmp_path / "bomb", fill_stream(kind, 32 * MiB, 1))
    strict = with_options(csettings, ratio_grace="2MiB")
    detail = assert_rejected(audit(strict, path), "compression.ratio", workdir)
    assert " data bytes from " in detail and "max_ratio 100.0" in detail
    assert 2 * MiB < produced(detail) <= 2 * MiB + 10 * MiB  # a little past the grace, long before 32 MiB
    ratio = float(detail.split("ratio ")[1].split(":1")[0])
    assert ratio > 100 and detail.split("ratio ")[1].split(":1")[0].count(".") == 1
    # Under the grace the same stream is a small, fine image.
    assert_accepted(audit(csettings, path), workdir)


@pytest.mark.parametrize("kind", ["bzip2", "zstd"])
def test_a_zero_bomb_is_stopped_by_the_sparse_ratio(csettings, workdir, tmp_path, kind):
    # Zero runs in bzip2 (about 1.3 million to one) and zstd (32768:1) are past max_sparse_ratio.
    path = ci.write(tmp_path / "zeros", fill_stream(kind, 64 * MiB, 0))
    strict = with_options(csettings, sparse_grace="4MiB")
    detail = assert_rejected(audit(strict, path), "compression.ratio", workdir)
    assert "zeros included" in detail and "max_sparse_ratio 30000.0" in detail
    assert 4 * MiB < produced(detail) <= 4 * MiB + 10 * MiB
    assert_accepted(audit(with_options(csettings, sparse_grace="4MiB", max_sparse_ratio=2_000_000), path), workdir)


@pytest.mark.parametrize("kind", ["gzip", "xz"])
def test_zero_runs_of_gzip_and_xz_are_held_to_max_image_size(csettings, workdir, tmp_path, kind):
    # gzip (1032:1) and xz (about 7000:1) zero runs never reach max_sparse_ratio: like a fresh
    # disk, they are accepted up to max_image_size, then counted (gzip) or declared (xz) over it.
    path = ci.write(tmp_path / "zeros", fill_stream(kind, 64 * MiB, 0) + fill_stream(kind, 4096, 0))
    small = with_options(csettings, sparse_grace="1MiB", ratio_grace="1MiB")
    result = audit(small, path)
    assert_accepted(result, workdir)
    assert result.layers[0].facts["ratio"] > 1000
    detail = assert_rejected(audit(small.replace(max_image_size=16 * MiB), path), "compression.too_large", workdir)
    assert detail.startswith("xz: the index declares" if kind == "xz" else "gzip: the output passed the limit")


def test_the_ratio_counts_the_whole_upload_for_nested_streams(csettings, workdir, tmp_path):
    # Each layer alone expands less than 40:1 past the grace; together they expand much more.
    data = ci.compress("gzip", ci.gzip_zeros(24 * MiB, level=1, fill=1))
    path = ci.write(tmp_path / "nested", data)
    strict = with_options(csettings, ratio_grace="1MiB", max_ratio=300)
    detail = assert_rejected(audit(strict, path), "compression.ratio", workdir)
    assert f"(upload {len(data)})" in detail


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "zstd"])
def test_output_over_max_image_size_is_rejected(csettings, workdir, tmp_path, kind):
    raw = ci.disk_like(6 * MiB, density=0.5)
    data = ci.zstd_stream(raw) if kind == "zstd" else ci.compress(kind, raw)
    if kind == "gzip":  # a small last member: its ISIZE says too little to reject early
        data += ci.compress("gzip", b"end")
    result = audit(csettings.replace(max_image_size=4 * MiB), ci.write(tmp_path / "big", data))
    detail = assert_rejected(result, "compression.too_large", workdir)
    assert detail.startswith(f"{kind}: the output passed the limit after ")
    assert "4.0 MiB" in result.user_message


# -- declared sizes: rejected before decompressing ------------------------------------------


def test_the_last_gzip_isize_is_a_lower_bound_checked_first(csettings, workdir, tmp_path):
    raw = ci.disk_like(6 * MiB, density=0.5)
    path = ci.write(tmp_path / "one.gz", ci.compress("gzip", raw))
    result = audit(csettings.replace(max_image_size=4 * MiB), path)
    detail = assert_rejected(result, "compression.too_large", workdir)
    assert detail == f"gzip: the last gzip trailer (ISIZE, a lower bound) declares {6 * MiB} bytes, limit {4 * MiB}"
    assert "uncompressed_size" not in result.layers[0].facts  # nothing was decoded
    # Zero padding after the trailer only makes the bound smaller: the same disk padded is accepted.
    padded = ci.write(tmp_path / "padded.gz", ci.compress("gzip", raw) + bytes(3))
    assert_accepted(audit(csettings.replace(max_image_size=8 * MiB), padded), workdir)


def test_a_zstd_header_declaring_too_much_is_rejected_unread(csettings, workdir, tmp_path):
    # 1.1 TiB declared, then a block that is not there: decoding would find the frame truncated.
    path = ci.write(tmp_path / "liar.zst", ci.zstd_lying_frame(int(1.1 * (1 << 40)), body=b"x" * 100)[:-50])
    result = audit(csettings, path)
    detail = assert_rejected(result, "compression.too_large", workdir)
    assert detail == f"zstd: frame 1 header declares {int(1.1 * (1 << 40))} bytes, limit {1 << 40}"
    assert "uncompressed_size" not in result.layers[0].facts


def test_zstd_frames_declare_in_total(csettings, workdir, tmp_path):
    frame = ci.compress("zstd", ci.disk_like(2 * MiB, density=0.5))
    path = ci.write(tmp_path / "frames.zst", frame * 3)
    detail = assert_rejected(audit(csettings.replace(max_image_size=5 * MiB), path), "compression.too_large", workdir)
    assert detail == f"zstd: frame 3 header declares {6 * MiB} bytes, limit {5 * MiB}"


def test_an_xz_index_declaring_too_much_is_rejected_unread(csettings, workdir, tmp_path):
    liar = ci.write(tmp_path / "liar.xz", ci.xz_declaring(ci.disk_like(MiB), 2 << 40))
    listed = subprocess.run(["xz", "--robot", "--list", str(liar)], capture_output=True, text=True, check=True)
    assert f"\t{2 << 40}\t" in next(line for line in listed.stdout.splitlines() if line.startswith("totals"))
    detail = assert_rejected(audit(csettings, liar), "compression.too_large", workdir)
    assert detail == f"xz: the index declares {2 << 40} bytes, limit {1 << 40}"


@pytest.mark.parametrize("kind", ["xz", "zstd"])
def test_a_declared_size_never_makes_data_acceptable(csettings, workdir, tmp_path, kind):
    raw = ci.disk_like(2 * MiB, density=0.5)
    data = bytearray(ci.xz_declaring(raw, 1000) if kind == "xz" else ci.compress("zstd", raw))
    if kind == "zstd":  # patch the 4-byte frame content size of a single-segment frame to a smaller one
        assert data[4] >> 6 == 2 and data[4] & 0x20
        data[5:9] = (1000).to_bytes(4, "little")
    detail = assert_rejected(audit(csettings, ci.write(tmp_path / "small-liar", bytes(data))),
                             "compression.corrupt", workdir)
    assert "stream 1" in detail


def test_a_huge_declared_window_is_rejected(csettings, workdir, tmp_path):
    path = ci.write(tmp_path / "window.zst", ci.zstd_lying_frame(None, window_log=31, body=b"abc"))
    detail = assert_rejected(audit(csettings, path), "compression.window", workdir)
    assert detail == f"zstd: frame 1 window {1 << 31} bytes, limit {128 * MiB}"


@pytest.mark.parametrize("kind", ["xz", "zstd"])
def test_a_decoder_needing_more_memory_than_allowed_is_rejected(csettings, workdir, tmp_path, kind):
    raw = ci.disk_like(2 * MiB, density=0.5)
    if kind == "xz":
        data = ci.compress("xz", raw, preset=9)  # a 64 MiB dictionary
    else:
        data = ci.zstd_stream(raw, window_log=24)  # a 16 MiB window
    small = with_options(csettings, max_window_size="8MiB")
    assert_rejected(audit(small, ci.write(tmp_path / "w", data)), "compression.window", workdir)
    assert_accepted(audit(csettings, tmp_path / "w"), workdir)


# -- damaged streams --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_truncated_stream_is_corrupt(csettings, workdir, tmp_path, kind):
    data = ci.compress(kind, ci.disk_like(MiB, density=0.5))
    for cut in (len(data) // 2, len(data) - 1):
        detail = assert_rejected(audit(csettings, ci.write(tmp_path / "cut", data[:cut])), "compression.corrupt",
                                 workdir)
        assert "stream 1" in detail


@pytest.mark.parametrize(("kind", "offset"), [
    ("gzip", -8),  # the CRC-32 in the trailer
    ("gzip", -2),  # the length in the trailer
    ("bzip2", -3),  # the stream CRC
    ("xz", 200),  # the block's data
    ("zstd", -2),  # the content checksum
])
def test_a_checksum_mismatch_is_corrupt(csettings, workdir, tmp_path, kind, offset):
    raw = ci.disk_like(MiB, density=0.1)
    data = ci.compress(kind, raw, write_checksum=True) if kind == "zstd" else ci.compress(kind, raw)
    path = ci.write(tmp_path / "crc", ci.flip(data, offset, 0x10))
    assert_rejected(audit(csettings, path), "compression.corrupt", workdir)


@pytest.mark.parametrize("kind", KINDS)
def test_random_bytes_after_the_magic_are_corrupt(csettings, workdir, tmp_path, kind):
    path = ci.write(tmp_path / "noise", ci.random_after_magic(kind))
    result = audit(csettings, path)
    assert result.layers[0].facts["container_format"] == kind
    assert_rejected(result, "compression.corrupt", workdir)


def test_a_zstd_frame_that_needs_a_dictionary_is_corrupt(csettings, workdir, tmp_path):
    path = ci.write(tmp_path / "dict.zst", ci.zstd_with_dictionary(b"common words " * 5000))
    detail = assert_rejected(audit(csettings, path), "compression.corrupt", workdir)
    assert "Dictionary" in detail


def test_too_many_streams(csettings, workdir, tmp_path):
    member = ci.compress("gzip", ci.disk_like(64 << 10))
    path = ci.write(tmp_path / "members.gz", member * 4)
    detail = assert_rejected(audit(with_options(csettings, max_streams=3), path), "compression.streams", workdir)
    assert detail == "gzip: more than 3 streams"


@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_of_nothing_is_empty(csettings, workdir, tmp_path, kind):
    assert_rejected(audit(csettings, ci.write(tmp_path / "empty", ci.compress(kind, b""))), "compression.empty",
                    workdir)


# -- what is inside is inspected like any disk --------------------------------------------------


def test_a_gzipped_qcow2_with_a_backing_file_is_rejected(csettings, workdir, tmp_path, backing_qcow2):
    path = ci.compress_file("gzip", backing_qcow2, tmp_path / "evil.qcow2.gz")
    result = audit(csettings, path, disk_format="qcow2")
    assert_rejected(result, "qcow2.backing_file", workdir)
    assert [layer.kind for layer in result.layers] == ["staged", "decompressed"]
    assert result.layers[1].facts["disk_format"] == "qcow2"
    assert all("/etc/passwd" not in f.message for f in result.findings)


def test_the_name_stored_in_a_gzip_header_is_never_used(csettings, workdir, tmp_path):
    raw = ci.disk_like(MiB)
    path = ci.write(tmp_path / "named.gz", ci.gzip_named(raw, b"../../escaped.raw"))
    result = audit(csettings, path)
    assert_accepted(result, workdir)
    assert result.checksums.md5 == hashlib.md5(raw).hexdigest()
    assert not list(tmp_path.parent.rglob("escaped.raw"))
    assert "escaped" not in repr(result.to_dict())


@pytest.mark.parametrize("field", ["name", "comment", "extra"])
def test_a_gzip_header_of_megabytes_is_flagged(csettings, workdir, tmp_path, field):
    raw = ci.disk_like(MiB)
    big = {"name": b"n" * (2 * MiB), "comment": b"c" * (2 * MiB), "extra": b"AB" + (65531).to_bytes(2, "little")
           + b"x" * 65531}[field]
    data = ci.gzip_with_header(raw, **{field: big})
    if field == "extra":  # one FEXTRA is at most 64 KiB: flagged only under a smaller limit
        assert_accepted(result := audit(csettings, ci.write(tmp_path / "h.gz", data)), workdir)
        assert "compression.gzip_header" not in codes(result)
        csettings = with_options(csettings, max_gzip_header="32KiB")
    data = data + ci.compress("gzip", b"tail")  # a second, ordinary member: flagged once
    result = audit(csettings, ci.write(tmp_path / "h.gz", data))
    assert_accepted(result, workdir)  # a warning: every reader skips the header, the disk is the same
    assert result.checksums.md5 == hashlib.md5(raw + b"tail").hexdigest()
    flagged = [f for f in result.findings if f.code == "compression.gzip_header"]
    assert len(flagged) == 1 and flagged[0].severity.value == "warning"
    assert flagged[0].detail.startswith("gzip: member 1 at offset 0 has a header over")
    assert b"n" * 16 not in repr(result.to_dict()).encode()


def test_the_gzip_header_is_measured_exactly_at_any_read_size():
    header = ci.gzip_with_header(b"x", extra=b"AB\x02\x00hi", name=b"disk.raw", comment=b"made here")
    length = 10 + 2 + 6 + 9 + 10
    for chunk in (1, 17, 512, 64 << 10):
        def peek(size: int, chunk: int = chunk) -> bytes:  # a reader handing out at most what it has buffered
            return header[:min(size, -(-size // chunk) * chunk)]
        assert header_size(peek, 1 << 10) == length
        assert header_size(peek, length) == length and header_size(peek, length - 1) is None


def test_the_options_are_checked_when_the_pipeline_is_built(csettings):
    for bad in ({"max_ratio": 0.5}, {"max_ratio": "lots"}, {"ratio_grace": "big"}, {"max_depth": -1}):
        with pytest.raises(ConfigError, match=r"plugin\.compression\."):
            Pipeline.from_settings(with_options(csettings, **bad))


# -- any damage ends in a verdict ---------------------------------------------------------------

#: Two streams of each format (the second a little one), so damage also hits the boundary between them.
BASES = {kind: ci.compress(kind, ci.disk_like(192 << 10, density=0.3)) + ci.compress(kind, ci.disk_like(4096, seed=5))
         for kind in KINDS}


@st.composite
def damaged_streams(draw: st.DrawFn) -> bytes:
    data = bytearray(BASES[draw(st.sampled_from(KINDS))])
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["flip", "cut", "insert", "append"]))
        at = draw(st.integers(0, len(data) - 1))
        noise = draw(st.binary(min_size=1, max_size=64))
        if how == "flip":
            data[at] ^= noise[0] or 1
        elif how == "cut":
            del data[max(at, 4):]
        elif how == "insert":
            data[at:at] = noise
        else:
            data += noise
    return bytes(data)


@hsettings(max_examples=50, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=damaged_streams())
def test_damaged_streams_always_end_in_a_verdict(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp, "work")
        work.mkdir()
        path = ci.write(Path(tmp, "damaged"), data)
        settings = Settings(work_dir=work, container_formats=("bare", "compressed"),
                            plugins=PluginSettings(entry_points=False, disabled=("qemu_img",)))
        result = audit(settings, path, store=lambda p: None)
        assert result.verdict in (Verdict.ACCEPT, Verdict.REJECT)
        assert "pipeline.plugin_failed" not in codes(result), result.findings
        assert list(work.iterdir()) == []
        outer = result.layers[0].facts
        if result.accepted:
            assert result.layers[1].size == outer["uncompressed_size"]
        else:
            found = set(codes(result)) & COMPRESSION_CODES
            assert found or "compression" not in outer or "uncompressed_size" in outer, result.findings


@st.composite
def output_chunks(draw: st.DrawFn) -> list[bytes]:
    """Chunks as decoders return them: any size, runs of zeros and of data, across block edges."""
    chunks = []
    for _ in range(draw(st.integers(1, 12))):
        size = draw(st.sampled_from([0, 1, 4095, 65536, 65537, MiB - 1, MiB, MiB + 3, 3 * MiB]))
        fill = draw(st.sampled_from(["zeros", "data", "speck"]))
        chunk = bytearray(size)
        if fill == "data":
            chunk[:] = os.urandom(size)
        elif fill == "speck" and size:
            chunk[draw(st.integers(0, size - 1))] = 1
        chunks.append(bytes(chunk))
    return chunks


@hsettings(max_examples=50, derandomize=True, deadline=None)
@given(chunks=output_chunks())
def test_the_sparse_writer_writes_exactly_what_it_is_given(chunks: list[bytes]) -> None:
    with tempfile.TemporaryFile() as handle:
        writer = SparseWriter(handle.fileno())
        for chunk in chunks:
            writer.write(chunk)
        writer.close()
        handle.seek(0)
        assert handle.read() == b"".join(chunks)
