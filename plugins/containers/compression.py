"""Decompresses gzip, bzip2, xz and zstd streams, within budgets (``sanitize``).

Runs on a layer whose ``container_format`` fact (from ``content_type``) is one of
the four, streams the decompressed data into a file the pipeline names (all-zero
blocks become holes) and makes it the next layer, kind ``decompressed``, which is
inspected like any disk. The budgets (``max_image_size`` and the
``[plugin.compression]`` options) are checked on the real output as it is made:
``max_ratio`` on the data written, ``max_sparse_ratio`` on all of it, zeros included;
sizes the data declares (xz index, zstd frame headers, the last gzip ISIZE) are read
first and may only reject. Gzip headers over ``max_gzip_header`` are flagged.
Facts on the compressed layer: ``compression``, ``compressed_size``,
``uncompressed_size``, ``ratio``, ``streams`` and ``declared_size`` (when every
stream declares it). What is checked and why: docs/containers/compression.rst.
"""

from __future__ import annotations

import bz2
import lzma
import re
import zlib
from typing import TYPE_CHECKING, Any, NoReturn

from importhooks import FindingCode, ImportContext, PluginOption, PluginOptions, Severity, hookimpl
from importhooks.data import BudgetedReader
from importhooks.units import format_size

from ._gzip import GZIP_MAGIC, header_size, isize_lower_bound
from ._streaming import SparseWriter, budget_options, declared_over_budget, over_budget
from ._xz import XZ_MAGIC, xz_declared_size

if TYPE_CHECKING:
    import zstandard

SECTION = "compression"
KIND = "decompressed"
KiB, MiB = 1 << 10, 1 << 20
#: Compressed bytes read from the layer at a time, and handed to a gzip, bzip2 or xz decoder.
READ_SIZE = 1 * MiB
FEED_SIZE, MIN_FEED_SIZE = 64 * KiB, 1 * KiB
#: Compressed bytes given to the zstd decoder per call: python-zstandard's decompressobj
#: has no ``max_length``, and a zstd block of 4 bytes or more yields at most 128 KiB,
#: so 256 bytes yield at most about 8 MiB.
ZSTD_FEED_SIZE = 256
#: Most output one gzip, bzip2 or xz decoder call may return.
OUT_CHUNK = 1 * MiB
_NONZERO = re.compile(rb"[^\x00]")
#: What each stream starts with; zstd also has skippable frames (0x184D2A5?).
MAGIC = {"gzip": GZIP_MAGIC, "bzip2": b"BZh", "xz": XZ_MAGIC, "zstd": b"\x28\xb5\x2f\xfd"}  # zstandard.FRAME_HEADER
DETAIL_LIMIT = 200

TOO_LARGE = FindingCode(
    "compression.too_large",
    "The image is larger than this cloud accepts once decompressed.",
    "The decompressed data is over max_image_size: counted while decompressing, or declared before any "
    "decompression by the xz index, a zstd frame header or the ISIZE of the last gzip trailer (a lower "
    "bound: the last member's size modulo 4 GiB); the detail says which. A declared size only ever "
    "rejects: the real output is always counted.",
)
RATIO = FindingCode(
    "compression.ratio",
    "The image expands far more than a disk image does when decompressed.",
    "A decompression bomb: past plugin.compression.ratio_grace, the data (output that is not all-zero "
    "64 KiB pieces) was more than max_ratio times the compressed bytes read so far, or than the upload; or, "
    "past sparse_grace, all of the output, zeros included, was more than max_sparse_ratio times them (a "
    "zstd or bzip2 run of zeros; a declared size can show it too). An almost empty raw disk compressed "
    "with zstd or bzip2 may need a higher max_sparse_ratio; better, upload it as qcow2, which stores no "
    "zeros.",
)
DEPTH = FindingCode(
    "compression.depth",
    "The image is compressed inside another compressed file too many times.",
    "Decompressing this layer would make more than plugin.compression.max_depth nested decompressions "
    "(gzip of bzip2 of ...). Compress the disk once.",
)
CORRUPT = FindingCode(
    "compression.corrupt",
    "The compressed image is damaged or incomplete.",
    "The decoder found invalid data, a checksum (CRC) mismatch, a stream cut short, a frame whose size "
    "differs from its header's, or a zstd frame that needs a dictionary. Upload the file again.",
)
TRAILING_DATA = FindingCode(
    "compression.trailing_data",
    "The compressed image has extra data after its end.",
    "After the last complete stream comes something that is neither zero padding nor another stream of "
    "the same format. It would be dropped unseen, so the upload is not what it seems: a damaged or wrongly "
    "joined file, or a second payload for tools that read from the end (a zip after a gzip). Remove it.",
)
WINDOW = FindingCode(
    "compression.window",
    "The compressed image needs more memory to decompress than this cloud allows.",
    "A zstd frame's window or an xz stream's dictionary needs more than plugin.compression.max_window_size "
    "of decoder memory. Compress without --long or --ultra (zstd), or with a preset up to -9 (xz).",
)
STREAMS = FindingCode(
    "compression.streams",
    "The compressed image is split into too many parts.",
    "The layer holds more than plugin.compression.max_streams gzip members, bzip2 or xz streams or zstd "
    "frames; each costs a decoder set-up, and empty ones cost time for no data.",
)
GZIP_HEADER = FindingCode(
    "compression.gzip_header",
    "The compressed image has an unusually large gzip header.",
    "A gzip member's header (its FEXTRA, FNAME and FCOMMENT fields) is longer than plugin.compression."
    "max_gzip_header. Every gzip reader skips it, so the disk is the same for all of them, but nothing "
    "that makes gzip files writes such headers: a name or comment of megabytes is a smuggled payload. "
    "Compress the disk again without a name (gzip -n).",
    Severity.WARNING,
)
EMPTY = FindingCode(
    "compression.empty",
    "The compressed image holds no data.",
    "Every stream decompressed to nothing: there is no disk to import.",
)


