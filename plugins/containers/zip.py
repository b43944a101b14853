"""Unpacks a zip archive that holds one disk image, within budgets (``sanitize``).

Runs on a layer ``content_type`` named ``zip``. The stdlib :mod:`zipfile` parses
the central directory (its reads capped, so a huge directory is refused unparsed).
Then, before anything is decompressed: the entry count, encryption, compression
methods, declared sizes (over ``max_image_size``, or a bomb's ratio), overlapping
entries (Fifield's zip bomb: each entry's local header, read with bounded reads,
must name its directory entry, and its data must end before the next local header
and the central directory) and exactly one data member. The member is decompressed
here, not with ``ZipFile.open()``, which decompresses bzip2 and lzma with no output
bound (4 KiB of bzip2 can make gigabytes in memory) and silently cuts the output at
the declared size. Each step makes at most 1 MiB; the real output is counted
against ``max_image_size``, the declared size and the ratio budget, then checked
against the CRC. All-zero blocks become holes. The output file is named by the
pipeline, never from the archive. Facts on the zip layer: ``compression``
(``zip``), ``members``, ``disk_member``, ``zip_method``, ``compressed_size``,
``uncompressed_size`` and ``ratio``. What is checked and why:
docs/containers/zip.rst.
"""

from __future__ import annotations

import bz2
import io
import lzma
import os
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from importhooks import FindingCode, ImportContext, PluginOption, PluginOptions, Severity, hookimpl
from importhooks.data import BudgetedReader
from importhooks.units import format_size

from ._streaming import SparseWriter, budget_options, declared_over_budget, over_budget
from ._zip_local import LOCAL_HEADER, LocalProblem, check_tail, data_starts

SECTION = "zip"
#: Layer kinds counted by ``max_depth``: this plugin's and ``compression``'s.
UNPACKED_KINDS = frozenset({"decompressed", "extracted"})
OUTPUT_STEP = 1 << 20  # most output one decompression step makes
INPUT_STEP = 1 << 16  # compressed bytes read per step
#: zipfile's reads are capped at this plus 4 KiB per allowed entry (its end-record search reads 64 KiB).
DIRECTORY_BASE = 128 << 10
DIRECTORY_PER_ENTRY = 4 << 10
#: An entry declaring no output and at most this much compressed data is a directory or an empty file.
EMPTY_COMPRESSED_MAX = 32
DETAIL_LIMIT = 200
FLAG_ENCRYPTED = 0x01 | 0x40  # traditional, strong
FLAG_LZMA_EOS = 0x02
FLAG_PATCHED = 0x20
METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
           zipfile.ZIP_LZMA: "lzma"}
_PARSE_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, struct.error, EOFError, OSError)
_CODEC_ERRORS = (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError)


def _code(name: str, summary: str, help_text: str, severity: Severity = Severity.ERROR) -> FindingCode:
    return FindingCode(f"zip.{name}", summary, help_text, severity)


TOO_LARGE = _code("too_large", "The disk image in the zip archive is larger than this cloud accepts.",
                  "An entry's declared size, all of them together, or the real output is over max_image_size. "
                  "Declared sizes are checked before anything is decompressed; the output is counted anyway.")
RATIO = _code("ratio", "The zip archive expands far more than a disk image does; it looks like a zip bomb.",
              "Past plugin.zip.ratio_grace, the member's data (output that is not all-zero 64 KiB pieces) was "
              "more than plugin.zip.max_ratio times its compressed bytes read so far, or than the upload; or, "
              "past sparse_grace, its output, zeros included (declared, or made so far), was more than "
              "max_sparse_ratio times them. An almost empty raw disk compressed with bzip2 or lzma may need a "
              "higher max_sparse_ratio; better, upload it as qcow2, which stores no zeros.")
OVERLAP = _code("overlap", "The zip archive's entries overlap; it looks like a zip bomb.",
                "Entries share a local header or data, an entry's data runs into the next entry or the central "
                "directory, or a local header names another file than its directory entry (Fifield's "
                "overlapping zip bomb). Re-create the archive with a standard tool.")
