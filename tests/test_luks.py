"""The luks plugin on real volumes: made by qemu-img (and cryptsetup), hostile ones byte-patched from them.

cryptsetup (Debian package cryptsetup-bin) makes the LUKS2 volume and a second LUKS1
volume (scripts/setup.sh installs cryptsetup-bin; the tests never skip for want of it).
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
from importhooks_plugins.formats import luks as plugin

from importhooks import Claims, ImportRequest, ImportResult, Pipeline, Severity, Verdict

from .helpers import Copy, audit, codes, copier, documented_options, patch, rejected_with, truncate, unpack_at
from .images import qemu_img_luks

MIB = 1 << 20
CRYPTSETUP = shutil.which("cryptsetup") or shutil.which("/usr/sbin/cryptsetup") or shutil.which("/sbin/cryptsetup")
assert CRYPTSETUP is not None, "cryptsetup-bin is missing: scripts/setup.sh installs it"
SLOTS = 208  # offset of key slot 0; 48 bytes per slot


@pytest.fixture
def settings(settings):
    """LUKS is not in the default disk_formats; these tests are about what happens when a cloud allows it."""
    return settings.replace(disk_formats=(*settings.disk_formats, "luks"))


def luks_codes(result: ImportResult) -> list[str]:
    return [c for c in codes(result) if c.startswith("luks.")]


def read_u32(path: Path, offset: int) -> int:
    return unpack_at(path, offset, ">I")


def run(*command: str, stdin: bytes | None = None) -> None:
    """Run a tool; a failure raises with its stderr (no test may pass on a half-made image)."""
    done = subprocess.run(list(command), input=stdin, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")


def cryptsetup_format(path: Path, luks_type: str, size: int = 20 * MIB) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
    assert CRYPTSETUP is not None
    run(CRYPTSETUP, "luksFormat", "--batch-mode", "--type", luks_type, "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", "--key-file", "-", str(path), stdin=b"pass")
    return path


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 1 MiB LUKS1 volume made by qemu-img, once per module (qemu calibrates PBKDF2: seconds)."""
    base = tmp_path_factory.mktemp("luks")
    path = base / "qemu.luks"
    qemu_img_luks("create", "-q", "-f", "luks", "--object", "secret,id=sec0,data=pass",
                  "-o", "key-secret=sec0,iter-time=10", str(path), "1M")
    return {"qemu": path}


@pytest.fixture
def copy(templates: dict[str, Path], tmp_path: Path) -> Copy:
    return copier(templates, tmp_path, ".luks")


# -- benign ------------------------------------------------------------------------


def test_qemu_luks_is_accepted_with_facts_and_an_info_finding(settings, copy):
    path = copy("qemu")
    result = audit(settings, path, disk_format="luks")
    assert result.verdict is Verdict.ACCEPT, result.findings
    info = [f for f in result.findings if f.code == "luks.contents_unchecked"]
    assert len(info) == 1 and info[0].severity is Severity.INFO
    assert [f for f in result.findings if f.severity is not Severity.INFO] == []
    facts = result.detected
    payload = read_u32(path, 104) * 512
    assert facts["disk_format"] == "luks"
    assert facts["format_version"] == 1
    assert facts["cipher"] == "aes-xts-plain64"
    assert facts["payload_offset"] == payload
    assert facts["virtual_size"] == MIB == path.stat().st_size - payload


def test_cryptsetup_luks1_is_accepted(settings, tmp_path):
    path = cryptsetup_format(tmp_path / "c1.luks", "luks1")
    result = audit(settings, path)
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert luks_codes(result) == ["luks.contents_unchecked"]
    assert result.detected["payload_offset"] == 4096 * 512


def test_luks_not_allowed_by_default(settings, copy):
    default = settings.replace(disk_formats=tuple(f for f in settings.disk_formats if f != "luks"))
    rejected_with(default, copy("qemu"), "format.not_allowed")


# -- version -----------------------------------------------------------------------


def test_luks2_is_rejected(settings, tmp_path):
    result = rejected_with(settings, cryptsetup_format(tmp_path / "c2.luks", "luks2"), "luks.version")
    assert result.detected["format_version"] == 2
    assert "luks.contents_unchecked" not in codes(result)


def test_patched_version_is_rejected(settings, copy):
    path = copy("qemu")
    patch(path, 6, ">H", 3)
    rejected_with(settings, path, "luks.version")


# -- header, slots, iterations, payload --------------------------------------------


def _slot(number: int, field: int) -> int:
    return SLOTS + 48 * number + field