OPTIONS = PluginOptions(SECTION, (
    *budget_options(),
    PluginOption("max_depth", 2, "Most nested decompressions (gzip of bzip2 is 2)."),
    PluginOption("max_window_size", 128 * MiB, "Most decoder memory a stream may need: the zstd window, "
                 "the xz memory limit.", size=True),
    PluginOption("max_streams", 1_000_000, "Most gzip members, bzip2 or xz streams or zstd frames per layer."),
    PluginOption("max_gzip_header", 128 * KiB, "Longest gzip member header (FEXTRA, FNAME, FCOMMENT) not "
                 "flagged (compression.gzip_header); read with reads of at most this.", size=True),
))


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return [TOO_LARGE, RATIO, DEPTH, CORRUPT, TRAILING_DATA, WINDOW, STREAMS, EMPTY, GZIP_HEADER]


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    return OPTIONS


def _is_start(algorithm: str, head: bytes) -> bool:
    skippable = algorithm == "zstd" and len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18"
    return skippable or head.startswith(MAGIC[algorithm])


class _Decoder:
    """One stream's decoder; each :meth:`decompress` returns about OUT_CHUNK at most (zstd: 9 MiB)."""

    def __init__(self, algorithm: str, decoder: Any, errors: tuple[type[BaseException], ...]) -> None:
        self._algorithm = algorithm
        self._d = decoder
        self.errors = errors  # what this decoder raises on bad data
        self._tail = memoryview(b"")  # zstd: input not fed yet
        self.needs_input = True
        self.eof = False
        self.pending = 0  # bytes of the last input not taken in yet
        self.unused = 0  # bytes of the last input after the end of the stream

    def decompress(self, data: bytes) -> bytes:
        d = self._d
        if self._algorithm == "zstd":
            return self._zstd(data)
        if self._algorithm == "gzip":
            out: bytes = d.decompress(data or d.unconsumed_tail, OUT_CHUNK)
            self.pending = len(d.unconsumed_tail)
            self.needs_input = not self.pending and len(out) < OUT_CHUNK
        else:
            out = d.decompress(data, OUT_CHUNK)
            self.needs_input = d.needs_input
        self.eof = bool(d.eof)
        if self.eof:
            self.unused = len(d.unused_data)
        return out

    def _zstd(self, data: bytes) -> bytes:
        """Feed ZSTD_FEED_SIZE bytes at a time until OUT_CHUNK is out, the input is used up or the frame ends."""
        d, tail = self._d, memoryview(data) if data else self._tail
        parts, size, at = [], 0, 0
        while at < len(tail) and size < OUT_CHUNK and not d.eof:
            out = d.decompress(tail[at:at + ZSTD_FEED_SIZE])
            at += ZSTD_FEED_SIZE
            parts.append(out)
            size += len(out)
        self._tail = tail[at:]
        self.pending = len(self._tail)
        self.needs_input = not self.pending
        self.eof = bool(d.eof)
        if self.eof:
            self.unused = len(d.unused_data) + self.pending
        return b"".join(parts)