ENCRYPTED = _code("encrypted", "The zip archive is encrypted; its contents cannot be checked.",
                  "An entry is encrypted (traditional or strong encryption). Upload the image unencrypted.")
METHOD = _code("method", "The zip archive uses a compression method or settings this cloud does not support.",
               "Only stored, deflate, bzip2 and lzma entries are unpacked, lzma with a dictionary up to "
               "plugin.zip.max_window_size; patch data and newer zip versions are refused.")
MULTIPLE = _code("multiple_members", "The zip archive holds more than one file; it must hold only the disk image.",
                 "Exactly one entry may have data (directories and empty files are ignored). Zip the disk alone.")
NO_MEMBER = _code("no_member", "The zip archive holds no disk image.",
                  "No entry has data (the archive is empty, or holds only directories and empty files), or the "
                  "one entry with data decompresses to nothing.")
TOO_MANY = _code("too_many_entries", "The zip archive has too many entries.",
                 "The central directory lists more than plugin.zip.max_entries entries, or is too large to read.")
CORRUPT = _code("corrupt", "The zip archive is damaged or incomplete.",
                "The central directory cannot be parsed, a local header is missing, or the member's data is "
                "invalid, truncated, fails its CRC, or is larger or smaller than its directory entry says.")
DEPTH = _code("depth", "The image is nested in too many archives or compressed files.",
              "Unpacking this zip would make more nested unpacked layers (zip and compression together) than "
              "plugin.zip.max_depth. Zip the disk image itself.")
MISMATCH = _code("header_mismatch", "The zip archive's headers disagree about a file; other tools could unpack "
                 "a different disk.",
                 "A local header (or data descriptor) says another method, encryption or descriptor flag, CRC or "
                 "size (zip64 sizes included) than its central directory entry. Readers that start from the "
                 "directory and readers that stream the local headers would unpack different data. Re-create "
                 "the archive with a standard tool.")
HIDDEN = _code("hidden_data", "The zip archive holds data outside its listed files; other tools could see "
               "another file.",
               "Bytes before the first local header (prepended data), between one entry's data and the next "
               "local header, or between the last entry and the central directory. A reader that streams the "
               "local headers from the start may find files there that the central directory does not list. "
               "Re-create the archive with a standard tool.")
NAME = _code("name", "The zip archive has entry names that would be unsafe to extract; they were not used.",
             "An entry name is absolute, has a '..' component, a backslash, a drive letter or a control "
             "character. Nothing is extracted by name, so this is a warning.", Severity.WARNING)


OPTIONS = PluginOptions(SECTION, (
    *budget_options(),
    PluginOption("max_depth", 2, "Most nested unpacked layers, zip and compression together (a zip in a zip is 2)."),
    PluginOption("max_entries", 64, "Most central-directory entries; a directory over 128 KiB + 4 KiB per "
                 "allowed entry is refused unread."),
    PluginOption("max_window_size", 128 << 20, "Most decoder memory a member may need (the lzma dictionary).",
                 size=True),
))


LOCAL_CODES = {"corrupt": CORRUPT, "overlap": OVERLAP, "mismatch": MISMATCH, "hidden": HIDDEN}


class _Refuse(Exception):
    """Ends the unpacking with a finding; raised where the context is not at hand."""

    def __init__(self, code: FindingCode, detail: str, message: str | None = None) -> None:
        super().__init__(detail)
        self.code, self.detail, self.message = code, detail, message


class _CappedReader(io.RawIOBase):
    """The budgeted data for zipfile, refusing any one read over ``cap`` (it reads the directory in one go)."""

    def __init__(self, raw: BudgetedReader, size: int, cap: int) -> None:
        super().__init__()
        self._raw, self._size, self._cap = raw, size, cap

    def readable(self) -> bool:
        return True

    seekable = readable

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self._size - self._raw.tell())
        if size > self._cap:
            raise _Refuse(TOO_MANY, f"central directory of {size} bytes, cap {self._cap}")
        return self._raw.read(size)


