"""The Celery runner against the session's real RabbitMQ and real ``celery worker`` processes.

Each test starts its workers (``--pool=solo``, loopback broker, a queue of its own) as
subprocesses of their own session and stops them at the end; the workers' ``finish``
callback writes each outcome into an SQLite database the test reads
(tests/celery_worker_support.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from importhooks import Claims, Pipeline, Requester
from importhooks.errors import ImportHalted
from importhooks.server.celery_runner import (
    TASK_NAME,
    CeleryRunner,
    job_from_json,
    job_to_json,
    make_app,
    required_consumer_timeout_ms,
)
from importhooks.server.runner import ImportJob
from importhooks.server.staging import StagingArea

from . import celery_worker_support as support
from . import images
from .servers import RabbitMQServer

ROOT = Path(__file__).resolve().parent.parent
WAIT = 90.0  # seconds for a worker to boot or an import to end on 2 busy cores


class Workers:
    """``celery worker`` subprocesses on one queue, each in its own session; :meth:`close` leaves none behind."""

    def __init__(self, base: Path, broker: str, queue: str) -> None:
        self.base = base
        self.env = {**os.environ, support.BROKER: broker, support.QUEUE: queue, support.BASE: str(base),
                    "PYTHONPATH": str(ROOT)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        log = self.base / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tests.celery_worker_support:app",
                                     "worker", "--pool=solo", "-n", f"{name}@localhost", "--without-mingle",
                                     "--without-gossip", "--loglevel=INFO"],
                                    cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[name] = proc
        deadline = time.monotonic() + WAIT
        while b" ready." not in log.read_bytes():
            assert proc.poll() is None, f"worker {name} exited: {log.read_text(errors='replace')[-3000:]}"
            assert time.monotonic() < deadline, f"worker {name} not ready: {log.read_text(errors='replace')[-3000:]}"
            time.sleep(0.1)
        return proc

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # warm shutdown: the idle worker leaves at once
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 0)
                raise AssertionError(f"processes of worker {proc.pid} are left")


class Cluster:
    """The API side (a pipeline, the shared staging area, a :class:`CeleryRunner`) and the workers' results."""

    def __init__(self, base: Path, rabbitmq: RabbitMQServer) -> None:
        for sub in ("staging", "store", "work"):
            (base / sub).mkdir()
        self.base = base
        self.rabbitmq = rabbitmq
        self.queue = f"importhooks-test-{uuid.uuid4().hex}"
        settings = support.test_settings(base)
        self.staging = StagingArea(base / "staging", settings)
        self.app = make_app(rabbitmq.url, settings, queue=self.queue)
        self.runner = CeleryRunner(Pipeline.from_settings(settings), self.staging, self.app)
        self.workers = Workers(base, rabbitmq.url, self.queue)
        support.connect(base).close()

    def submit(self, source: Path, name: str = "image", **claims: str) -> str:
        image_id = str(uuid.uuid4())
        self.staging.receive_sync(image_id, iter([source.read_bytes()]))
        job = ImportJob.claim(self.staging, image_id, Claims(properties={"name": name}, **claims),
                              Requester("u", "p1", ("member",)))
        self.runner.submit(job)
        return image_id

    def rows(self, table: str, image_id: str) -> list[tuple[Any, ...]]:
        with contextlib.closing(support.connect(self.base)) as db:
            return db.execute(f"SELECT * FROM {table} WHERE image_id = ? ORDER BY rowid", (image_id,)).fetchall()

    def wait_rows(self, table: str, image_id: str) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + WAIT
        while not (rows := self.rows(table, image_id)):
            assert time.monotonic() < deadline, f"no {table} row for {image_id}; workers: {self.logs()}"
            time.sleep(0.1)
        return rows

    def queued(self) -> int:
        """Ready plus unacknowledged messages in the test's queue, as RabbitMQ counts them."""
        for line in self.rabbitmq.ctl("list_queues", "-q", "name", "messages").splitlines():
            fields = line.split()
            if fields and fields[0] == self.queue:
                return int(fields[1])
        raise AssertionError(f"queue {self.queue} not declared")

    def logs(self) -> str:
        return "".join(path.read_text(errors="replace")[-2000:] for path in self.base.glob("*.log"))


@pytest.fixture
def cluster(tmp_path: Path, rabbitmq: RabbitMQServer) -> Iterator[Cluster]:
    made = Cluster(tmp_path, rabbitmq)
    try:
        yield made
    finally:
        made.workers.close()


