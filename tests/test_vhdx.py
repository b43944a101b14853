"""The VHDX plugin on real images: benign ones made by qemu-img, hostile ones byte-patched from them
(CRC-32C fixed, so each attack reaches the check it is aimed at)."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from importhooks_plugins.formats.vhdx import crc32c

from importhooks import ImportResult, Verdict

from . import helpers
from . import vhd_images as vi
from .helpers import Copy, assert_messages_omit, audit, codes, copier, cut_copy

EIB = 1 << 60
MIB = 1 << 20
HOST_PATH = "/etc/passwd"
OTHER_GUID = bytes(range(1, 17))


def rejected_with(settings, path: Path, code: str, **claims) -> ImportResult:
    result = helpers.rejected_with(settings, path, code, **claims)
    assert_messages_omit(result, HOST_PATH, str(path))  # user messages: no host paths, no image text
    return result


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Benign images, built once per module; tests patch copies of them."""
    base = tmp_path_factory.mktemp("vhdx")
    raw = vi.data_raw(base / "data.raw")
    small = vi.data_raw(base / "small.raw", 4 << 20)
    return {
        "dynamic": vi.vhdx(base / "dynamic.vhdx"),
        "fixed": vi.vhdx(base / "fixed.vhdx", "fixed", "2M", block_size="1M"),
        "dynamic_data": vi.vhdx(base / "data.vhdx", raw=raw, block_size="1M"),
        "sparse_1t": vi.vhdx(base / "sparse.vhdx", size="1T"),
        "chunks": vi.vhdx(base / "chunks.vhdx", size="5G", block_size="1M"),
        "small_data": vi.vhdx(base / "small.vhdx", raw=small, block_size="1M"),
    }


@pytest.fixture
def copy(templates: dict[str, Path], tmp_path: Path) -> Copy:
    return copier(templates, tmp_path, "-copy.vhdx")


def test_crc32c_known_answer():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


# -- benign ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dynamic", "fixed", "dynamic_data", "sparse_1t", "chunks"])
def test_benign_vhdx_is_accepted_with_facts(settings, templates, name):
    path = templates[name]
    result = audit(settings, path, disk_format="vhdx")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.findings == ()
    info = vi.qemu_info(path, "vhdx")
    facts = result.detected
    assert facts["disk_format"] == "vhdx"
    assert facts["virtual_size"] == info["virtual-size"]  # what the hypervisor will see
    assert facts["cluster_size"] == info["cluster-size"]
    assert facts["subformat"] == ("fixed" if name == "fixed" else "dynamic")


def test_claim_mismatch_both_ways(settings, templates, raw_file):
    rejected_with(settings, templates["dynamic"], "format.claim_mismatch", disk_format="raw")
    rejected_with(settings, templates["dynamic"], "format.claim_mismatch", disk_format="vhd")
    assert codes(audit(settings, raw_file, disk_format="vhdx")) == ["format.claim_mismatch"]


def test_unknown_optional_metadata_item_is_accepted(settings, copy):
    path = copy("dynamic")
    vi.add_vhdx_metadata_item(path, OTHER_GUID, b"site data", flags=0)
    assert audit(settings, path).verdict is Verdict.ACCEPT


# -- headers and the log ---------------------------------------------------------------------


@pytest.mark.parametrize("headers", [(1, 2), (1,), (2,)])
def test_pending_log_is_rejected(settings, copy, headers):
    path = copy("dynamic")
    for number in headers:
        vi.patch_vhdx_header(path, number, 48, OTHER_GUID)
    rejected_with(settings, path, "vhdx.log_pending")


@pytest.mark.parametrize(("number", "at", "data", "fix"), [
    (2, 8, b"\x01", False),  # CRC left stale
    (1, 0, b"HEAD", True),
    (1, 66, struct.pack("<H", 2), True),  # version 2
    (2, 64, struct.pack("<H", 1), True),  # log version 1
])
def test_header_invalid(settings, copy, number, at, data, fix):
    path = copy("dynamic")
    vi.patch_vhdx_header(path, number, at, data, fix=fix)
    rejected_with(settings, path, "vhdx.header_invalid")