PATCHES = [
    pytest.param(8, ">32s", b"foo", "luks.header", id="unknown-cipher"),
    pytest.param(8, ">32s", b"a" * 32, "luks.header", id="cipher-not-nul-terminated"),
    pytest.param(8, ">32s", b"\xffaes", "luks.header", id="cipher-not-ascii"),
    pytest.param(40, ">32s", b"xts plain64!", "luks.header", id="bad-cipher-mode"),
    pytest.param(40, ">32s", b"", "luks.header", id="empty-cipher-mode"),
    pytest.param(72, ">32s", b"sha2566", "luks.header", id="unknown-hash"),
    pytest.param(72, ">32s", b"", "luks.header", id="empty-hash"),
    pytest.param(108, ">I", 65, "luks.header", id="key-bytes"),
    pytest.param(164, ">I", 0, "luks.header", id="mk-digest-iterations-zero"),
    pytest.param(164, ">I", 0xFFFFFFFF, "luks.kdf_iterations", id="mk-digest-iterations-huge"),
    pytest.param(_slot(0, 4), ">I", 4_000_000_000, "luks.kdf_iterations", id="slot-iterations-huge"),
    pytest.param(_slot(0, 4), ">I", 0, "luks.key_slot", id="enabled-slot-iterations-zero"),
    pytest.param(_slot(2, 0), ">I", 1, "luks.key_slot", id="slot-state"),
    pytest.param(_slot(3, 44), ">I", 3999, "luks.key_slot", id="stripes"),
    pytest.param(_slot(3, 44), ">I", 0, "luks.key_slot", id="stripes-zero"),
    pytest.param(_slot(0, 40), ">I", 1, "luks.key_slot", id="key-material-over-header"),
    pytest.param(_slot(5, 40), ">I", 2528 - 100, "luks.key_slot", id="key-material-overlaps-slot"),
    pytest.param(_slot(7, 40), ">I", 4000, "luks.key_slot", id="key-material-overlaps-payload"),
    pytest.param(104, ">I", 1, "luks.payload_offset", id="payload-over-header"),
    pytest.param(104, ">I", 0xFFFFFFFF, "luks.payload_offset", id="payload-past-end-of-file"),
    pytest.param(104, ">I", (MIB + 2068480) // 512, "luks.payload_offset", id="payload-at-end-of-file"),
    pytest.param(104, ">I", 4000, "luks.key_slot", id="payload-over-key-material"),
]


@pytest.mark.parametrize(("offset", "fmt", "value", "code"), PATCHES)
def test_hostile_header_is_rejected(settings, copy, offset, fmt, value, code):
    path = copy("qemu")
    assert read_u32(path, 104) == 4040 and read_u32(path, _slot(7, 40)) == 3536  # the layout patched here
    patch(path, offset, fmt, value)
    result = rejected_with(settings, path, code)
    assert luks_codes(result) == [code]  # and no contents_unchecked: nothing was accepted


def test_untrusted_header_text_stays_out_of_messages(settings, copy):
    path = copy("qemu")
    patch(path, 8, ">32s", b"/etc/passwd")
    result = rejected_with(settings, path, "luks.header")
    assert all("/etc/passwd" not in f.message for f in result.findings)
    assert "b'/etc/passwd'" in (result.findings[-1].detail or "")  # escaped, for the operator


def test_iteration_limit_is_an_option(settings, copy):
    path = copy("qemu")
    patch(path, _slot(0, 4), ">I", 20_000_000)
    rejected_with(settings, path, "luks.kdf_iterations")
    raised = settings.replace(plugin={"luks": {"max_pbkdf2_iterations": 30_000_000}})
    assert audit(raised, path).verdict is Verdict.ACCEPT


def test_disabled_slot_may_have_any_iterations(settings, copy):
    path = copy("qemu")
    assert read_u32(path, _slot(1, 0)) == plugin.KEY_DISABLED
    patch(path, _slot(1, 4), ">I", 0xFFFFFFFF)
    assert audit(settings, path).verdict is Verdict.ACCEPT


# -- truncation, claims, fuzz --------------------------------------------------------


@pytest.mark.parametrize(("length", "expected"), [
    (100, {"format.invalid", "luks.header"}),
    (591, {"format.invalid", "luks.header"}),
    (600, {"luks.payload_offset"}),
    (2068480, {"luks.payload_offset"}),  # the header and key material, no payload
])
def test_truncated_luks_is_rejected(settings, copy, length, expected):
    path = copy("qemu")
    truncate(path, length)
    result = audit(settings, path)
    assert result.verdict is Verdict.REJECT
    assert expected & set(codes(result)), result.findings


def test_luks_claimed_raw_is_a_mismatch(settings, copy):
    result = rejected_with(settings, copy("qemu"), "format.claim_mismatch", disk_format="raw")
    assert result.detected["disk_format"] == "luks"


def test_raw_claimed_luks_is_a_mismatch(settings, raw_file):
    result = rejected_with(settings, raw_file, "format.claim_mismatch", disk_format="luks")
    assert luks_codes(result) == []


def test_random_header_damage_never_crashes(settings, copy):
    """Fuzz the numeric header and key slot fields: every outcome is a verdict, never a plugin failure."""
    rng = random.Random(20240613)
    pipeline = Pipeline.from_settings(settings)
    fields = [6, 104, 108, 164] + [_slot(n, f) for n in range(8) for f in (0, 4, 40, 44)]
    path = copy("qemu")
    with open(path, "rb") as handle:
        header = handle.read(4096)
    seen: set[str] = set()
    for _ in range(60):
        damaged = bytearray(header)
        for offset in rng.sample(fields, 2):
            width = 2 if offset == 6 else 4
            value = rng.choice([0, 1, 2, 8, 4000, 4040, (1 << (8 * width)) - 1, rng.getrandbits(8 * width)])
            damaged[offset : offset + width] = value.to_bytes(width, "big")
        with open(path, "r+b") as handle:
            handle.write(damaged)
        result = pipeline.run(ImportRequest(path=path, claims=Claims()))
        assert "pipeline.plugin_failed" not in codes(result), result.findings
        seen.update(luks_codes(result))
    assert "luks.key_slot" in seen and len(seen - {"luks.contents_unchecked"}) >= 3  # the damage was seen


def test_documented_options_are_the_defaults(settings):
    section = plugin.importhooks_plugin_options().section
    documented = documented_options(f"formats/{section}.rst")
    pipeline = Pipeline.from_settings(settings.replace(plugin=documented["plugin"]))
    defaults = {o.name: o.default for o in plugin.importhooks_plugin_options().options}
    assert pipeline.options[section] == defaults
    assert set(documented["plugin"][section]) == set(defaults)
