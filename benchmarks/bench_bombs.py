"""Decompression bombs against the compression and zip plugins, at full scale.

Run on demand (pytest never collects it)::

    .venv/bin/python benchmarks/bench_bombs.py [--dir DIR] [--runs N] [--only NAME] [--json]

Each case is a file built here, audited in a fresh process exactly as an operator
would (``importhooks audit --format json --config CFG --container-format compressed
FILE``), timed from start to exit (interpreter, imports and all), with its peak
resident memory from ``os.wait4``. The median of ``--runs`` (default 3) is reported.

The bombs (all zeros, the most compressible data there is):

* **bzip2, 1.1 TiB** and **zstd, 1.1 TiB**, default limits (max_image_size 1 TiB):
  feeding 1.1 TiB through a compressor takes minutes to hours (bzip2 about 100 MB/s),
  so the file is one compressed unit of zeros repeated: a bzip2 file may hold many
  streams and a zstd file many frames, and every decoder (``bzip2 -d``, ``zstd -d``,
  the plugin) reads them as one stream of 1.1 TiB. The zstd frames are written by the
  streaming compressor, so no frame header declares its size: only the counted output
  can stop them.
* **xz, 8 GiB** and **zstd, 8 GiB, declared**, under ``--max-image-size 4GiB``:
  units of 256 MiB as concatenated xz streams, and one zstd frame whose header
  carries its content size. The xz indexes and the zstd frame header declare 8 GiB,
  which is over the limit before anything is decompressed.
* **xz, 8 GiB of 0x01, index cut off** and **gzip, 8 GiB of 0x01**: units of a byte
  that is not zero (as compressible as zeros, but data, which costs disk); the xz
  file has its last 64 bytes removed, so no declared size can be read: the data
  ratio (``max_ratio``) must stop them. Zero runs of gzip and xz are not bombs any
  more: like a fresh sparse disk, they are held to ``max_image_size`` and time.
* **gzip of bzip2, 1.1 TiB**: the bzip2 bomb above, gzipped (two nested layers).
* **zip, 1.1 TiB of overlapping entries** (David Fifield's full-overlap construction,
  as ``tests/zip_images.py`` builds it small): 1127 central-directory entries whose
  data all end in one deflate member of 1 GiB of zeros, each file's data a stored
  block quoting the next file's local header (CRCs right, so ``unzip`` would write
  1.1 TiB). The zip plugin reports several findings for it; the first error may be
  ``zip.overlap``, ``zip.too_many_entries`` or ``zip.too_large``.

And legitimate images, which must be accepted: **a 2 GiB sparse raw disk** (each
MiB: 29 KiB of random bytes, then zeros; about 35:1) compressed by ``zstd -3``, and
**a 20 GiB-virtual fresh raw disk holding 16 MiB** (random bytes at its start, then
zeros) in each of gzip, bzip2, xz and zstd (the data compressed once, the zeros as
repeated 256 MiB streams: about 570:1 to 1280:1). For the latter the time of
``sha512sum`` over the same 20 GiB (read from a sparse file) is reported next to the
audit's, with their ratio.

Targets: every bomb rejected with its finding code in at most 2 s and 128 MiB peak
RSS; the sparse disks accepted (their time and memory are reported, not targeted:
they are inspected and hashed like any disk of their size). Files go to a directory made with
``tempfile.mkdtemp(dir=--dir)`` and removed at the end (about 200 MiB on disk; the
sparse disk is written sparse). Exit status 0 when every target is met, 1 when one is
missed, 2 when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import bz2
import functools
import gzip
import json
import lzma
import multiprocessing
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

VENV_BIN = Path(sys.executable).parent
IMPORTHOOKS = VENV_BIN / "importhooks"
MIB, GIB, TIB = 1 << 20, 1 << 30, 1 << 40
BOMB_SIZE = int(1.1 * TIB)
TARGET_S = 2.0
TARGET_RSS_MIB = 128
CONFIG = 'container_formats = ["bare", "compressed"]\n[plugins]\nentry_points = false\n'


def zeros_unit(compressor: Any, size: int, fill: int = 0) -> bytes:
    """``size`` zero bytes (or bytes of ``fill``) through a compressor object (compress/flush), 64 MiB at a time."""
    piece = bytes([fill]) * (64 * MIB)
    parts = [compressor.compress(piece[: min(len(piece), size - start)]) for start in range(0, size, len(piece))]
    return b"".join(parts) + bytes(compressor.flush())


def repeat_to(path: Path, unit: bytes, unit_size: int, total: int) -> int:
    """Write ``unit`` (``unit_size`` bytes when decompressed) until it holds ``total``; the size reached."""
    count = -(-total // unit_size)
    with open(path, "wb") as out:
        for _ in range(count):
            out.write(unit)
    return count * unit_size


@functools.cache
def bzip2_unit() -> bytes:
    return zeros_unit(bz2.BZ2Compressor(9), 256 * MIB)


def build_bzip2(path: Path) -> int:
    return repeat_to(path, bzip2_unit(), 256 * MIB, BOMB_SIZE)


def build_zstd(path: Path) -> int:
    return repeat_to(path, zeros_unit(zstandard.ZstdCompressor(level=3).compressobj(), GIB), GIB, BOMB_SIZE)


def build_xz(path: Path) -> int:
    return repeat_to(path, zeros_unit(lzma.LZMACompressor(preset=0), 256 * MIB), 256 * MIB, 8 * GIB)


def build_xz_no_index(path: Path) -> int:
    size = repeat_to(path, zeros_unit(lzma.LZMACompressor(preset=0), 256 * MIB, 1), 256 * MIB, 8 * GIB)
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 64)
    return size


def build_gzip(path: Path) -> int:
    return repeat_to(path, zeros_unit(zlib.compressobj(9, zlib.DEFLATED, 31), 256 * MIB, 1), 256 * MIB, 8 * GIB)


def build_zstd_declared(path: Path) -> int:
    path.write_bytes(zeros_unit(zstandard.ZstdCompressor(level=1).compressobj(size=8 * GIB), 8 * GIB))
    return 8 * GIB


SPARSE_SIZE, SPARSE_DATA = 20 * GIB, 16 * MIB
SPARSE_MAKERS: dict[str, Callable[[], Any]] = {
    "gzip": lambda: zlib.compressobj(6, zlib.DEFLATED, 31), "bzip2": lambda: bz2.BZ2Compressor(9),
    "xz": lambda: lzma.LZMACompressor(preset=6), "zstd": lambda: zstandard.ZstdCompressor(level=3).compressobj()}


def build_fresh_disk(kind: str, path: Path) -> int:
    """20 GiB holding 16 MiB of random bytes then zeros, in ``kind``; the raw disk is kept (sparse) for sha512sum."""
    data = random.Random(16).randbytes(SPARSE_DATA)
    with open(path.with_suffix(".raw"), "wb") as raw:
        raw.write(data)
        raw.truncate(SPARSE_SIZE)
    maker = SPARSE_MAKERS[kind]
    head = maker()
    first = bytes(head.compress(data)) + bytes(head.flush())
    lead = zeros_unit(maker(), 256 * MIB - SPARSE_DATA)
    unit = zeros_unit(maker(), 256 * MIB)
    with open(path, "wb") as out:
        out.write(first + lead)
        for _ in range(SPARSE_SIZE // (256 * MIB) - 1):
            out.write(unit)
    return SPARSE_SIZE


def build_gzip_of_bzip2(path: Path) -> int:
    inner = path.with_suffix(".inner")
    size = build_bzip2(inner)
    with open(inner, "rb") as src, gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as dst:
        shutil.copyfileobj(src, dst, 16 * MIB)
    inner.unlink()
    return size


ZIP_LOCAL = struct.Struct("<4s5H3L2H")  # as in tests/zip_images.py
ZIP_CENTRAL = struct.Struct("<4s6H3L5H2L")
ZIP_END = struct.Struct("<4s4H2LH")
ZIP_DOS_DATE = 0x21  # 1980-01-01
ZIP_KERNEL = GIB  # every entry's sizes fit the 32-bit fields: no zip64 needed


def _gf2_times(matrix: list[int], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector, row = vector >> 1, row + 1
    return total


@functools.cache
def _crc_zero_operators() -> list[list[int]]:
    """``ops[k]``: the CRC-32 register operator for appending 2**k zero bytes (as zlib's crc32_combine)."""
    def square(matrix: list[int]) -> list[int]:
        return [_gf2_times(matrix, matrix[i]) for i in range(32)]

    matrix = square(square(square([0xEDB88320] + [1 << i for i in range(31)])))  # one zero bit, cubed: a byte
    operators = []
    for _ in range(48):
        operators.append(matrix)
        matrix = square(matrix)
    return operators


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """CRC-32 of A + B from crc32(A), crc32(B) and len(B), without reading either."""
    for operator in _crc_zero_operators():
        if not length2:
            break
        if length2 & 1:
            crc1 = _gf2_times(operator, crc1)
        length2 >>= 1
    return crc1 ^ crc2


def _zip_local(name: bytes, crc: int, csize: int, usize: int) -> bytes:
    return ZIP_LOCAL.pack(b"PK\x03\x04", 20, 0, zipfile.ZIP_DEFLATED, 0, ZIP_DOS_DATE, crc, csize, usize,
                          len(name), 0) + name


def build_zip_overlap(path: Path) -> int:
    """Fifield's full-overlap zip bomb: every entry's data ends in one deflated 1 GiB of zeros."""
    files = -(-BOMB_SIZE // ZIP_KERNEL)
    packed = zeros_unit(zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS), ZIP_KERNEL)
    crc, piece = 0, bytes(min(64 * MIB, ZIP_KERNEL))
    for _ in range(ZIP_KERNEL // len(piece)):
        crc = zlib.crc32(piece, crc)
    names = [f"{i:08d}".encode() for i in range(files)]
    headers = [b""] * files
    csize, usize = len(packed), ZIP_KERNEL
    headers[-1] = _zip_local(names[-1], crc, csize, usize)
    expanded = usize
    for i in range(files - 2, -1, -1):  # file i's data: a stored block quoting file i+1's header, then its data
        quoted = headers[i + 1]
        crc = crc32_combine(zlib.crc32(quoted), crc, usize)
        csize, usize = csize + 5 + len(quoted), usize + len(quoted)
        headers[i] = _zip_local(names[i], crc, csize, usize)
        expanded += usize
    with open(path, "wb") as out:
        offsets = []
        for i, header in enumerate(headers):
            offsets.append(out.tell())
            out.write(header)
            if i < files - 1:  # a non-final stored block's header; its content is the next local header
                out.write(struct.pack("<BHH", 0, len(headers[i + 1]), 0xFFFF ^ len(headers[i + 1])))
        out.write(packed)
        directory_at = out.tell()
        directory = bytearray()
        for name, header, offset in zip(names, headers, offsets, strict=True):
            _sig, _ver, _flags, _method, _time, _date, crc, csize, usize, _n, _e = ZIP_LOCAL.unpack_from(header)
            directory += ZIP_CENTRAL.pack(b"PK\x01\x02", 20, 20, 0, zipfile.ZIP_DEFLATED, 0, ZIP_DOS_DATE, crc,
                                          csize, usize, len(name), 0, 0, 0, 0, 0, offset) + name
        out.write(directory)
        out.write(ZIP_END.pack(b"PK\x05\x06", 0, 0, files, files, len(directory), directory_at, 0))
    return expanded


def build_sparse_disk(path: Path) -> int:
    """2 GiB: each MiB is 29 KiB of seeded random bytes then zeros (written sparse), zstd -3."""
    raw = path.with_suffix(".raw")
    rng = random.Random(35)
    with open(raw, "wb") as out:
        for mib in range(2048):
            out.seek(mib * MIB)
            out.write(rng.randbytes(29 * 1024))
        out.truncate(2 * GIB)
    subprocess.run(["zstd", "-q", "-3", "-T0", "-f", str(raw), "-o", str(path)], check=True)
    raw.unlink()
    return 2 * GIB


def build_apart(build: Callable[[Path], int], path: Path) -> int:
    """Run a builder in a forked process: its memory must not raise this process's peak RSS, which
    Linux hands down to every audit it starts (the child's ru_maxrss starts from the parent's at fork)."""
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return int(pool.apply(build, (path,)))


@dataclass
class Case:
    name: str
    build: Callable[[Path], int]
    expect: str  # "accept" or the finding code
    limit: str | None = None  # --max-image-size
    #: Other codes that count as the right rejection; with them, the codes may come in any order
    #: (the zip plugin reports every problem it finds), else ``expect`` must be the first error.
    also: tuple[str, ...] = ()
    file: Path | None = None
    expanded: int = 0
    build_s: float = 0.0
    runs: list[dict[str, Any]] = field(default_factory=list)
    #: Time sha512sum over the same output (the raw disk kept next to the file) for comparison.
    reference: bool = False
    reference_s: float | None = None

    @property
    def is_bomb(self) -> bool:
        return self.expect != "accept"

    def rejection(self, codes: list[str]) -> str | None:
        """The code that makes ``codes`` the right rejection, or None."""
        if not self.also:
            return self.expect if codes[:1] == [self.expect] else None
        return next((code for code in (self.expect, *self.also) if code in codes), None)


CASES = [
    Case("bzip2, 1.1 TiB of zeros", build_bzip2, "compression.ratio"),
    Case("zstd, 1.1 TiB of zeros (sizes not declared)", build_zstd, "compression.ratio"),
    Case("xz, 8 GiB of zeros, 4 GiB limit", build_xz, "compression.too_large", "4GiB"),
    Case("zstd, 8 GiB of zeros, declared, 4 GiB limit", build_zstd_declared, "compression.too_large", "4GiB"),
    Case("xz, 8 GiB of 0x01, no index, 4 GiB limit", build_xz_no_index, "compression.ratio", "4GiB"),
    Case("gzip, 8 GiB of 0x01, 4 GiB limit", build_gzip, "compression.ratio", "4GiB"),
    Case("gzip of bzip2, 1.1 TiB of zeros", build_gzip_of_bzip2, "compression.ratio"),
    Case("zip, 1.1 TiB of overlapping entries (Fifield)", build_zip_overlap, "zip.overlap",
         also=("zip.too_many_entries", "zip.too_large")),
    Case("legitimate: 2 GiB sparse raw, zstd ~35:1", build_sparse_disk, "accept"),
    *(Case(f"legitimate: 20 GiB raw holding 16 MiB, {kind}", functools.partial(build_fresh_disk, kind), "accept",
           reference=True) for kind in ("gzip", "bzip2", "xz", "zstd")),
]


def audit(case: Case, config: Path) -> dict[str, Any]:
    """One audit in a fresh process: wall time, peak RSS, verdict, codes."""
    assert case.file is not None
    command = [str(IMPORTHOOKS), "audit", "--format", "json", "--config", str(config),
               "--container-format", "compressed", str(case.file)]
    if case.limit:
        command[2:2] = ["--max-image-size", case.limit]
    with tempfile.TemporaryFile() as out:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL)
        _pid, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        report = json.loads(out.read().decode().splitlines()[0])
    errors = [f for f in report["findings"] if f["severity"] == "error"]
    return {"wall_s": wall, "pipeline_s": report["elapsed_s"], "rss_mib": usage.ru_maxrss / 1024,
            "verdict": report["verdict"], "codes": [f["code"] for f in errors],
            "detail": errors[0]["detail"] if errors else None, "layers": report["layers"]}


def summary(case: Case) -> dict[str, Any]:
    last = case.runs[-1]
    wall = statistics.median(r["wall_s"] for r in case.runs)
    rss = max(r["rss_mib"] for r in case.runs)
    right = all((r["verdict"] == "accept") if not case.is_bomb
                else (r["verdict"] != "accept" and case.rejection(r["codes"]) is not None)
                for r in case.runs)
    met = right and (not case.is_bomb or (wall <= TARGET_S and rss <= TARGET_RSS_MIB))
    return {"case": case.name, "file_bytes": case.file.stat().st_size if case.file else None,
            "expands_to": case.expanded, "build_s": round(case.build_s, 1), "expect": case.expect,
            "verdict": last["verdict"], "codes": last["codes"], "detail": last["detail"],
            "rejected_with": case.rejection(last["codes"]) if case.is_bomb else None,
            "sha512sum_s": None if case.reference_s is None else round(case.reference_s, 2),
            "vs_sha512sum": None if case.reference_s is None else round(wall / case.reference_s, 2),
            "wall_s_median": round(wall, 3), "pipeline_s_median": round(statistics.median(
                r["pipeline_s"] for r in case.runs), 3), "peak_rss_mib": round(rss, 1), "met": met}


def readable(size: int) -> str:
    for unit, scale in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'case':46} {'file':>9} {'expands':>9} {'verdict / code':28} {'wall s':>7} {'run s':>6} "
          f"{'RSS MiB':>8}  target")
    for row in rows:
        target = (f"<= {TARGET_S:g} s, <= {TARGET_RSS_MIB} MiB" if row["expect"] != "accept" else "accept")
        outcome = row["rejected_with"] or (row["codes"][0] if row["codes"] else row["verdict"])
        print(f"{row['case']:46} {readable(row['file_bytes']):>9} {readable(row['expands_to']):>9} {outcome:28} "
              f"{row['wall_s_median']:>7.2f} {row['pipeline_s_median']:>6.2f} {row['peak_rss_mib']:>8.1f}  "
              f"{target}: {'met' if row['met'] else 'MISSED'}")
    for row in rows:
        print(f"  {row['case']}: built in {row['build_s']} s; {row['detail'] or 'no finding'}")
        if row["sha512sum_s"] is not None:
            print(f"    sha512sum of the same {readable(row['expands_to'])}: {row['sha512sum_s']:.2f} s; "
                  f"the audit took {row['vs_sha512sum']:.2f} times that")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary directory goes")
    parser.add_argument("--runs", type=int, default=3, help="audits of each case (median reported)")
    parser.add_argument("--only", default=None, help="only cases whose name contains this")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if not IMPORTHOOKS.exists() or shutil.which("zstd") is None:
        print("needs the importhooks script next to this python and the zstd tool", file=sys.stderr)
        return 2
    cases = [c for c in CASES if args.only is None or args.only in c.name]
    root = Path(tempfile.mkdtemp(prefix="importhooks-bench-bombs-", dir=args.dir))
    try:
        if shutil.disk_usage(root).free < GIB:
            print(f"needs 1 GiB free in {root.parent}", file=sys.stderr)
            return 2
        config = root / "config.toml"
        config.write_text(CONFIG)
        for number, case in enumerate(cases):
            case.file = root / f"case-{number}"
            started = time.monotonic()
            case.expanded = build_apart(case.build, case.file)
            case.build_s = time.monotonic() - started
            if case.reference:
                started = time.monotonic()
                subprocess.run(["sha512sum", str(case.file.with_suffix(".raw"))], check=True, capture_output=True)
                case.reference_s = time.monotonic() - started
        for _ in range(max(1, args.runs)):
            for case in cases:
                case.runs.append(audit(case, config))
        rows = [summary(case) for case in cases]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)
    return 0 if all(row["met"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