class _Input:
    """The member's compressed bytes, read forward in steps; counts what was read."""

    def __init__(self, raw: BudgetedReader, start: int, length: int) -> None:
        raw.seek(start)
        self._raw, self.left, self.consumed = raw, length, 0

    def take(self, size: int) -> bytes:
        want = min(size, self.left)
        data = self._raw.read(want)
        if len(data) < want:
            raise _Refuse(CORRUPT, "member data truncated")
        self.left -= want
        self.consumed += want
        return data

    def chunks(self, step: int = INPUT_STEP) -> Iterator[bytes]:
        while self.left:
            yield self.take(step)


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return [TOO_LARGE, RATIO, OVERLAP, ENCRYPTED, METHOD, MULTIPLE, NO_MEMBER, TOO_MANY, CORRUPT, DEPTH, NAME,
            MISMATCH, HIDDEN]


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    return OPTIONS


def _quote(name: str) -> str:  # an untrusted name, for a detail
    return repr(name[:DETAIL_LIMIT])


def _read_directory(context: ImportContext, raw: BudgetedReader, options: Mapping[str, Any]
                    ) -> tuple[list[zipfile.ZipInfo], int]:
    """The central directory's entries and where it starts; rejects what zipfile cannot parse."""
    cap = DIRECTORY_BASE + DIRECTORY_PER_ENTRY * options["max_entries"]
    try:
        with zipfile.ZipFile(_CappedReader(raw, context.data.size, cap)) as archive:
            return archive.infolist(), archive.start_dir
    except _Refuse as exc:
        context.reject(exc.code, detail=exc.detail)
    except NotImplementedError as exc:
        context.reject(METHOD, detail=repr(exc)[:DETAIL_LIMIT])
    except _PARSE_ERRORS as exc:
        context.reject(CORRUPT, detail=f"central directory: {exc!r}"[:DETAIL_LIMIT])


def _unsafe_name(name: str) -> bool:
    return (name.startswith("/") or "\\" in name or ".." in name.split("/") or name[1:2] == ":"
            or any(ord(char) < 32 or ord(char) == 127 for char in name))


def _bounds(entries: list[zipfile.ZipInfo], cd_start: int) -> list[tuple[zipfile.ZipInfo, int]]:
    """Entries in file order, each with where its data must end: the next local header, or the directory."""
    ordered = sorted(entries, key=lambda info: info.header_offset)
    return list(zip(ordered, [*(info.header_offset for info in ordered[1:]), cd_start], strict=False))


def _check_entries(context: ImportContext, entries: list[zipfile.ZipInfo], cd_start: int,
                   options: Mapping[str, Any]
                   ) -> tuple[list[tuple[FindingCode, str | None, str]], zipfile.ZipInfo | None]:
    """Problems the directory shows by itself, before any member data is read, and the one data member."""
    problems: list[tuple[FindingCode, str | None, str]] = []
    members = [info for info in entries if info.file_size > 0 or info.compress_size > EMPTY_COMPRESSED_MAX]
    if len(members) != 1:
        names = ", ".join(_quote(info.orig_filename) for info in members[:3])
        problems.append((MULTIPLE, None, f"{len(members)} entries with data: {names}") if members else
                        (NO_MEMBER, None, f"{len(entries)} entries, none with data"))
    limit, upload = context.settings.max_image_size, context.layers[0].size
    if len(entries) > options["max_entries"]:
        problems.append((TOO_MANY, None, f"{len(entries)} entries, limit {options['max_entries']}"))
    if flagged := [info for info in entries if info.flag_bits & FLAG_ENCRYPTED]:
        problems.append((ENCRYPTED, None, f"{len(flagged)} encrypted, flags {flagged[0].flag_bits:#x}"))
    if odd := [info for info in entries if info.compress_type not in METHODS or info.flag_bits & FLAG_PATCHED]:
        problems.append((METHOD, None, f"method {odd[0].compress_type}, flags {odd[0].flag_bits:#x}"))
    declared = sum(info.file_size for info in entries)
    if declared > limit:
        problems.append((TOO_LARGE, f"The disk image in the zip archive is larger than the limit of "
                         f"{format_size(limit)}.", f"entries declare {declared} bytes, limit {limit}"))
    for info in entries:
        if why := declared_over_budget(options, info.file_size, min(info.compress_size, upload)):
            problems.append((RATIO, None, f"an entry declares {info.file_size} bytes from {info.compress_size} "
                             f"(upload {upload}), {why}"))
            break
    if outside := [info.header_offset for info in entries if not 0 <= info.header_offset < cd_start]:
        problems.append((CORRUPT, None, f"local header offset {outside[0]} outside the archive"))
        return problems, None
    for this, bound in _bounds(entries, cd_start):
        end = this.header_offset + LOCAL_HEADER.size + this.compress_size  # its name and extra come on top
        if end > bound:
            problems.append((OVERLAP, None, f"the entry at {this.header_offset} with {this.compress_size} bytes "
                             f"of data runs past {bound} ({len(entries)} entries)"))
            break
    return problems, members[0] if len(members) == 1 else None