class _Source:
    """The compressed layer, read forward in big budgeted reads and handed out in small pieces."""

    def __init__(self, handle: BudgetedReader) -> None:
        self._handle = handle
        self._buf = b""
        self._pos = 0
        self._at_end = False
        self.taken = 0  # bytes handed out so far, less those given back

    def _fill(self, want: int) -> None:
        while len(self._buf) - self._pos < want and not self._at_end:
            more = self._handle.read(READ_SIZE)
            self._at_end = not more
            self._buf, self._pos = self._buf[self._pos:] + more, 0

    def peek(self, size: int) -> bytes:
        self._fill(size)
        return self._buf[self._pos:self._pos + size]

    def take(self, size: int) -> bytes:
        self._fill(1)
        piece = self._buf[self._pos:self._pos + size]
        self._pos += len(piece)
        self.taken += len(piece)
        return piece

    def give_back(self, size: int) -> None:
        """Un-take the last ``size`` bytes of the last piece (what follows a stream's end)."""
        self._pos -= size
        self.taken -= size

    def skip_zeros(self) -> bool:
        """Skip zero bytes (padding); return whether any data follows."""
        while True:
            self._fill(1)
            if self._pos >= len(self._buf):
                return False
            found = _NONZERO.search(self._buf, self._pos)
            end = found.start() if found else len(self._buf)
            self.taken += end - self._pos
            self._pos = end
            if found:
                return True


class _Unpacker:
    """Decompresses one layer into a :class:`SparseWriter`, checking every budget as it goes."""

    def __init__(self, context: ImportContext, algorithm: str) -> None:
        self.context = context
        self.algorithm = algorithm
        self.options = {**{o.name: o.default for o in OPTIONS.options}, **context.options(SECTION)}
        self.max_output = context.settings.max_image_size
        self.out = 0
        self.streams = 0
        self.declared: int | None = 0  # zstd: sum of the frames' declared sizes while every frame has one
        self.header_flagged = False
        # bzip2 and xz decoders take in all they are given, so the ratio counts whole pieces: keep a
        # piece's worth of max_sparse_ratio output under half of sparse_grace, or a bzip2 zero run
        # (over a million to one) would run far past the grace before the ratio could see it.
        sparse = int(self.options["sparse_grace"] // (2 * self.options["max_sparse_ratio"]))
        self.feed = max(MIN_FEED_SIZE, min(FEED_SIZE, sparse))
        self._zstd: zstandard.ZstdDecompressor | None = None

    def fail(self, code: FindingCode, why: str, message: str | None = None) -> NoReturn:
        self.context.reject(code, message, detail=f"{self.algorithm}: {why}")

    def too_large(self, why: str) -> NoReturn:
        limit = format_size(self.max_output)
        self.fail(TOO_LARGE, f"{why}, limit {self.max_output}",
                  f"The image is larger than the limit of {limit} once decompressed.")

    def check_declared(self, declared: int, where: str) -> None:
        """Reject on a declared output size, before decoding: over the limit, or a bomb's ratio."""
        if declared > self.max_output:
            self.too_large(f"{where} declares {declared} bytes")
        if why := declared_over_budget(self.options, declared, self.context.data.size):
            self.fail(RATIO, f"{where} declares {declared} bytes, {why}")

    def run(self, source: _Source, writer: SparseWriter) -> None:
        while source.skip_zeros():
            head = source.peek(18)
            if not _is_start(self.algorithm, head):
                where = f"{head[:8]!r} at offset {source.taken}"
                if self.streams:
                    self.fail(TRAILING_DATA, f"{where} after {self.streams} stream(s)")
                self.fail(CORRUPT, f"no {self.algorithm} header: {where}")
            self.streams += 1
            if self.streams > self.options["max_streams"]:
                self.fail(STREAMS, f"more than {self.options['max_streams']} streams")
            if self.algorithm == "gzip":
                self._gzip_header(source)
            self._stream(source, writer, self._decoder(head))
        if self.out == 0:
            self.fail(EMPTY, f"{self.streams} stream(s), no output")

    def _gzip_header(self, source: _Source) -> None:
        """Flag (once) a member header longer than max_gzip_header; zlib parses it either way."""
        cap = self.options["max_gzip_header"]
        if self.header_flagged or header_size(source.peek, cap) is not None:
            return
        self.header_flagged = True
        self.context.report(GZIP_HEADER, detail=f"gzip: member {self.streams} at offset {source.taken} has a "
                            f"header over {cap} bytes (flags {source.peek(4)[3]:#04x})")

    def _decoder(self, head: bytes) -> _Decoder:
        window = self.options["max_window_size"]
        if self.algorithm == "gzip":
            return _Decoder("gzip", zlib.decompressobj(wbits=31), (zlib.error, EOFError))
        if self.algorithm == "bzip2":
            return _Decoder("bzip2", bz2.BZ2Decompressor(), (OSError, EOFError))
        if self.algorithm == "xz":
            return _Decoder("xz", lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=window), (lzma.LZMAError, EOFError))
        import zstandard  # heavy: loaded on first use

        if head.startswith(zstandard.FRAME_HEADER):  # not a skippable frame: check what the header declares
            try:
                params = zstandard.get_frame_parameters(head)
            except zstandard.ZstdError as exc:
                self.fail(CORRUPT, f"frame {self.streams} header: {str(exc)[:DETAIL_LIMIT]!r}")
            if params.content_size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
                self.declared = None
            else:
                self.declared = None if self.declared is None else self.declared + params.content_size
                self.check_declared(self.out + params.content_size, f"frame {self.streams} header")
            if params.window_size > window:
                self.fail(WINDOW, f"frame {self.streams} window {params.window_size} bytes, limit {window}")
        if self._zstd is None:
            self._zstd = zstandard.ZstdDecompressor(max_window_size=window)
        return _Decoder("zstd", self._zstd.decompressobj(write_size=OUT_CHUNK), (zstandard.ZstdError, EOFError))

    def _stream(self, source: _Source, writer: SparseWriter, decoder: _Decoder) -> None:
        while True:
            self.context.check()
            piece = source.take(self.feed)
            if not piece:
                self.fail(CORRUPT, f"the data ends inside stream {self.streams}",
                          "The compressed image is incomplete.")
            while True:
                chunk = self._decode(decoder, piece)
                piece = b""
                if chunk:
                    writer.write(chunk)
                    self._count(len(chunk), writer.data, source.taken - decoder.pending)
                if decoder.eof:
                    source.give_back(decoder.unused)
                    return
                if decoder.needs_input:
                    break
                self.context.check()

    def _decode(self, decoder: _Decoder, piece: bytes) -> bytes:
        try:
            return decoder.decompress(piece)
        except decoder.errors as exc:
            text = f"stream {self.streams} after {self.out} bytes: {type(exc).__name__} {str(exc)[:DETAIL_LIMIT]!r}"
            if "memory" in str(exc).lower():  # xz: memory usage limit; zstd: frame requires too much memory
                self.fail(WINDOW, f"{text}, limit {self.options['max_window_size']}")
            self.fail(CORRUPT, text)

    def _count(self, size: int, data: int, consumed: int) -> None:
        """Count real output (``data`` of it written) against the size and ratio budgets."""
        self.out += size
        if self.out > self.max_output:
            self.too_large(f"the output passed the limit after {consumed} compressed bytes")
        if why := over_budget(self.options, self.out, data, consumed, self.context.layers[0].size):
            self.fail(RATIO, why)