def test_headers_with_one_sequence_number_must_be_identical(settings, copy):
    path = copy("dynamic")
    vi.patch_vhdx_header(path, 2, 8, vi.read_at(path, 64 * 1024 + 8, 8))
    assert audit(settings, path).verdict is Verdict.ACCEPT  # identical headers (Disk2vhd writes them)
    vi.patch_vhdx_header(path, 2, 32, OTHER_GUID)  # another data write GUID
    rejected_with(settings, path, "vhdx.header_invalid")


@pytest.mark.parametrize("change", [(72, struct.pack("<Q", MIB + 512)), (68, struct.pack("<I", 4096)),
                                    (72, struct.pack("<Q", 2 * MIB)), (72, struct.pack("<Q", 1 << 40))])
def test_log_misplaced(settings, copy, change):
    path = copy("dynamic")
    for number in (1, 2):
        vi.patch_vhdx_header(path, number, *change)
    rejected_with(settings, path, "vhdx.region_invalid")


def test_truncated_vhdx_is_rejected_at_every_length(settings, copy):
    template = copy("dynamic_data")
    size = template.stat().st_size
    for length in (8, 4096, 100 << 10, 200 << 10, 300 << 10, MIB - 1, MIB, 3 * MIB + 4096, 4 * MIB, size - MIB,
                   size - 1):
        result = audit(settings, cut_copy(template, length))
        assert result.verdict is Verdict.REJECT, (length, result.findings)
        assert any(c.startswith(("vhdx.", "format.")) for c in codes(result)), (length, result.findings)


@pytest.mark.parametrize("length", [400_000, 2 << 20])
def test_identifier_followed_by_garbage(settings, tmp_path, length):
    path = tmp_path / "garbage.vhdx"  # the identifier alone makes disk_format call it vhdx
    path.write_bytes(b"vhdxfile" + random.Random(7).randbytes(length))
    rejected_with(settings, path, "vhdx.header_invalid")


# -- region tables --------------------------------------------------------------------------------


def _region_entry(path: Path, guid: bytes) -> int:
    return vi.vhdx_regions(path)[guid][0]


@pytest.mark.parametrize("case", ["count", "stale crc", "tables differ", "bat misaligned", "bat past eof",
                                  "metadata past eof",
                                  "bat over metadata", "bat over log", "bat in header section", "bat twice",
                                  "no bat", "empty bat"])
def test_region_table_invalid(settings, copy, case):
    path = copy("dynamic")
    bat = _region_entry(path, vi.BAT_REGION)
    meta = _region_entry(path, vi.METADATA_REGION)
    patches = {
        "count": (8, struct.pack("<I", 5000)),
        "stale crc": (bat + 16, struct.pack("<Q", 5 * MIB)),
        "tables differ": (100, b"\x01"),
        "bat misaligned": (bat + 16, struct.pack("<Q", 2 * MIB + 4096)),
        "bat past eof": (bat + 16, struct.pack("<Q", 1 << 40)),
        "metadata past eof": (meta + 16, struct.pack("<Q", 1 << 40)),
        "bat over metadata": (bat + 16, struct.pack("<Q", 3 * MIB)),
        "bat over log": (bat + 16, struct.pack("<Q", MIB)),
        "bat in header section": (bat + 16, struct.pack("<Q", 0)),
        "bat twice": (meta, vi.BAT_REGION),
        "no bat": (bat, OTHER_GUID),
        "empty bat": (bat + 24, struct.pack("<I", 0)),
    }
    at, data = patches[case]
    if case == "stale crc":
        vi.patch_vhdx_regions(path, at, data, fix=False)
    else:
        vi.patch_vhdx_regions(path, at, data, tables=(2,) if case == "tables differ" else (1, 2))
    # oslo.utils cannot read metadata past the end: disk_format rejects the damaged header first
    rejected_with(settings, path, "format.invalid" if case == "metadata past eof" else "vhdx.region_invalid")