def _inflate(chunks: Iterator[bytes]) -> Iterator[bytes]:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    for data in chunks:
        if inflater.eof:
            raise _Refuse(CORRUPT, "data after the end of the deflate stream")
        while True:
            before, out = len(data), inflater.decompress(data, OUTPUT_STEP)
            data = inflater.unconsumed_tail
            if out:
                yield out
            if inflater.eof or (not data and len(out) < OUTPUT_STEP):
                break
            if not out and len(data) == before:  # never expected of zlib; a guard against spinning
                raise _Refuse(CORRUPT, "the deflate stream makes no progress")
    if not inflater.eof or inflater.unused_data:
        raise _Refuse(CORRUPT, "the deflate stream ends early or is followed by other data")


def _drain(chunks: Iterator[bytes], codec: bz2.BZ2Decompressor | lzma.LZMADecompressor,
           need_eof: bool) -> Iterator[bytes]:
    for data in chunks:
        if codec.eof:
            raise _Refuse(CORRUPT, "data after the end of the compressed stream")
        out = codec.decompress(data, OUTPUT_STEP)
        while out:
            yield out
            if codec.eof or codec.needs_input:
                break
            out = codec.decompress(b"", OUTPUT_STEP)
    if (need_eof and not codec.eof) or codec.unused_data:
        raise _Refuse(CORRUPT, "the compressed stream ends early or is followed by other data")


