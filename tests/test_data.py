"""Reading the data within budgets, at several chunk sizes, with checksums from the same pass."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from importhooks import Claims, ImportContext, ImportRequest, Pipeline, Verdict, hookimpl
from importhooks.data import ImageData
from importhooks.errors import DataChanged, ReadBudgetExceeded, StageTimeout

from . import images


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


class _FinalizeProbe:
    """A plugin that asks for the checksums in ``finalize`` and records what that cost in reads."""

    def __init__(self) -> None:
        self.extra_read: int | None = None

    @hookimpl(trylast=True)
    def importhooks_finalize(self, context: ImportContext) -> None:
        before = context.data.bytes_read
        context.data.checksums()
        self.extra_read = context.data.bytes_read - before


@pytest.mark.parametrize("checksums_plugin", [True, False])
def test_the_first_pass_hashes_only_when_the_checksums_plugin_runs(settings, tmp_path, checksums_plugin):
    """With the checksums plugin the disk inspector's pass computes them (asking later reads nothing more);
    without it (Glance hashes while it stores) that pass does not hash, and asking costs a pass of its own."""
    path = images.raw_image(tmp_path / "disk.raw", 4 << 20)
    if not checksums_plugin:
        settings = settings.replace(plugins=dataclasses.replace(settings.plugins, disabled=("checksums",)))
    probe = _FinalizeProbe()
    pipeline = Pipeline.from_settings(settings, extra_plugins=[("probe", probe)])
    result = pipeline.run(ImportRequest(path, Claims(disk_format="raw")))
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert probe.extra_read == (0 if checksums_plugin else path.stat().st_size)
    assert (result.checksums is not None) is checksums_plugin
