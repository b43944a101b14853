"""Staging writer throughput and memory: ``StagingArea.receive`` against a plain streaming sink.

Run on demand (pytest never collects it)::

    .venv/bin/python benchmarks/bench_staging.py [--dir DIR] [--runs N] [--size SIZE] [--json]

One small Starlette app, served by uvicorn (in the configuration an installed
``importhooks[service]`` gets: h11 and the asyncio loop unless httptools or uvloop are
installed) in a subprocess of its own on 127.0.0.1 and a free port, has two routes, both
answering 204 and both writing into the same directory:

* ``PUT /stage/{image_id}``: ``await area.receive(image_id, request.stream(),
  declared_size=<Content-Length>)``, with ``area = StagingArea(DIR, Settings(max_upload_bytes=
  <the largest upload>, max_upload_time=3600))``: the measured case (UUID check, private
  ``O_EXCL`` partial file, size and deadline checked per chunk under ``asyncio.timeout``,
  rename at the end);
* ``PUT /sink/{name}``: the baseline, ``async for chunk in request.stream()`` written to a
  file with a plain ``os.write`` loop: the least a server can do with the same body.

The client (this process, ``http.client``) uploads a ``--size`` body (default 1 GiB) with a
``Content-Length``, generated as it goes, never held in memory: one 1 MiB block of seeded
pseudo-random bytes, each 4 KiB page of each copy stamped with its own counter, so nothing
along the way can compress or deduplicate it. The routes alternate run by run (whoever goes
first rotates), after one untimed warm-up upload each; the throughput of each upload is the
body size over the client's wall time from connecting to the 204. Reported: every run's
MiB/s, the median of ``--runs`` (default 5, at least 3) for each route, and the server's CPU
seconds per upload (``/proc/PID/stat``). Each staged or sunk file is deleted after its run
(untimed), so no run pays for truncating or replacing the previous one.
**Target: median staging / median sink >= 0.8.**

Memory: two more server processes, each warmed up with a 1 MiB upload and then given one
upload through the staging route, of 256 MiB and of 1 GiB; the peak resident set of each
(``VmHWM`` from ``/proc/PID/status`` right after the upload; ``ru_maxrss`` from ``os.wait4``
agrees) is reported with the idle peak before the upload. Separate processes keep the two
high-water marks independent. **Target: peak RSS after 1 GiB minus peak RSS after 256 MiB
under 32 MiB** (memory must not grow with the upload).

Correctness is checked once, on the staging warm-up: the staged file's size and sha256 must
equal those of the body sent.

Files go to a new directory made with ``tempfile.mkdtemp(dir=--dir)`` and removed at the
end; it needs ``--size`` plus 64 MiB free (checked first). Exit status 0 when every target
is met, 1 otherwise, 2 when the benchmark could not run (no space, the server did not start,
an upload failed, the staged file differed from the body sent).
"""

from __future__ import annotations

import argparse
import array
import hashlib
import http.client
import importlib.metadata
import importlib.util
import json
import os
import random
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from importhooks.units import parse_size

MIB = 1 << 20
GIB = 1 << 30
PAGE = 4096
SEED = 20240611
TARGET_RATIO = 0.8
TARGET_FLAT_MIB = 32
MEMORY_SIZES = {"256MiB": 256 * MIB, "1GiB": GIB}
WARMUP_BYTES = MIB
MAX_UPLOAD_TIME = 3600.0
START_TIMEOUT = 30.0


# -- the server (a subprocess: this file run with --serve) ---------------------------