def test_unknown_required_region(settings, copy):
    path = copy("dynamic")
    vi.patch_vhdx_regions(path, 16 + 32 * 2, struct.pack("<16sQII", OTHER_GUID, 5 * MIB, MIB, 1))
    vi.patch_vhdx_regions(path, 8, struct.pack("<I", 3))
    rejected_with(settings, path, "vhdx.region_unknown")
    vi.patch_vhdx_regions(path, 16 + 32 * 2 + 28, struct.pack("<I", 0))  # the same region, optional
    assert audit(settings, path).verdict is Verdict.ACCEPT


# -- metadata -----------------------------------------------------------------------------------


def _item(path: Path, guid: bytes) -> tuple[int, int, int]:
    return vi.vhdx_metadata_items(path)[guid]


@pytest.mark.parametrize("block_size", [3 * MIB, MIB // 2, 512 * MIB, 0])
def test_block_size_out_of_range(settings, copy, block_size):
    path = copy("dynamic")
    vi.write_at(path, _item(path, vi.FILE_PARAMETERS)[1], struct.pack("<I", block_size))
    rejected_with(settings, path, "vhdx.block_size")


def test_has_parent_is_a_differencing_disk(settings, copy):
    path = copy("dynamic")
    vi.write_at(path, _item(path, vi.FILE_PARAMETERS)[1] + 4, struct.pack("<I", 2))
    result = rejected_with(settings, path, "vhdx.differencing")
    assert result.detected["subformat"] == "differencing"


def test_parent_locator_is_a_differencing_disk_and_its_path_stays_out(settings, copy):
    path = copy("dynamic")
    locator = struct.pack("<16sHH", OTHER_GUID, 0, 1) + struct.pack("<IIHH", 32, 44, 22, 2 * len(HOST_PATH))
    payload = locator + "parent_linkage".encode("utf-16-le")[:22] + HOST_PATH.encode("utf-16-le")
    vi.add_vhdx_metadata_item(path, vi.PARENT_LOCATOR, payload, flags=6)
    result = rejected_with(settings, path, "vhdx.differencing")
    assert all(HOST_PATH not in (f.detail or "") for f in result.findings)


def test_unknown_required_metadata_item(settings, copy):
    path = copy("dynamic")
    vi.add_vhdx_metadata_item(path, OTHER_GUID, b"x" * 8, flags=4)
    rejected_with(settings, path, "vhdx.metadata_unknown")


@pytest.mark.parametrize("case", ["signature", "logical sector", "physical sector", "size not sectors",
                                  "item past region", "item in table", "item length", "items overlap",
                                  "missing item", "size twice", "count"])
def test_metadata_invalid(settings, copy, case):
    path = copy("dynamic")
    _at, base, _length, _flags = vi.vhdx_regions(path)[vi.METADATA_REGION]
    size_entry, size_item, _ = _item(path, vi.VIRTUAL_DISK_SIZE)
    page83_entry = _item(path, vi.PAGE_83_DATA)[0]
    logical_entry, logical_item, _ = _item(path, vi.LOGICAL_SECTOR_SIZE)
    patches = {
        "signature": (base, b"metadat4"),
        "logical sector": (logical_item, struct.pack("<I", 1000)),
        "physical sector": (logical_item + 4, struct.pack("<I", 8192)),
        "size not sectors": (size_item, struct.pack("<Q", 10 * MIB + 100)),
        "item past region": (size_entry + 16, struct.pack("<I", MIB - 4)),
        "item in table": (size_entry + 16, struct.pack("<I", 4096)),
        "item length": (page83_entry + 20, struct.pack("<I", 8)),
        "items overlap": (logical_entry + 16, struct.pack("<I", size_item - base)),
        "missing item": (logical_entry, OTHER_GUID + struct.pack("<II", 0, 0) + struct.pack("<I", 0)),
        "count": (base + 10, struct.pack("<H", 3000)),
    }
    if case == "size twice":  # oslo.utils reads the first, a second one could say anything
        vi.add_vhdx_metadata_item(path, vi.VIRTUAL_DISK_SIZE, struct.pack("<Q", 4 * EIB), flags=6)
    else:
        vi.write_at(path, *patches[case])
    rejected_with(settings, path, "vhdx.metadata_invalid")


def test_four_exbibyte_vhdx_is_over_the_size_limit(settings, copy):
    path = copy("dynamic")
    vi.write_at(path, _item(path, vi.VIRTUAL_DISK_SIZE)[1], struct.pack("<Q", 4 * EIB))
    result = rejected_with(settings, path, "format.virtual_size_too_large")
    assert result.detected["virtual_size"] == 4 * EIB
    assert "vhdx.metadata_invalid" in codes(result)  # over the VHDX maximum of 64 TiB too


# -- the BAT ----------------------------------------------------------------------------------------


def _set_bat(path: Path, index: int, entry: int) -> None:
    vi.write_at(path, vi.vhdx_bat_offset(path) + 8 * index, struct.pack("<Q", entry))


@pytest.mark.parametrize("case", ["partially present", "state 4", "past eof", "over metadata", "in header",
                                  "over another block"])
def test_bat_entry_invalid(settings, copy, case):
    path = copy("dynamic_data")  # 12 MiB of 1 MiB blocks: 0, 3 and 11 hold data
    bat = vi.vhdx_bat_offset(path)
    entries = struct.unpack("<12Q", vi.read_at(path, bat, 96))
    assert [i for i, e in enumerate(entries) if e & 7 == 6] == [0, 3, 11]
    size = path.stat().st_size
    changes = {
        "partially present": (1, entries[0] | 7),
        "state 4": (1, 4),
        "past eof": (1, size | 6),
        "over metadata": (1, 3 * MIB | 6),
        "in header": (1, 6),
        "over another block": (1, entries[0]),
    }
    _set_bat(path, *changes[case])
    rejected_with(settings, path, "vhdx.bat_invalid")


def test_sector_bitmap_entries(settings, copy):
    path = copy("chunks")  # 5 GiB in 1 MiB blocks: entry 4096 is the first chunk's sector bitmap
    _set_bat(path, 4096, 2)  # a payload state in a bitmap entry
    rejected_with(settings, path, "vhdx.bat_invalid")
    _set_bat(path, 4096, (1 << 40) | 6)
    rejected_with(settings, path, "vhdx.bat_invalid")
    _set_bat(path, 4096, 0)
    assert audit(settings, path).verdict is Verdict.ACCEPT


def test_bat_too_small_for_the_disk(settings, copy):
    path = copy("dynamic")  # 200 GiB in 1 MiB blocks needs 1.6 MiB of BAT; the region has 1 MiB
    vi.write_at(path, _item(path, vi.FILE_PARAMETERS)[1], struct.pack("<I", MIB))
    vi.write_at(path, _item(path, vi.VIRTUAL_DISK_SIZE)[1], struct.pack("<Q", 200 << 30))
    rejected_with(settings, path, "vhdx.bat_invalid")


def test_bat_entries_over_the_option(settings, templates):
    limited = settings.replace(plugin={"vhdx": {"max_bat_entries": 1}})
    result = rejected_with(limited, templates["dynamic"], "vhdx.bat_invalid")
    assert "max_bat_entries" in (result.findings[-1].detail or "")


def test_randomly_damaged_vhdx_end_in_findings(settings, templates, tmp_path):
    """Random bytes in the headers, region tables, metadata and BAT (CRC-32C fixed): a finding every time,
    never a crash, and never an image this plugin passes that qemu then reads differently."""
    rng = random.Random(1729)
    image = templates["small_data"].read_bytes()
    for attempt in range(15):
        path = tmp_path / f"damaged-{attempt}.vhdx"
        path.write_bytes(vi.damaged_vhdx(image, rng))
        found = set(codes(audit(settings, path)))
        assert not found or not found <= {"qemu.mismatch", "qemu.failed"}, (attempt, found)