def _lzma(source: _Input, max_window: int) -> lzma.LZMADecompressor:
    """The raw LZMA1 decoder of a zip lzma member, from its 4-byte header and 5 property bytes."""
    header = source.take(4)
    props = source.take(5) if header[2:4] == b"\x05\x00" else b""
    if len(props) < 5 or props[0] >= 9 * 5 * 5:
        raise _Refuse(CORRUPT, "bad lzma header or properties")
    dictionary = int.from_bytes(props[1:5], "little")
    if dictionary > max_window:
        raise _Refuse(METHOD, f"lzma dictionary of {dictionary} bytes, max_window_size {max_window}")
    lc, rest = props[0] % 9, props[0] // 9
    return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[
        {"id": lzma.FILTER_LZMA1, "lc": lc, "lp": rest % 5, "pb": rest // 5, "dict_size": dictionary}])


def _outputs(source: _Input, info: zipfile.ZipInfo, options: Mapping[str, Any]) -> Iterator[bytes]:
    """The member's decompressed data, in pieces of at most ``OUTPUT_STEP`` bytes."""
    try:
        if info.compress_type == zipfile.ZIP_STORED:
            yield from source.chunks(OUTPUT_STEP)
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            yield from _inflate(source.chunks())
        elif info.compress_type == zipfile.ZIP_BZIP2:
            yield from _drain(source.chunks(), bz2.BZ2Decompressor(), need_eof=True)
        else:  # lzma; without its end-of-stream flag the output size says where it ends
            codec = _lzma(source, options["max_window_size"])
            yield from _drain(source.chunks(), codec, need_eof=bool(info.flag_bits & FLAG_LZMA_EOS))
    except _CODEC_ERRORS as exc:
        raise _Refuse(CORRUPT, f"{METHODS[info.compress_type]} data: {exc!r}"[:DETAIL_LIMIT]) from None


def _extract(context: ImportContext, source: _Input, info: zipfile.ZipInfo, out: Path,
             options: Mapping[str, Any]) -> int:
    """Decompress the member into ``out`` within the budgets; return the real output size."""
    limit, declared, upload = context.settings.max_image_size, info.file_size, context.layers[0].size
    written = crc = 0
    with open(out, "xb") as sink:
        writer = SparseWriter(sink.fileno())
        for piece in _outputs(source, info, options):
            context.check()
            written += len(piece)
            if written > limit:
                raise _Refuse(TOO_LARGE, f"output passed {limit} bytes (declared {declared})",
                              f"The disk image in the zip archive is larger than the limit of {format_size(limit)}.")
            if written > declared:
                raise _Refuse(CORRUPT, f"output passed the declared {declared} bytes")
            crc = zlib.crc32(piece, crc)
            writer.write(piece)
            if why := over_budget(options, written, writer.data, source.consumed, upload):
                raise _Refuse(RATIO, why)
        writer.close()
    if not written:
        raise _Refuse(NO_MEMBER, "the only entry with data decompresses to nothing")
    if written != declared or crc != info.CRC:
        raise _Refuse(CORRUPT, f"{written} bytes, CRC {crc:#010x}; declared {declared}, CRC {info.CRC:#010x}")
    return written


@hookimpl
def importhooks_sanitize(context: ImportContext) -> None:
    if context.facts.get("container_format") != "zip":
        return
    options = {**{option.name: option.default for option in OPTIONS.options}, **context.options(SECTION)}
    depth = 1 + sum(layer.kind in UNPACKED_KINDS for layer in context.layers)
    if depth > options["max_depth"]:
        context.reject(DEPTH, detail=f"unpacking would make depth {depth}, max_depth {options['max_depth']}")
    facts = context.facts
    with context.data.open() as raw:
        entries, cd_start = _read_directory(context, raw, options)
        facts.update(compression="zip", members=len(entries))
        if unsafe := [info.orig_filename for info in entries if _unsafe_name(info.orig_filename)]:
            context.report(NAME, detail=f"{len(unsafe)} unsafe names, the first {_quote(unsafe[0])}")
        problems, chosen = _check_entries(context, entries, cd_start, options)
        for code, message, detail in problems:
            context.report(code, message, detail=detail)
        if problems or chosen is None:
            return
        facts.update(disk_member=chosen.orig_filename[:DETAIL_LIMIT], zip_method=METHODS[chosen.compress_type],
                     compressed_size=chosen.compress_size)
        try:
            start = data_starts(raw, _bounds(entries, cd_start))[chosen.header_offset]
            check_tail(raw, context.data.size, cd_start)
        except LocalProblem as exc:
            context.reject(LOCAL_CODES[exc.kind], detail=exc.detail)
        except _PARSE_ERRORS as exc:  # a name that does not encode back
            context.reject(CORRUPT, detail=f"local headers: {exc!r}"[:DETAIL_LIMIT])
        out = context.temp_path(".raw")
        try:
            written = _extract(context, _Input(raw, start, chosen.compress_size), chosen, out, options)
        except BaseException as exc:
            out.unlink(missing_ok=True)  # free the space now; the run's directory goes at its end anyway
            if isinstance(exc, _Refuse):
                context.reject(exc.code, exc.message, detail=exc.detail)
            raise
    facts.update(uncompressed_size=written, ratio=round(written / max(chosen.compress_size, 1), 1))
    context.replace_data(out, kind="extracted")
