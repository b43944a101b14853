"""The import runner: real pipeline runs in worker threads, caps, store, staged data cleanup, recovery."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest

from importhooks import Claims, ImportContext, ImportRequest, KillSwitch, Pipeline, Requester, Settings, hookimpl
from importhooks.errors import ImageGone, ImportHalted, StatusConflict
from importhooks.server.runner import INTERRUPTED, STORE_FAILED, ImportJob, ImportOutcome, ImportRunner, recover
from importhooks.server.staging import StagingArea
from importhooks.server.status import ImageStatus

from . import images


class Slow:
    """Sleeps in inspect (checking the kill switch) and records how many runs overlap, per project."""

    def __init__(self, seconds: float = 0.3) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.total_peak = 0

    @hookimpl
    def importhooks_inspect(self, context: ImportContext) -> None:
        project = context.requester.project or ""
        with self.lock:
            self.now[project] = self.now.get(project, 0) + 1
            self.peak[project] = max(self.peak.get(project, 0), self.now[project])
            self.total_peak = max(self.total_peak, sum(self.now.values()))
        try:
            deadline = time.monotonic() + self.seconds
            while time.monotonic() < deadline:
                context.check()
                time.sleep(0.02)
        finally:
            with self.lock:
                self.now[project] -= 1


class Service:
    """What a server keeps: the records the callbacks write, and a store directory."""

    def __init__(self, tmp_path: Path, settings: Settings, *plugins: tuple[str, object],
                 killswitch: KillSwitch | None = None, fail_store: bool | type[Exception] = False) -> None:
        self.store_dir = tmp_path / "store"
        self.store_dir.mkdir()
        self.staging = StagingArea(tmp_path / "staging", settings)
        self.pipeline = Pipeline.from_settings(settings, extra_plugins=plugins, killswitch=killswitch)
        self.outcomes: dict[str, ImportOutcome] = {}
        self.fail_store = fail_store
        self.runner = ImportRunner(self.pipeline, self.staging, store=self.store, finish=self.finish)

    def store(self, job: ImportJob, path: Path) -> None:
        if self.fail_store is ImageGone:
            raise ImageGone(job.image_id)
        if self.fail_store:
            raise OSError("store is full")
        shutil.copyfile(path, self.store_dir / job.image_id)

    def finish(self, job: ImportJob, outcome: ImportOutcome) -> None:
        self.outcomes[job.image_id] = outcome

    def stage(self, source: Path) -> str:
        image_id = str(uuid.uuid4())
        self.staging.receive_sync(image_id, iter([source.read_bytes()]))
        return image_id

    def job(self, image_id: str, project: str = "p1", **claims: str) -> ImportJob:
        return ImportJob.claim(self.staging, image_id, Claims(**claims), Requester("u", project, ("member",)))


def test_an_accepted_import_is_stored_with_its_fields(settings, tmp_path):
    service = Service(tmp_path, settings)
    source = images.qcow2_image(tmp_path / "ok.qcow2", "64M")
    image_id = service.stage(source)
    service.runner.submit(service.job(image_id, disk_format="qcow2"))
    assert service.runner.wait_idle(60)
    outcome = service.outcomes[image_id]
    assert outcome.status is ImageStatus.ACTIVE and outcome.message is None
    fields = outcome.fields
    assert fields["checksum"] == hashlib.md5(source.read_bytes()).hexdigest()
    assert fields["os_hash_algo"] == "sha512" and fields["size"] == source.stat().st_size
    assert (fields["disk_format"], fields["container_format"], fields["virtual_size"]) == ("qcow2", "bare", 64 << 20)
    assert fields["importhooks_os_type_detected"] == "unknown"
    assert (service.store_dir / image_id).read_bytes() == source.read_bytes()
    assert not service.staging.has(image_id)


def test_a_rejected_import_is_killed_with_a_safe_message_and_unstaged(settings, tmp_path, backing_qcow2):
    service = Service(tmp_path, settings)
    image_id = service.stage(backing_qcow2)
    service.runner.submit(service.job(image_id))
    assert service.runner.wait_idle(60)
    outcome = service.outcomes[image_id]
    assert outcome.status is ImageStatus.KILLED and outcome.message and "/etc/passwd" not in outcome.message
    assert outcome.result is not None and "qcow2.backing_file" in [f.code for f in outcome.result.findings]
    assert not service.staging.has(image_id) and list(service.store_dir.iterdir()) == []


def test_a_store_that_fails_kills_the_image(settings, tmp_path, raw_file):
    service = Service(tmp_path, settings, fail_store=True)
    image_id = service.stage(raw_file)
    service.runner.submit(service.job(image_id))
    assert service.runner.wait_idle(60)
    assert service.outcomes[image_id] == ImportOutcome(ImageStatus.KILLED, message=STORE_FAILED)
    assert not service.staging.has(image_id)


def test_an_image_deleted_during_its_import_is_dropped_quietly(settings, tmp_path, raw_file, caplog):
    service = Service(tmp_path, settings, fail_store=ImageGone)
    image_id = service.stage(raw_file)
    service.runner.submit(service.job(image_id))
    assert service.runner.wait_idle(60)
    assert service.outcomes[image_id] == ImportOutcome(ImageStatus.DELETED)
    assert "Traceback" not in caplog.text and not service.staging.claimed_path(image_id).exists()


def test_caps_hold_and_every_import_finishes(settings, tmp_path, raw_file):
    slow = Slow(0.25)
    capped = settings.replace(max_concurrent_imports=3, max_imports_per_project=2)
    service = Service(tmp_path, capped, ("slow", slow))
    ids = []
    for number in range(12):
        image_id = service.stage(raw_file)
        service.runner.submit(service.job(image_id, project=f"p{number % 3}"))
        ids.append(image_id)
    assert service.runner.wait_idle(120)
    assert all(service.outcomes[i].status is ImageStatus.ACTIVE for i in ids)
    assert slow.total_peak == 3 and max(slow.peak.values()) <= 2


def test_one_busy_project_does_not_block_the_others(settings, tmp_path, raw_file):
    slow = Slow(0.5)
    service = Service(tmp_path, settings.replace(max_concurrent_imports=3, max_imports_per_project=1), ("slow", slow))
    busy = [service.stage(raw_file) for _ in range(4)]
    for image_id in busy:
        service.runner.submit(service.job(image_id, project="busy"))
    other = service.stage(raw_file)
    started = time.monotonic()
    service.runner.submit(service.job(other, project="other"))
    while other not in service.outcomes:
        time.sleep(0.02)
    assert time.monotonic() - started < 1.5  # ran beside the first busy job, not after all four
    assert service.runner.wait_idle(60) and slow.peak["busy"] == 1


def test_the_kill_switch_refuses_new_imports_and_kills_the_running_one(settings, tmp_path, raw_file):
    switch = KillSwitch()
    service = Service(tmp_path, settings, ("slow", Slow(5.0)), killswitch=switch)
    running = service.stage(raw_file)
    service.runner.submit(service.job(running))
    while service.runner.counts() != (1, 0):
        time.sleep(0.01)
    switch.halt()
    with pytest.raises(ImportHalted) as info:
        service.runner.submit(service.job(service.stage(raw_file)))
    assert info.value.status == 503
    assert service.runner.wait_idle(30)
    outcome = service.outcomes[running]
    assert outcome.status is ImageStatus.KILLED and outcome.result is not None
    assert "pipeline.halted" in [f.code for f in outcome.result.findings]


def test_a_claimed_import_is_safe_from_a_later_upload(settings, tmp_path, raw_file, backing_qcow2):
    service = Service(tmp_path, settings, ("slow", Slow(0.5)))
    image_id = service.stage(raw_file)
    job = service.job(image_id)
    assert job.request.path == service.staging.claimed_path(image_id) and not service.staging.has(image_id)
    service.runner.submit(job)
    service.staging.receive_sync(image_id, iter([backing_qcow2.read_bytes()]))  # lands beside, not under it
    assert service.runner.wait_idle(60)
    assert service.outcomes[image_id].status is ImageStatus.ACTIVE
    assert (service.store_dir / image_id).read_bytes() == raw_file.read_bytes()
    assert not service.staging.claimed_path(image_id).exists()


def test_claiming_nothing_is_a_conflict_and_unclaim_gives_data_back(settings, tmp_path, raw_file):
    service = Service(tmp_path, settings)
    with pytest.raises(StatusConflict, match="stage it first"):
        service.job(str(uuid.uuid4()))
    image_id = service.stage(raw_file)
    first = service.job(image_id)
    assert service.job(image_id).request.path == first.request.path  # claiming again: the same data
    service.staging.unclaim(image_id)
    assert service.staging.has(image_id) and not service.staging.claimed_path(image_id).exists()


def test_recover_resubmits_staged_jobs_and_kills_the_rest(settings, tmp_path, raw_file):
    service = Service(tmp_path, settings)
    staged = service.job(service.stage(raw_file))
    gone = ImportJob(str(uuid.uuid4()), ImportRequest(tmp_path / "gone"))
    decided = dict((job.image_id, outcome) for job, outcome in recover(service.runner, [staged, gone]))
    assert decided[staged.image_id] is None
    assert decided[gone.image_id] == ImportOutcome(ImageStatus.KILLED, message=INTERRUPTED)
    assert service.runner.wait_idle(60)
    assert service.outcomes[staged.image_id].status is ImageStatus.ACTIVE


def test_shutdown_lets_running_jobs_finish(settings, tmp_path, raw_file):
    service = Service(tmp_path, settings, ("slow", Slow(0.2)))
    image_id = service.stage(raw_file)
    service.runner.submit(service.job(image_id))
    service.runner.shutdown(wait=True)
    assert service.outcomes[image_id].status is ImageStatus.ACTIVE
    with pytest.raises(ImportHalted, match="shutting down"):
        service.runner.submit(service.job(service.stage(raw_file)))
    assert os.listdir(settings.work_dir) == []