@hookimpl
def importhooks_sanitize(context: ImportContext) -> None:
    algorithm = context.facts.get("container_format")
    if algorithm not in MAGIC:
        return
    unpacker = _Unpacker(context, algorithm)
    depth = 1 + sum(layer.kind == KIND for layer in context.layers)
    if depth > unpacker.options["max_depth"]:
        unpacker.fail(DEPTH, f"depth {depth}, max_depth {unpacker.options['max_depth']}")
    facts = context.facts
    facts["compression"] = algorithm
    facts["compressed_size"] = context.data.size
    declared = xz_declared_size(context) if algorithm == "xz" else None
    if declared is not None:
        unpacker.check_declared(declared, "the index")
    if algorithm == "gzip":  # a lower bound only: not a declared_size fact
        size = context.data.size
        least = isize_lower_bound(context.data.read_at(max(0, size - 4), min(size, 4)), size)
        if least is not None:
            unpacker.check_declared(least, "the last gzip trailer (ISIZE, a lower bound)")
    out = context.temp_path(".raw")
    try:
        with open(out, "wb") as handle, context.data.open() as source:
            writer = SparseWriter(handle.fileno())
            unpacker.run(_Source(source), writer)
            writer.close()
    except BaseException:
        out.unlink(missing_ok=True)  # free the space now; the run's directory goes at its end anyway
        raise
    facts["uncompressed_size"] = unpacker.out
    facts["ratio"] = round(unpacker.out / context.data.size, 1)
    facts["streams"] = unpacker.streams
    declared = unpacker.declared if algorithm == "zstd" else declared
    if declared is not None:
        facts["declared_size"] = declared
    context.replace_data(out, kind=KIND)