def test_two_workers_share_the_queue_and_finish_a_benign_and_a_hostile_image(cluster, tmp_path):
    cluster.workers.start("w1")
    cluster.workers.start("w2")
    benign = images.qcow2_image(tmp_path / "ok.qcow2", "64M")
    hostile = images.qcow2_with_backing_file(tmp_path / "bad.qcow2")
    # Both are slowed by 1.5 s: with prefetch 1, the second message cannot wait behind the first.
    good_id = cluster.submit(benign, "slow-1.5", disk_format="qcow2")
    bad_id = cluster.submit(hostile, "slow-1.5", disk_format="qcow2")
    [(_, status, message, codes, good_pid)] = cluster.wait_rows("outcomes", good_id)
    assert (status, message, json.loads(codes)) == ("active", None, [])
    assert (tmp_path / "store" / good_id).read_bytes() == benign.read_bytes()
    [(_, status, message, codes, bad_pid)] = cluster.wait_rows("outcomes", bad_id)
    assert status == "killed" and message and "/etc/passwd" not in message
    assert "qcow2.backing_file" in json.loads(codes)
    assert not (tmp_path / "store" / bad_id).exists()
    assert {good_pid, bad_pid} == {proc.pid for proc in cluster.workers.procs.values()}
    assert not any((tmp_path / "staging").iterdir()) and not any((tmp_path / "work").iterdir())


def test_a_worker_killed_mid_import_hands_the_job_to_the_other_which_finishes_it_once(cluster, tmp_path):
    workers = {proc.pid: proc for proc in (cluster.workers.start("w1"), cluster.workers.start("w2"))}
    source = images.raw_image(tmp_path / "disk.raw")
    image_id = cluster.submit(source, "slow-5")
    [(_, killed)] = cluster.wait_rows("starts", image_id)
    os.kill(killed, signal.SIGKILL)  # mid-import: the slow plugin holds it 5 s
    workers[killed].wait(30)
    [other] = set(workers) - {killed}
    [(_, status, _, _, finished_pid)] = cluster.wait_rows("outcomes", image_id)
    assert (status, finished_pid) == ("active", other)
    assert [pid for _, pid in cluster.rows("starts", image_id)] == [killed, other]
    time.sleep(1.0)  # a second delivery, if any, would have started by now
    assert len(cluster.rows("outcomes", image_id)) == 1 and len(cluster.rows("starts", image_id)) == 2
    assert cluster.queued() == 0
    assert (tmp_path / "store" / image_id).read_bytes() == source.read_bytes()
    assert not any((tmp_path / "staging").iterdir()) and not any((tmp_path / "work").iterdir())


def test_the_message_carries_no_path_and_a_malformed_one_is_no_job(cluster, tmp_path):
    image_id = str(uuid.uuid4())
    cluster.staging.receive_sync(image_id, iter([b"\0" * 512]))
    job = ImportJob.claim(cluster.staging, image_id, Claims(disk_format="raw", properties={"name": "x"}),
                          Requester("u", "p1", ("member",)))
    data = job_to_json(job)
    assert str(tmp_path) not in json.dumps(data)
    assert job_from_json(cluster.staging, json.loads(json.dumps(data))) == job
    for bad in ({**data, "image_id": "../../etc/passwd"}, {**data, "claims": None}, {"image_id": image_id},
                {**data, "requester": {**data["requester"], "roles": 5}}):
        assert job_from_json(cluster.staging, bad) is None


def test_the_app_asks_for_late_acks_and_a_long_enough_broker_timeout(cluster):
    conf = cluster.app.conf
    assert (conf.task_acks_late, conf.task_reject_on_worker_lost, conf.worker_prefetch_multiplier) == (True, True, 1)
    assert conf.accept_content == ["json"] and conf.task_default_queue == cluster.queue
    run_timeout = cluster.runner.pipeline.settings.run_timeout
    assert conf.broker_transport_options["visibility_timeout"] > run_timeout
    assert required_consumer_timeout_ms(cluster.runner.pipeline.settings) > run_timeout * 1000
    assert TASK_NAME == "importhooks.run_import"


def test_a_job_sent_with_the_broker_gone_is_refused_as_unavailable(tmp_path, rabbitmq):
    cluster = Cluster(tmp_path, rabbitmq)
    cluster.app.conf.broker_url = "amqp://guest:guest@127.0.0.1:1//"  # nothing listens on port 1
    cluster.app.conf.task_publish_retry_policy = {"max_retries": 0}
    with pytest.raises(ImportHalted, match="try again later"):
        cluster.submit(images.raw_image(tmp_path / "disk.raw"))
