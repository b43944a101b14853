"""The staging writer: limits, atomic last-complete-wins, and nothing left staged after a failure."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from importhooks import Settings
from importhooks.errors import BadRequest, PayloadTooLarge, RequestTimeout
from importhooks.server.staging import PARTIAL_PREFIX, StagingArea, image_key

IMAGE = str(uuid.uuid4())


@pytest.fixture
def area(tmp_path: Path) -> StagingArea:
    return StagingArea(tmp_path / "staging", Settings(max_upload_bytes=1 << 20, max_upload_time=5.0))


async def chunks_of(data: bytes, size: int, pause: float = 0.0) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        if pause:
            await asyncio.sleep(pause)
        yield data[start : start + size]


def receive(area: StagingArea, data: bytes, size: int = 17, **kwargs: object) -> int:
    return asyncio.run(area.receive(IMAGE, chunks_of(data, size), **kwargs))  # type: ignore[arg-type]


def leftovers(area: StagingArea) -> list[str]:
    return sorted(p.name for p in area.directory.iterdir())


@pytest.mark.parametrize("chunk", [1, 17, 512, 64 << 10])
def test_a_body_is_staged_whole_at_every_chunk_size(area, chunk):
    data = os.urandom(200_000)
    assert receive(area, data, chunk, declared_size=len(data)) == len(data)
    staged = area.path(IMAGE)
    assert hashlib.sha256(staged.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert stat.S_IMODE(staged.stat().st_mode) == 0o600 and leftovers(area) == [IMAGE]


def test_the_last_complete_upload_wins(area):
    receive(area, b"first" * 1000)
    receive(area, b"second" * 1000)
    assert area.path(IMAGE).read_bytes() == b"second" * 1000 and leftovers(area) == [IMAGE]


def test_a_declared_size_over_the_limit_is_refused_before_reading(area):
    receive(area, b"old")
    consumed: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        consumed.append(b"x")
        yield b"x"

    with pytest.raises(PayloadTooLarge) as info:
        asyncio.run(area.receive(IMAGE, body(), declared_size=(1 << 20) + 1))
    assert info.value.status == 413 and consumed == [] and leftovers(area) == []


def test_an_undeclared_body_over_the_limit_stops_at_the_limit(area):
    read: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        while True:
            read.append(1)
            yield bytes(64 << 10)

    with pytest.raises(PayloadTooLarge):
        asyncio.run(area.receive(IMAGE, endless()))
    assert len(read) == 17 and leftovers(area) == []  # 16 chunks fill 1 MiB; the 17th passes it


def test_a_trickling_upload_times_out_and_leaves_nothing(tmp_path):
    slow = StagingArea(tmp_path / "s", Settings(max_upload_time=0.3))

    async def trickle() -> AsyncIterator[bytes]:
        yield b"a"
        await asyncio.sleep(30)  # never sends the rest: the timer, not the next chunk, ends it
        yield b"b"

    loop_time = asyncio.run(_timed(slow.receive(IMAGE, trickle())))
    assert isinstance(loop_time[1], RequestTimeout) and loop_time[1].status == 408
    assert loop_time[0] < 5 and leftovers(slow) == []


async def _timed(coro: object) -> tuple[float, BaseException | None]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await coro  # type: ignore[misc]
    except BaseException as exc:
        return loop.time() - started, exc
    return loop.time() - started, None


def test_a_short_body_is_400_and_unstages_earlier_data(area):
    receive(area, b"old data")
    with pytest.raises(BadRequest) as info:
        receive(area, b"12345", declared_size=10)
    assert info.value.field == "Content-Length" and leftovers(area) == []


def test_a_client_that_disconnects_leaves_nothing(area):
    class Disconnect(Exception):
        pass

    async def broken() -> AsyncIterator[bytes]:
        yield b"part"
        raise Disconnect

    receive(area, b"old")
    with pytest.raises(Disconnect):
        asyncio.run(area.receive(IMAGE, broken()))
    assert leftovers(area) == []


def test_the_sync_writer(area):
    def body() -> Iterator[bytes]:
        yield from (b"ab", b"cd")

    assert area.receive_sync(IMAGE, body(), declared_size=4) == 4
    assert area.path(IMAGE).read_bytes() == b"abcd"
    with pytest.raises(PayloadTooLarge):
        area.receive_sync(IMAGE, iter([bytes(1 << 20), b"x"]))
    assert leftovers(area) == []


@pytest.mark.parametrize("bad", ["../etc/passwd", "", "x" * 36, "not-a-uuid"])
def test_only_uuids_name_staged_files(area, bad):
    with pytest.raises(BadRequest):
        area.path(bad)
    assert image_key(IMAGE.upper()) == IMAGE


def test_sweep_removes_what_a_crash_left(area):
    (area.directory / f"{PARTIAL_PREFIX}{IMAGE}-deadbeef").write_bytes(b"half")
    receive(area, b"whole")
    assert area.sweep() == 1 and leftovers(area) == [IMAGE]


def test_observe_sees_every_chunk_written(area):
    digest = hashlib.sha256()
    data = os.urandom(100_000)
    assert asyncio.run(area.receive(IMAGE, chunks_of(data, 512), observe=digest.update)) == len(data)
    assert digest.digest() == hashlib.sha256(area.path(IMAGE).read_bytes()).digest()
