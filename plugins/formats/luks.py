"""Checks LUKS images: a well-formed LUKS1 header; the encrypted contents stay unchecked (``inspect``).

Runs after ``disk_format`` and only on data it named ``luks``. A LUKS image is an
encrypted volume: without its key the cloud cannot see what the payload holds, so
the plugin checks what it can read, the LUKS1 header and its eight key slots, and
always reports ``luks.contents_unchecked`` (info) on an image it accepts. After
decryption qemu presents the payload as a raw disk, so the payload cannot name a
backing file; what it holds is the owner's business. The ``luks`` format is not in
the default ``disk_formats``: a cloud accepts these images only if it says so.

Policy:

* LUKS version 1 only (``luks.version``): LUKS2 keeps its metadata in JSON areas
  that qemu cannot open and this plugin does not parse.
* Header strings (cipher name, cipher mode, hash) must be NUL-terminated and
  known (``KNOWN_CIPHERS``, ``CIPHER_MODE_CHARS``, ``KNOWN_HASHES``), the key size
  one of ``KEY_BYTES``, the master-key digest iteration count non-zero
  (``luks.header``).
* Each key slot is enabled or disabled (no other value), has ``STRIPES`` stripes,
  and its key material starts after the header, ends before the payload and does
  not overlap another slot's (``luks.key_slot``).
* PBKDF2 iteration counts (master-key digest and enabled slots) are at most
  ``[plugin.luks] max_pbkdf2_iterations``: whoever opens the volume pays for them
  (``luks.kdf_iterations``).
* The payload starts after the header and the key material and before the end of
  the file (``luks.payload_offset``).

Header (big endian, at offset 0; sizes and offsets in 512-byte sectors)::

    0    magic[6] "LUKS\\xba\\xbe"     6    u16 version
    8    cipher_name[32]              40   cipher_mode[32]
    72   hash_spec[32]                104  u32 payload_offset
    108  u32 key_bytes                112  mk_digest[20]
    132  mk_digest_salt[32]           164  u32 mk_digest_iterations
    168  uuid[40]                     208  8 key slots of 48 bytes:
         u32 active, u32 iterations, salt[32], u32 key_material_offset, u32 stripes

Facts recorded: ``format_version``, ``cipher`` (``aes-xts-plain64``),
``payload_offset`` (bytes).
"""

from __future__ import annotations

import itertools
import re
import struct
from typing import NamedTuple

from importhooks import FindingCode, ImportContext, PluginOption, PluginOptions, Severity, hookimpl

