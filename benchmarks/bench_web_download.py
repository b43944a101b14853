"""web-download fetch throughput: the kit's fetcher against a plain httpx download of the same local file.

Run on demand (pytest never collects it)::

    .venv/bin/python benchmarks/bench_web_download.py [--dir DIR] [--size SIZE_MIB] [--runs N] [--json]

A file of ``--size`` MiB (default 256) of pseudo-random bytes is served by ``python -m http.server``
(a subprocess of its own, on 127.0.0.1 and a free port). Two downloads of it alternate, run by
run, after one untimed warm-up each:

* **fetcher**: :func:`importhooks.server.methods._fetch.fetch_to_staging` into a
  :class:`~importhooks.server.staging.StagingArea` (URL check and resolution, the pinned
  transport, the deadline-bound stream, the staging writer's checks and rename), with
  ``allowed_networks = ["127.0.0.1/32"]`` and the server's port allowed;
* **plain httpx**: ``httpx.stream("GET", url)`` with its default transport, ``iter_raw`` in
  the chunks as they arrive, written to a file with an ``os.write`` loop: the least a server can do.

Each run's throughput is the file size over the wall time; the medians are compared.
**Target: median fetcher / median plain httpx >= 0.8.** The staged file is compared with the
served one (sha256) once. Exit status 0 when the target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from importhooks.server.methods._fetch import fetch_to_staging
from importhooks.server.staging import StagingArea
from importhooks.settings import Settings, WebDownloadSettings

MiB = 1 << 20
TARGET = 0.8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _make_file(path: Path, size_mib: int) -> str:
    block = random.Random(15).randbytes(MiB)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for index in range(size_mib):
            piece = index.to_bytes(8, "little") + block[8:]
            out.write(piece)
            digest.update(piece)
    return digest.hexdigest()


def _plain(url: str, target: Path) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with httpx.stream("GET", url, timeout=60) as response:
            response.raise_for_status()
            for chunk in response.iter_raw():
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dir", default=None, help="where the served and downloaded files go")
    parser.add_argument("--size", type=int, default=256, help="file size in MiB (default 256)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each download (default 5)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-webdl-", dir=args.dir))
    port = _free_port()
    served = base / "served"
    served.mkdir()
    server = None
    try:
        digest = _make_file(served / "disk.img", args.size)
        server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
                                   "--directory", str(served)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/disk.img"
        for _ in range(100):
            try:
                httpx.head(url, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        size = args.size * MiB
        settings = Settings(max_upload_bytes=size, max_upload_time=600.0, web_download=WebDownloadSettings(
            allowed_networks=("127.0.0.1/32",), allowed_ports=(port,)))
        staging = StagingArea(base / "staging", settings)
        sink = base / "sink"

        def fetcher() -> None:
            image_id = str(uuid.uuid4())
            fetch_to_staging(url, image_id, staging, settings)
            staging.discard(image_id)

        def plain() -> None:
            _plain(url, sink)
            sink.unlink()

        check_id = str(uuid.uuid4())  # warm-up of the fetcher, and the correctness check
        fetch_to_staging(url, check_id, staging, settings)
        with staging.path(check_id).open("rb") as staged:
            if hashlib.file_digest(staged, "sha256").hexdigest() != digest:
                print("the staged file differs from the served one", file=sys.stderr)
                return 2
        staging.discard(check_id)
        plain()
        rates: dict[str, list[float]] = {"fetcher": [], "plain httpx": []}
        for run in range(args.runs):
            order = [("fetcher", fetcher), ("plain httpx", plain)]
            for name, work in order if run % 2 == 0 else reversed(order):
                started = time.perf_counter()
                work()
                rates[name].append(size / MiB / (time.perf_counter() - started))
        medians = {name: statistics.median(values) for name, values in rates.items()}
        ratio = medians["fetcher"] / medians["plain httpx"]
        if args.json:
            print(json.dumps({"size_mib": args.size, "runs": rates, "medians": medians, "ratio": ratio,
                              "target": TARGET}, indent=2))
        else:
            for name, values in rates.items():
                print(f"{name:12s} median {medians[name]:8.1f} MiB/s  runs: "
                      + ", ".join(f"{value:.0f}" for value in values))
            print(f"ratio fetcher / plain httpx: {ratio:.3f} (target >= {TARGET})")
        return 0 if ratio >= TARGET else 1
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
