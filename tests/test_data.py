"""Reading the data within budgets, at several chunk sizes, with checksums from the same pass."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from importhooks.data import ImageData
from importhooks.errors import DataChanged, ReadBudgetExceeded, StageTimeout


def layer(path: Path, passes: int = 8, check=lambda: None) -> ImageData:
    return ImageData(path, kind="staged", check=check, max_read_passes=passes)


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 4099 + b"tail")
    return path


@pytest.mark.parametrize("chunk_size", [1, 17, 512, 65536])
def test_stream_at_any_chunk_size_gives_the_data_and_its_checksums(payload, chunk_size):
    data = layer(payload)
    if chunk_size == 1:
        data = layer(payload, passes=20)
    body = b"".join(data.stream(chunk_size=chunk_size))
    assert body == payload.read_bytes()
    sums = data.checksums()  # from the pass above: no second read
    assert data.bytes_read == len(body)
    assert sums.md5 == hashlib.md5(body).hexdigest()
    assert sums.hash_value == hashlib.sha512(body).hexdigest() and sums.hash_algo == "sha512"


def test_checksums_read_once_when_nobody_streamed(payload):
    data = layer(payload)
    with data.open() as f:
        f.read(100)
    sums = data.checksums()
    assert sums.size == payload.stat().st_size
    assert data.bytes_read == 100 + payload.stat().st_size


def test_partial_stream_computes_no_checksums(payload):
    data = layer(payload)
    stream = data.stream(chunk_size=4096)
    next(stream)
    stream.close()
    assert data.bytes_read == 4096
    data.checksums()
    assert data.bytes_read == 4096 + payload.stat().st_size


def test_read_budget(payload):
    data = layer(payload, passes=1)
    with pytest.raises(ReadBudgetExceeded):
        for _ in range(5):
            with data.open() as f:
                f.read()


def test_file_growing_while_read_is_detected(payload):
    data = layer(payload)
    stream = data.stream(chunk_size=65536)
    next(stream)
    with open(payload, "ab") as f:
        f.write(b"more" * 100000)
    with pytest.raises(DataChanged):
        for _ in stream:
            pass


def test_file_shrinking_while_read_is_detected(payload):
    data = layer(payload)
    stream = data.stream(chunk_size=65536)
    next(stream)
    with open(payload, "r+b") as f:
        f.truncate(70000)
    with pytest.raises(DataChanged):
        for _ in stream:
            pass


def test_every_read_checks_the_run(payload):
    calls = []

    def check():
        calls.append(1)
        if len(calls) > 3:
            raise StageTimeout("late")

    data = layer(payload, check=check)
    with pytest.raises(StageTimeout):
        for _ in data.stream(chunk_size=512):
            pass
    assert len(calls) == 4


def test_large_stream_hashes_on_two_threads_and_matches_hashlib(tmp_path):
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        for i in range(12):
            f.write(bytes([i]) * (1 << 20))
    data = layer(path)
    for _ in data.stream():
        pass
    body = path.read_bytes()
    sums = data.checksums()
    assert sums.md5 == hashlib.md5(body).hexdigest() and sums.hash_value == hashlib.sha512(body).hexdigest()


def test_abandoned_large_stream_stops_its_hash_thread(tmp_path):
    import threading

    path = tmp_path / "big.bin"
    path.write_bytes(b"\1" * (16 << 20))
    data = layer(path)
    stream = data.stream()
    next(stream)
    stream.close()
    assert not any(t.name == "importhooks-md5" for t in threading.enumerate())


def test_read_at(payload):
    data = layer(payload)
    assert data.read_at(256, 4) == bytes(range(4))
    assert data.read_at(payload.stat().st_size - 2, 100) == b"il"
    assert data.bytes_read == 6