MAGIC = b"LUKS\xba\xbe"
#: The LUKS1 header with its key slots.
HEADER_BYTES = 592
SECTOR = 512
#: First sector after the header, where key material may start.
FIRST_FREE_SECTOR = -(-HEADER_BYTES // SECTOR)
NUM_KEY_SLOTS = 8
STRIPES = 4000
KEY_ENABLED = 0x00AC71F3
KEY_DISABLED = 0x0000DEAD
KNOWN_CIPHERS = ("aes", "twofish", "serpent", "cast5", "sm4")
KNOWN_HASHES = ("sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160")
#: Cipher modes look like ``xts-plain64`` or ``cbc-essiv:sha256``.
CIPHER_MODE_CHARS = re.compile(r"[a-z0-9]{1,16}(-[a-z0-9]{1,16}(:[a-z0-9]{1,16})?)?")
KEY_BYTES = (16, 24, 32, 48, 64)
#: Default of ``[plugin.luks] max_pbkdf2_iterations`` (oslo.utils' luks_iter_limit default).
DEFAULT_MAX_ITERATIONS = 12_000_000

_PHDR = struct.Struct(">6sH32s32s32sII20s32sI40s")
_SLOT = struct.Struct(">II32sII")

VERSION = FindingCode(
    "luks.version",
    "This LUKS version is not supported; only LUKS1 images are accepted.",
    "The LUKS header's version is not 1. LUKS2 volumes keep their metadata in JSON areas that qemu "
    "cannot open. Re-create the volume with 'qemu-img create -f luks' or 'cryptsetup luksFormat "
    "--type luks1'.",
)
HEADER = FindingCode(
    "luks.header",
    "The LUKS image's header is invalid.",
    "A LUKS1 header field is malformed or unsupported: a cipher name, cipher mode or hash that is not "
    "NUL-terminated or not known, a key size other than 16, 24, 32, 48 or 64 bytes, or a master-key "
    "digest iteration count of zero. The detail names the field.",
)
KEY_SLOT = FindingCode(
    "luks.key_slot",
    "A key slot of the LUKS image is invalid.",
    "A LUKS1 key slot is neither enabled nor disabled, has a stripe count other than 4000, an enabled "
    "slot has an iteration count of zero, or its key material overlaps the header, another slot or the "
    "payload.",
)
KDF_ITERATIONS = FindingCode(
    "luks.kdf_iterations",
    "The LUKS image's key derivation is more costly than this cloud accepts.",
    "A PBKDF2 iteration count in the LUKS header (master-key digest or an enabled key slot) is over "
    "max_pbkdf2_iterations; opening the volume would cost the host that much work. Re-create the key "
    "slot with a shorter iteration time.",
)
PAYLOAD_OFFSET = FindingCode(
    "luks.payload_offset",
    "The LUKS image's encrypted data lies outside the file.",
    "The LUKS1 payload offset overlaps the header or the key material, or is at or past the end of the "
    "file (truncated image, or a header from another volume).",
)
CONTENTS_UNCHECKED = FindingCode(
    "luks.contents_unchecked",
    "The image is an encrypted LUKS volume; its contents were not checked.",
    "Only the LUKS header was checked: the cloud has no key to decrypt the payload. The volume is "
    "opened as a raw disk after decryption, so it cannot refer to other files.",
    Severity.INFO,
)


class LuksHeader(NamedTuple):
    """The LUKS1 partition header, without its key slots."""

    magic: bytes
    version: int
    cipher_name: bytes
    cipher_mode: bytes
    hash_spec: bytes
    payload_offset: int
    key_bytes: int
    mk_digest: bytes
    mk_digest_salt: bytes
    mk_digest_iterations: int
    uuid: bytes


class KeySlot(NamedTuple):
    """One LUKS1 key slot."""

    active: int
    iterations: int
    salt: bytes
    key_material_offset: int
    stripes: int


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    """The codes this plugin reports."""
    return [VERSION, HEADER, KEY_SLOT, KDF_ITERATIONS, PAYLOAD_OFFSET, CONTENTS_UNCHECKED]


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    """The ``[plugin.luks]`` options."""
    return PluginOptions("luks", (
        PluginOption("max_pbkdf2_iterations", DEFAULT_MAX_ITERATIONS,
                     "Largest PBKDF2 iteration count accepted in a LUKS1 header (master-key digest and "
                     "each enabled key slot)."),
    ))


def _text(field: bytes) -> str | None:
    """A NUL-terminated ASCII header string, or None if it is not one."""
    end = field.find(b"\x00")
    if end <= 0 or not field[:end].isascii():
        return None
    return field[:end].decode("ascii")


def _shown(field: bytes) -> str:
    """An untrusted header string for a detail: escaped, trailing NULs dropped."""
    return repr(field.rstrip(b"\x00"))


def strings_problem(header: LuksHeader) -> str | None:
    """What is wrong with the cipher, mode, hash and key size (for ``luks.header``), or None."""
    cipher, mode, hash_spec = _text(header.cipher_name), _text(header.cipher_mode), _text(header.hash_spec)
    if cipher not in KNOWN_CIPHERS:
        return f"cipher_name {_shown(header.cipher_name)} unknown or not NUL-terminated"
    if mode is None or not CIPHER_MODE_CHARS.fullmatch(mode):
        return f"cipher_mode {_shown(header.cipher_mode)} malformed or not NUL-terminated"
    if hash_spec not in KNOWN_HASHES:
        return f"hash_spec {_shown(header.hash_spec)} unknown or not NUL-terminated"
    if header.key_bytes not in KEY_BYTES:
        return f"key_bytes {header.key_bytes}, expected one of {KEY_BYTES}"
    if header.mk_digest_iterations == 0:
        return "mk_digest_iterations is zero"
    return None


def key_material_sectors(header: LuksHeader) -> int:
    """Sectors of one slot's anti-forensic key material (key_bytes * STRIPES, rounded up)."""
    return -(-header.key_bytes * STRIPES // SECTOR)


def slots_problem(header: LuksHeader, slots: list[KeySlot]) -> str | None:
    """What is wrong with the key slots (for ``luks.key_slot``), or None."""
    length = key_material_sectors(header)
    areas: list[tuple[int, int, int]] = []
    for number, slot in enumerate(slots):
        if slot.active not in (KEY_ENABLED, KEY_DISABLED):
            return f"slot {number} state {slot.active:#x} is neither enabled nor disabled"
        if slot.stripes != STRIPES:
            return f"slot {number} has {slot.stripes} stripes, expected {STRIPES}"
        if slot.active == KEY_ENABLED and slot.iterations == 0:
            return f"slot {number} is enabled with an iteration count of zero"
        start = slot.key_material_offset
        if start < FIRST_FREE_SECTOR:
            return f"slot {number} key material at sector {start} overlaps the header"
        if start + length > header.payload_offset:
            return f"slot {number} key material (sectors {start}..{start + length}) overlaps the payload"
        areas.append((start, start + length, number))
    areas.sort()
    for (_start, end, first), (start, _end, second) in itertools.pairwise(areas):
        if start < end:
            return f"key material of slots {first} and {second} overlaps"
    return None


def iterations_problem(header: LuksHeader, slots: list[KeySlot], limit: int) -> str | None:
    """Which PBKDF2 iteration count is over ``limit`` (for ``luks.kdf_iterations``), or None."""
    if header.mk_digest_iterations > limit:
        return f"mk_digest_iterations {header.mk_digest_iterations} over the limit of {limit}"
    for number, slot in enumerate(slots):
        if slot.active == KEY_ENABLED and slot.iterations > limit:
            return f"slot {number} iterations {slot.iterations} over the limit of {limit}"
    return None


@hookimpl
def importhooks_inspect(context: ImportContext) -> None:
    """Check the LUKS1 header and key slots of data detected as ``luks``; report the payload unchecked."""
    if context.facts.get("disk_format") != "luks":
        return
    raw = context.data.read_at(0, HEADER_BYTES)
    if len(raw) < len(MAGIC) + 2 or not raw.startswith(MAGIC):
        context.reject(HEADER, detail=f"no LUKS header in the {context.data.size}-byte file")
    (version,) = struct.unpack_from(">H", raw, len(MAGIC))
    context.facts["format_version"] = version
    if version != 1:
        context.reject(VERSION, detail=f"LUKS version {version}")
    if len(raw) < HEADER_BYTES:
        context.reject(HEADER, detail=f"LUKS1 header truncated: the file has {context.data.size} bytes")
    header = LuksHeader(*_PHDR.unpack_from(raw))
    problem = strings_problem(header)
    if problem is not None:
        context.reject(HEADER, detail=problem)
    slots = [KeySlot(*_SLOT.unpack_from(raw, _PHDR.size + n * _SLOT.size)) for n in range(NUM_KEY_SLOTS)]
    payload = header.payload_offset * SECTOR
    if header.payload_offset < FIRST_FREE_SECTOR or payload >= context.data.size:
        context.reject(PAYLOAD_OFFSET, detail=f"payload at sector {header.payload_offset}, "
                                              f"file of {context.data.size} bytes")
    problem = slots_problem(header, slots)
    if problem is not None:
        context.reject(KEY_SLOT, detail=problem)
    limit = int(context.options("luks").get("max_pbkdf2_iterations", DEFAULT_MAX_ITERATIONS))
    problem = iterations_problem(header, slots, limit)
    if problem is not None:
        context.reject(KDF_ITERATIONS, detail=problem)
    context.facts["cipher"] = f"{_text(header.cipher_name)}-{_text(header.cipher_mode)}"
    context.facts["payload_offset"] = payload
    context.report(CONTENTS_UNCHECKED)
