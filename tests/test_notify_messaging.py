"""notify_messaging: the pipeline's events on a real RabbitMQ, in oslo.messaging's format, as Glance sends them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import amqp
import kombu
import pytest
from importhooks_plugins.policy import notify_messaging

from importhooks import (
    ConfigError,
    Event,
    EventType,
    ImportContext,
    ImportRequest,
    Pipeline,
    Requester,
    Settings,
    Verdict,
    hookimpl,
)
from importhooks.request import Claims
from importhooks.server.runner import ImportJob, ImportOutcome, ImportRunner
from importhooks.server.staging import StagingArea
from importhooks.server.status import ImageStatus

from . import images
from .helpers import documented_options
from .servers import RabbitMQServer, free_port


@pytest.fixture(autouse=True)
def _close_transports() -> Iterator[None]:
    yield
    notify_messaging.close()


def on_bus(settings: Settings, url: str, topic: str, **options: Any) -> Settings:
    return settings.replace(plugin={"notify_messaging": {"transport_url": url, "topics": [topic], **options}})


def drain(rabbitmq: RabbitMQServer, queue: str, expected: int | None = None,
          timeout: float = 20.0) -> list[dict[str, Any]]:
    """Take the notifications off ``queue`` (declared by oslo.messaging on its first send), oldest first.

    The runs send synchronously, so after them the queue holds them all: without
    ``expected``, read until it is empty.
    """
    assert notify_messaging.flush(timeout), "notifications still queued"
    received: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with kombu.Connection(rabbitmq.url, connect_timeout=5) as connection:
        channel = connection.default_channel
        if expected is None:
            try:  # the queue is made by oslo.messaging's first send: none yet, nothing sent
                channel.queue_declare(queue=queue, passive=True)
            except amqp.exceptions.NotFound:
                return []
        while (expected is None or len(received) < expected) and time.monotonic() < deadline:
            message = channel.basic_get(queue=queue, no_ack=True)
            if message is None:
                if expected is None:
                    break
                time.sleep(0.05)
                continue
            envelope = json.loads(message.body)
            assert envelope["oslo.version"] == "2.0"  # messagingv2: the message is a JSON string inside
            received.append(json.loads(envelope["oslo.message"]))
        assert channel.basic_get(queue=queue, no_ack=True) is None, "more notifications than expected"
    assert expected is None or len(received) == expected, received
    return received


def by_request(notes: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for note in notes:
        grouped.setdefault(note["payload"]["request_id"], []).append(note)
    return grouped


def test_benign_and_hostile_imports_send_their_events_in_order(settings, rabbitmq, tmp_path: Path) -> None:
    topic = f"test-{uuid.uuid4()}"
    pipeline = Pipeline.from_settings(on_bus(settings, rabbitmq.transport_url, topic))
    benign = ImportRequest(images.raw_image(tmp_path / "ok.raw"), Claims(disk_format="raw"),
                           Requester("alice", "project-a"))
    hostile = ImportRequest(images.qcow2_with_backing_file(tmp_path / "evil.qcow2"), Claims(disk_format="qcow2"),
                            Requester("bob\n\x1b[31mINFO forged", "project-b"))
    for request in (benign, hostile):
        pipeline.notify(Event(EventType.ACCEPTED, request.request_id))
    assert pipeline.run(benign).verdict is Verdict.ACCEPT
    result = pipeline.run(hostile)
    assert result.verdict is Verdict.REJECT and "qcow2.backing_file" in [f.code for f in result.findings]

    notes = drain(rabbitmq, f"{topic}.info")
    assert {n["publisher_id"] for n in notes} == {"image.localhost"}
    assert {n["priority"] for n in notes} == {"INFO"}
    grouped = by_request(notes)
    assert set(grouped) == {benign.request_id, hostile.request_id}
    for request, owner, user, status in ((benign, "project-a", "alice", "success"),
                                         (hostile, "project-b", "bob\\n\\x1b[31mINFO forged", "failure")):
        events = grouped[request.request_id]
        types = [n["event_type"] for n in events]
        assert types[:2] == ["image.import.accepted", "image.import.started"], types
        assert types[-1] == "image.import.finished" and set(types[2:-1]) <= {"image.import.progress"}, types
        accepted, started, finished = (events[i]["payload"] for i in (0, 1, -1))
        assert accepted["status"] == "pending" and accepted["owner"] is None  # sent before the run exists
        assert started["status"] == "processing" and started["stage"] == "pre_validate"
        assert (started["owner"], started["user_id"]) == (finished["owner"], finished["user_id"]) == (owner, user)
        assert finished["status"] == status
        stamps = [n["timestamp"] for n in events]
        assert stamps == sorted(stamps)
    finished_ok = grouped[benign.request_id][-1]["payload"]
    assert finished_ok["verdict"] == "accept" and finished_ok["codes"] == []
    finished_bad = grouped[hostile.request_id][-1]["payload"]
    assert finished_bad["verdict"] == "reject" and "qcow2.backing_file" in finished_bad["codes"]
    assert "/etc/passwd" not in json.dumps(notes)  # the image's own text never reaches the bus
    assert "\n" not in json.dumps(notes).replace("\\n", "")

    bindings = rabbitmq.ctl("list_bindings", "source_name", "destination_name", "routing_key")
    assert f"glance\t{topic}.info\t{topic}.info" in bindings  # Glance's exchange, where its listeners look


class SlowReader:
    """A plugin that reads the staged data in four chunks, 0.4 s apart: the pipeline reports progress."""

    @hookimpl
    def importhooks_inspect(self, context: ImportContext) -> None:
        if len(context.layers) == 1:
            for _chunk in context.data.stream(chunk_size=context.data.size // 4):
                time.sleep(0.4)


def test_progress_events_come_between_started_and_finished(settings, rabbitmq, tmp_path: Path) -> None:
    topic = f"test-{uuid.uuid4()}"
    pipeline = Pipeline.from_settings(on_bus(settings, rabbitmq.transport_url, topic, publisher_id="image.host-1"),
                                      extra_plugins=[("slow_reader", SlowReader())])
    request = ImportRequest(images.raw_image(tmp_path / "ok.raw", 4 << 20), Claims(disk_format="raw"),
                            Requester("carol", "project-c"))
    assert pipeline.run(request).verdict is Verdict.ACCEPT
    notes = drain(rabbitmq, f"{topic}.info")
    types = [n["event_type"] for n in notes]
    assert types[0] == "image.import.started" and types[-1] == "image.import.finished", types
    assert len(types) >= 4 and set(types[1:-1]) == {"image.import.progress"}, types
    progress = [n["payload"] for n in notes[1:-1]]
    assert [p["progress"] for p in progress] == sorted(p["progress"] for p in progress)
    assert progress[0]["progress"] == 25.0 and all(p["stage"] == "inspect" for p in progress)
    assert {p["status"] for p in progress} == {"processing"} and {p["owner"] for p in progress} == {"project-c"}
    assert {n["publisher_id"] for n in notes} == {"image.host-1"}


def test_an_unreachable_bus_neither_fails_nor_holds_up_the_import(settings, tmp_path: Path, caplog) -> None:
    closed = f"rabbit://guest:guest@127.0.0.1:{free_port()}/"  # nothing listens there
    pipeline = Pipeline.from_settings(on_bus(settings, closed, "nowhere", retry=1))
    request = ImportRequest(images.raw_image(tmp_path / "ok.raw"), Claims(disk_format="raw"))
    pipeline.notify(Event(EventType.ACCEPTED, request.request_id))  # the first event imports oslo.messaging
    started = time.monotonic()
    result = pipeline.run(request)
    assert result.verdict is Verdict.ACCEPT
    assert time.monotonic() - started < 3  # each send takes about 2 s here: the run did not wait for them
    assert notify_messaging.flush(60)
    dropped = [r for r in caplog.records if r.name.startswith("oslo_messaging") and "Could not send" in r.getMessage()]
    assert len(dropped) >= 3  # accepted, started and finished were tried, and dropped
    assert all("guest:guest" not in r.getMessage() for r in caplog.records)


def test_a_full_queue_drops_notifications_instead_of_growing(settings, tmp_path: Path, caplog) -> None:
    closed = f"rabbit://guest:guest@127.0.0.1:{free_port()}/"
    pipeline = Pipeline.from_settings(on_bus(settings, closed, "nowhere", retry=0, max_queued=1))
    for n in range(20):
        pipeline.notify(Event(EventType.ACCEPTED, f"request-{n}"))
    full = [r for r in caplog.records if "notifications wait for the bus" in r.getMessage()]
    assert full and all("request-" in r.getMessage() for r in full)
    assert notify_messaging.flush(60)


def test_the_runner_s_concurrent_imports_arrive_in_order_per_image(settings, rabbitmq, tmp_path: Path) -> None:
    """The server kit's runner: accepted from submit, the run's events from its worker threads, 8 imports at once."""
    topic = f"test-{uuid.uuid4()}"
    pipeline = Pipeline.from_settings(on_bus(settings, rabbitmq.transport_url, topic))
    staging = StagingArea(tmp_path / "staging", settings)
    stored: list[str] = []
    outcomes: dict[str, ImportOutcome] = {}
    runner = ImportRunner(pipeline, staging, store=lambda job, path: stored.append(job.image_id),
                          finish=lambda job, outcome: outcomes.__setitem__(job.image_id, outcome),
                          max_concurrent=4, max_per_project=2)
    sources = {"benign": images.raw_image(tmp_path / "ok.raw"),
               "hostile": images.qcow2_with_backing_file(tmp_path / "evil.qcow2")}
    expected: dict[str, tuple[str, str]] = {}
    try:
        for n in range(8):
            kind, project = ("benign", "hostile")[n % 2], f"project-{n % 3}"
            image_id = str(uuid.uuid4())
            staging.receive_sync(image_id, iter([sources[kind].read_bytes()]))
            # The image id as the request id: the notifications then name Glance's image.
            runner.submit(ImportJob.claim(staging, image_id, Claims(), Requester("u", project), request_id=image_id))
            expected[image_id] = ("success" if kind == "benign" else "failure", project)
        assert runner.wait_idle(120)
    finally:
        runner.shutdown()
    assert {i for i, o in outcomes.items() if o.status is ImageStatus.ACTIVE} == set(stored)
    grouped = by_request(drain(rabbitmq, f"{topic}.info"))
    assert set(grouped) == set(expected)
    for image_id, (status, project) in expected.items():
        types = [n["event_type"] for n in grouped[image_id]]
        assert types[:2] == ["image.import.accepted", "image.import.started"], types
        assert types[-1] == "image.import.finished" and set(types[2:-1]) <= {"image.import.progress"}, types
        finished = grouped[image_id][-1]["payload"]
        assert (finished["status"], finished["owner"]) == (status, project)
        assert (finished["verdict"] == "accept") == (image_id in stored)


@pytest.mark.parametrize(("option", "value", "message"), [
    ("transport_url", "http://user:s3cret@host/", "not an oslo.messaging transport URL"),
    ("transport_url", "rabbit:///", "not an oslo.messaging transport URL"),
    ("driver", "smtp", "must be one of messagingv2"),
    ("topics", [], "non-empty list"),
    ("topics", ["a b"], "letters, digits"),
    ("retry", -1, "from 0 to 100"),
    ("max_queued", 0, "from 1 to 1000000"),
    ("publisher_id", "", "letters, digits"),
])
def test_bad_options_stop_the_pipeline_from_being_built(settings, option, value, message) -> None:
    table = {"transport_url": "rabbit://guest:guest@127.0.0.1:5672/", option: value}
    with pytest.raises(ConfigError) as raised:
        Pipeline.from_settings(settings.replace(plugin={"notify_messaging": table}))
    assert message in str(raised.value) and "s3cret" not in str(raised.value)


def test_the_default_pipeline_neither_imports_oslo_messaging_nor_sends(tmp_path: Path) -> None:
    """Off unless configured; and oslo.messaging (with eventlet) costs start-up time only where it is used."""
    disk = images.raw_image(tmp_path / "ok.raw")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from importhooks import Claims, Event, EventType, ImportRequest, Pipeline, Settings\n"
        "from importhooks.settings import PluginSettings\n"
        "pipeline = Pipeline.from_settings(Settings(plugins=PluginSettings(entry_points=False)))\n"
        "pipeline.notify(Event(EventType.ACCEPTED, 'r1'))\n"
        f"result = pipeline.run(ImportRequest(Path({str(disk)!r}), Claims(disk_format='raw')))\n"
        "print(result.verdict.value, 'oslo_messaging' in sys.modules, 'eventlet' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["accept", "False", "False"], done.stderr


def test_documented_options_are_the_defaults(settings) -> None:
    documented = documented_options("notifications.rst", "notify_messaging")
    pipeline = Pipeline.from_settings(settings.replace(plugin=documented["plugin"]))
    defaults = {o.name: o.default for o in notify_messaging.OPTIONS.options}
    assert pipeline.options["notify_messaging"] == defaults
    assert set(documented["plugin"]["notify_messaging"]) == set(defaults)


def test_notifications_resume_after_a_broker_restart(settings, rabbitmq, tmp_path: Path, caplog) -> None:
    """The shared transport outlives a broker restart: dropped while it is down, sent again once it is back."""
    topic = f"test-{uuid.uuid4()}"
    pipeline = Pipeline.from_settings(on_bus(settings, rabbitmq.transport_url, topic, retry=0))
    disk = images.raw_image(tmp_path / "ok.raw")
    before = ImportRequest(disk, Claims(disk_format="raw"))
    assert pipeline.run(before).verdict is Verdict.ACCEPT
    rabbitmq.stop()
    try:
        during = ImportRequest(disk, Claims(disk_format="raw"))
        assert pipeline.run(during).verdict is Verdict.ACCEPT  # the bus is down; the import is not affected
    finally:
        rabbitmq.start()
    after = ImportRequest(disk, Claims(disk_format="raw"))
    deadline = time.monotonic() + 60
    assert pipeline.run(after).verdict is Verdict.ACCEPT
    sent = {n["payload"]["request_id"] for n in drain(rabbitmq, f"{topic}.info")}
    while after.request_id not in sent and time.monotonic() < deadline:  # the driver may still be reconnecting
        pipeline.notify(Event(EventType.ACCEPTED, after.request_id))
        sent |= {n["payload"]["request_id"] for n in drain(rabbitmq, f"{topic}.info")}
    assert after.request_id in sent and during.request_id not in sent
    assert any("Could not send" in r.getMessage() for r in caplog.records if r.name.startswith("oslo_messaging"))