def serve(directory: Path, max_bytes: int) -> None:
    """Run the two-route app on 127.0.0.1, a free port; print ``PORT n`` once it listens."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from importhooks.server.staging import StagingArea
    from importhooks.settings import Settings

    area = StagingArea(directory, Settings(max_upload_bytes=max_bytes, max_upload_time=MAX_UPLOAD_TIME))

    async def stage(request: Request) -> Response:
        started = time.perf_counter()
        declared = request.headers.get("content-length")
        await area.receive(request.path_params["image_id"], request.stream(),
                           declared_size=int(declared) if declared is not None else None)
        return Response(status_code=204, headers={"x-server-seconds": f"{time.perf_counter() - started:.6f}"})

    async def sink(request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["name"]
        if not name.isalnum():
            return Response(status_code=400)
        fd = os.open(directory / f"sink-{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        chunks = 0
        try:
            async for chunk in request.stream():
                chunks += 1
                written = os.write(fd, chunk)
                if written != len(chunk):
                    view = memoryview(chunk)[written:]
                    while view:
                        view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        return Response(status_code=204, headers={"x-server-seconds": f"{time.perf_counter() - started:.6f}",
                                                  "x-chunks": str(chunks)})

    app = Starlette(routes=[Route("/stage/{image_id}", stage, methods=["PUT"]),
                            Route("/sink/{name}", sink, methods=["PUT"])])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # connections queue from here on, before uvicorn accepts them
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[listener])


class Server:
    """The app in a subprocess of its own: its port, its memory, its CPU time."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.log: IO[bytes] = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", str(directory), "--max-bytes", str(max_bytes)],
            stdout=subprocess.PIPE, stderr=self.log,
        )
        self.pid = self.process.pid
        self.maxrss_kib: int | None = None
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            ready = selector.select(START_TIMEOUT)
        line = self.process.stdout.readline().decode() if ready else ""
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"the server did not start: {line!r} {self.stderr()}")
        self.port = int(line.split()[1])

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def status_kib(self, field: str) -> int:
        """A ``kB`` line of /proc/PID/status (VmHWM: peak resident set; VmRSS: current)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise RuntimeError(f"no {field} in /proc/{self.pid}/status")

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the server so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                _pid, status, usage = os.wait4(self.pid, 0)
            except ChildProcessError:
                self.process.wait()
            else:
                self.process.returncode = os.waitstatus_to_exitcode(status)
                self.maxrss_kib = usage.ru_maxrss
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the client ----------------------------------------------------------------------


def body(size: int, digest: Any = None) -> Iterator[bytes | bytearray | memoryview]:
    """``size`` bytes in 1 MiB chunks: one pseudo-random block, every 4 KiB page stamped with its own number.

    The same bytearray is yielded each time, restamped: ``http.client`` has sent a chunk in
    full before it asks for the next, so nothing more than one block is ever held.
    """
    block = bytearray(random.Random(SEED).randbytes(MIB))
    stamps = memoryview(block).cast("Q")[:: PAGE // 8]
    pages = MIB // PAGE
    sent = 0
    number = 0
    while sent < size:
        stamps[:] = array.array("Q", range(number * pages, (number + 1) * pages))
        chunk = block if size - sent >= MIB else memoryview(block)[: size - sent]
        if digest is not None:
            digest.update(chunk)
        yield chunk
        sent += len(chunk)
        number += 1


def upload(port: int, path: str, size: int, digest: Any = None) -> tuple[float, dict[str, str]]:
    """PUT a ``size``-byte body to ``path``: the wall seconds to the response, its headers (204 or RuntimeError)."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=MAX_UPLOAD_TIME)
    try:
        connection.request("PUT", path, body=body(size, digest),
                           headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
        response = connection.getresponse()
        text = response.read()
        seconds = time.perf_counter() - started
    finally:
        connection.close()
    if response.status != 204:
        raise RuntimeError(f"PUT {path}: {response.status} {response.reason} {text[:200]!r}")
    return seconds, {key.lower(): value for key, value in response.getheaders()}


def timed(server: Server, route: str, size: int, uploads: Path) -> dict[str, float]:
    """One timed upload to ``route`` (stage or sink); its file is deleted afterwards."""
    if route == "stage":
        name = str(uuid.uuid4())
        target = uploads / name
    else:
        name = uuid.uuid4().hex
        target = uploads / f"sink-{name}"
    cpu = server.cpu_seconds()
    seconds, headers = upload(server.port, f"/{route}/{name}", size)
    cpu = server.cpu_seconds() - cpu
    if target.stat().st_size != size:
        raise RuntimeError(f"{target.name}: {target.stat().st_size} bytes written, {size} sent")
    target.unlink()
    result = {"mib_s": size / MIB / seconds, "seconds": seconds, "cpu_s": cpu,
              "server_s": float(headers["x-server-seconds"])}
    if "x-chunks" in headers:
        result["chunks"] = int(headers["x-chunks"])
    return result


def memory(directory: Path, size: int, max_bytes: int) -> dict[str, Any]:
    """A fresh server, one 1 MiB warm-up and one ``size`` upload through the staging route: its peaks."""
    with Server(directory, max_bytes) as server:
        warm = str(uuid.uuid4())
        upload(server.port, f"/stage/{warm}", WARMUP_BYTES)
        (directory / warm).unlink()
        idle_hwm = server.status_kib("VmHWM")
        name = str(uuid.uuid4())
        upload(server.port, f"/stage/{name}", size)
        hwm = server.status_kib("VmHWM")
        rss = server.status_kib("VmRSS")
        (directory / name).unlink()
    return {"size": size, "idle_hwm_mib": idle_hwm / 1024, "hwm_mib": hwm / 1024, "rss_mib": rss / 1024,
            "ru_maxrss_mib": None if server.maxrss_kib is None else server.maxrss_kib / 1024}


def stack() -> dict[str, str]:
    """What serves the app: versions, and uvicorn's 'auto' choices (httptools over h11, uvloop over asyncio)."""
    found = {name: importlib.util.find_spec(name) is not None for name in ("httptools", "uvloop")}
    return {"python": sys.version.split()[0], "uvicorn": importlib.metadata.version("uvicorn"),
            "starlette": importlib.metadata.version("starlette"),
            "http": "httptools" if found["httptools"] else f"h11 {importlib.metadata.version('h11')}",
            "loop": "uvloop" if found["uvloop"] else "asyncio"}


# -- the benchmark -------------------------------------------------------------------


def measure(root: Path, size: int, runs: int) -> dict[str, Any]:
    uploads = root / "uploads"
    uploads.mkdir()
    max_bytes = max(size, *MEMORY_SIZES.values())
    results: dict[str, list[dict[str, float]]] = {"stage": [], "sink": []}
    with Server(uploads, max_bytes) as server:
        # Warm-up, untimed; the staging one checks what was staged against what was sent.
        sent = hashlib.sha256()
        image_id = str(uuid.uuid4())
        upload(server.port, f"/stage/{image_id}", size, sent)
        staged = uploads / image_id
        with open(staged, "rb") as handle:
            got = hashlib.file_digest(handle, "sha256")
        correct = {"size_sent": size, "size_staged": staged.stat().st_size,
                   "sha256_sent": sent.hexdigest(), "sha256_staged": got.hexdigest(),
                   "leftovers": sorted(p.name for p in uploads.iterdir() if p != staged)}
        correct["ok"] = (correct["size_staged"] == size and correct["sha256_staged"] == correct["sha256_sent"]
                         and not correct["leftovers"])
        if not correct["ok"]:
            raise RuntimeError(f"the staged file is not what was sent: {correct}")
        staged.unlink()
        timed(server, "sink", size, uploads)
        for number in range(runs):
            order = ("stage", "sink") if number % 2 == 0 else ("sink", "stage")
            for route in order:
                results[route].append(timed(server, route, size, uploads))
        timing_hwm = server.status_kib("VmHWM")
    mems = {name: memory(uploads, mem_size, max_bytes) for name, mem_size in MEMORY_SIZES.items()}
    medians = {route: statistics.median(r["mib_s"] for r in rows) for route, rows in results.items()}
    cpu = {route: statistics.median(r["cpu_s"] for r in rows) for route, rows in results.items()}
    ratio = medians["stage"] / medians["sink"]
    growth = mems["1GiB"]["hwm_mib"] - mems["256MiB"]["hwm_mib"]
    chunks = statistics.median(r["chunks"] for r in results["sink"])
    return {
        "stack": stack(), "size": size, "runs": runs,
        "runs_mib_s": {route: [round(r["mib_s"], 1) for r in rows] for route, rows in results.items()},
        "runs_server_cpu_s": {route: [round(r["cpu_s"], 2) for r in rows] for route, rows in results.items()},
        "median_mib_s": {route: round(value, 1) for route, value in medians.items()},
        "median_server_cpu_s": {route: round(value, 2) for route, value in cpu.items()},
        "sink_chunks": int(chunks), "mean_chunk_kib": round(size / chunks / 1024, 1),
        "ratio": round(ratio, 3), "target_ratio": TARGET_RATIO, "ratio_met": ratio >= TARGET_RATIO,
        "memory": {name: {key: None if value is None else round(value, 1) if isinstance(value, float) else value
                          for key, value in row.items()} for name, row in mems.items()},
        "timing_server_hwm_mib": round(timing_hwm / 1024, 1),
        "memory_growth_mib": round(growth, 1), "target_growth_mib": TARGET_FLAT_MIB,
        "memory_met": growth < TARGET_FLAT_MIB,
        "correctness": correct,
    }


def print_report(report: dict[str, Any]) -> None:
    s = report["stack"]
    print(f"Python {s['python']}, uvicorn {s['uvicorn']} ({s['http']}, {s['loop']} loop), starlette {s['starlette']}; "
          f"{report['size'] / MIB:.0f} MiB per upload, {report['runs']} runs")
    c = report["correctness"]
    print(f"correctness: staged {c['size_staged']:,} bytes, sha256 {c['sha256_staged'][:16]}...: "
          f"{'equal to what was sent' if c['ok'] else 'DIFFERENT'}")
    for route, label in (("stage", "staging (StagingArea.receive)"), ("sink", "sink (plain os.write loop)")):
        print(f"{label:>30}: median {report['median_mib_s'][route]:7.1f} MiB/s  runs {report['runs_mib_s'][route]}"
              f"  server CPU s {report['runs_server_cpu_s'][route]}")
    print(f"{'':>30}  body chunks per upload (sink): {report['sink_chunks']}, "
          f"mean {report['mean_chunk_kib']} KiB")
    print(f"ratio staging / sink = {report['ratio']:.3f}  (target >= {TARGET_RATIO}): "
          f"{'met' if report['ratio_met'] else 'MISSED'}")
    for name, row in report["memory"].items():
        print(f"server peak RSS, staging {name:>6}: VmHWM {row['hwm_mib']:6.1f} MiB (idle {row['idle_hwm_mib']:.1f}, "
              f"ru_maxrss {row['ru_maxrss_mib']}, RSS after {row['rss_mib']:.1f})")
    print(f"timing server (every upload above) VmHWM {report['timing_server_hwm_mib']} MiB")
    print(f"peak RSS 1GiB - 256MiB = {report['memory_growth_mib']:+.1f} MiB  (target < {TARGET_FLAT_MIB} MiB): "
          f"{'met' if report['memory_met'] else 'MISSED'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary directory goes")
    parser.add_argument("--runs", type=int, default=5, help="timed uploads per route (median reported)")
    parser.add_argument("--size", type=parse_size, default=GIB, help="bytes per timed upload (default 1GiB)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--serve", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--max-bytes", type=int, default=GIB, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.max_bytes)
        return 0
    if args.runs < 3:
        parser.error("--runs must be at least 3")
    if args.size < MIB:
        parser.error("--size must be at least 1MiB")
    for module in ("starlette", "uvicorn"):
        if importlib.util.find_spec(module) is None:
            print(f"needs {module}: pip install -e '.[service]'", file=sys.stderr)
            return 2
    try:
        root = Path(tempfile.mkdtemp(prefix="importhooks-bench-staging-", dir=args.dir))
    except OSError as error:
        print(f"could not make the temporary directory: {error}", file=sys.stderr)
        return 2
    try:
        needed = max(args.size, *MEMORY_SIZES.values()) + 64 * MIB
        if shutil.disk_usage(root).free < needed:
            print(f"needs {needed // MIB} MiB free in {root.parent}", file=sys.stderr)
            return 2
        report = measure(root, args.size, args.runs)
    except (OSError, RuntimeError, http.client.HTTPException) as error:
        print(f"could not run: {error}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0 if report["ratio_met"] and report["memory_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
