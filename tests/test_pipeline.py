"""The pipeline's contract: stage order, hook ordering, and failing closed."""

from __future__ import annotations

import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from importhooks import (
    Claims,
    EventType,
    FindingCode,
    ImportContext,
    ImportRequest,
    KillSwitch,
    Pipeline,
    Settings,
    Severity,
    Verdict,
    hookimpl,
)
from importhooks.settings import PluginSettings, StageTimeouts

from .helpers import codes
from .plugin_kit import STAGES, EventLog, InspectOrder, Raiser, Recorder, Sleeper, Swallower

WARNED = FindingCode("kit.warned", "Just a warning.", "Test.", Severity.WARNING)
GATE = FindingCode("kit.gate", "Closed.", "Test.")


class Declares:
    @hookimpl
    def importhooks_finding_codes(self) -> list[FindingCode]:
        return [WARNED, GATE]


def run(settings: Settings, path: Path, *plugins: tuple[str, object], claims: Claims | None = None,
        killswitch: KillSwitch | None = None):
    pipeline = Pipeline.from_settings(settings, extra_plugins=plugins, killswitch=killswitch)
    return pipeline.run(ImportRequest(path=path, claims=claims or Claims()))


def test_stages_run_in_order_and_events_bracket_them(settings, raw_file, workdir):
    log: list[tuple[str, str]] = []
    events = EventLog()
    result = run(settings, raw_file, ("rec", Recorder("rec", log)), ("events", events))
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert [stage for _, stage in log] == list(STAGES)
    types = [e.type for e in events.events]
    assert types[0] is EventType.STARTED and types[-1] is EventType.FINISHED
    assert events.events[-1].verdict is Verdict.ACCEPT
    assert result.checksums is not None and len(result.checksums.hash_value) == 128
    assert list(workdir.iterdir()) == []


def test_tryfirst_trylast_and_registration_order(settings, raw_file):
    log: list[str] = []
    plugins = [
        ("late_a", InspectOrder("late_a", log, trylast=True)),
        ("plain_a", InspectOrder("plain_a", log)),
        ("late_b", InspectOrder("late_b", log, trylast=True)),
        ("plain_b", InspectOrder("plain_b", log)),
        ("early_a", InspectOrder("early_a", log, tryfirst=True)),
        ("early_b", InspectOrder("early_b", log, tryfirst=True)),
    ]
    run(settings, raw_file, *plugins)
    # Within each group the same documented order: here, the order the plugins were given.
    assert log == ["early_a", "early_b", "plain_a", "plain_b", "late_a", "late_b"]


def test_plugins_order_setting_puts_named_plugins_first(settings, raw_file):
    log: list[str] = []
    plugins = [("plain_a", InspectOrder("plain_a", log)), ("plain_b", InspectOrder("plain_b", log))]
    run(settings.replace(plugins=PluginSettings(entry_points=False, order=("plain_b",))), raw_file, *plugins)
    assert log == ["plain_b", "plain_a"]


def test_builtins_run_before_site_plugins_by_default(settings, raw_file):
    seen: dict[str, Any] = {}

    class Reader:
        @hookimpl
        def importhooks_inspect(self, context: ImportContext) -> None:
            seen.update(context.facts)

    run(settings, raw_file, ("reader", Reader()))
    assert seen["disk_format"] == "raw"


def test_wrapper_sees_the_call_and_its_outcome(settings, raw_file):
    calls: list[str] = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def importhooks_set_protected_properties(self, context: ImportContext) -> Generator[None, Any, Any]:
            calls.append("before")
            result = yield
            calls.append(f"after:{len(result)}")
            return result

    class Props:
        @hookimpl
        def importhooks_set_protected_properties(self, context: ImportContext) -> dict[str, str]:
            return {"os_type": "linux"}

    result = run(settings, raw_file, ("props", Props()), ("wrapper", Wrapper()))
    assert calls == ["before", "after:2"]  # Props and the built-in os_type plugin
    assert result.properties["os_type"] == "linux"


def test_raising_plugin_rejects_with_plugin_failed_and_no_traceback(settings, raw_file, workdir):
    result = run(settings, raw_file, ("bad", Raiser("inspect")))
    assert result.verdict is Verdict.REJECT
    failed = [f for f in result.findings if f.code == "pipeline.plugin_failed"]
    assert len(failed) == 1 and failed[0].plugin == "bad" and failed[0].stage == "inspect"
    assert "/secret" not in failed[0].message and "Traceback" not in failed[0].message
    assert "RuntimeError" in (failed[0].detail or "")
    assert result.user_message == failed[0].message
    assert list(workdir.iterdir()) == []


def test_site_wrapper_cannot_swallow_a_builtins_failure(settings, tmp_path):
    # A directory as the data: the first built-in inspector fails to read it.
    swallower = Swallower()
    result = run(settings, tmp_path, ("swallow", swallower))
    assert swallower.swallowed, "the wrapper did see (and swallow) the failure"
    assert result.verdict is Verdict.REJECT
    assert [(f.code, f.plugin) for f in result.findings] == [("pipeline.plugin_failed", "content_type")]
    assert isinstance(swallower.swallowed[0], IsADirectoryError)


def test_site_wrapper_cannot_drop_a_builtins_finding(settings, backing_qcow2):
    class Eraser:
        @hookimpl(trylast=True)
        def importhooks_inspect(self, context: ImportContext) -> None:
            context.facts.clear()  # facts are the plugin's to share; findings are not reachable

    result = run(settings, backing_qcow2, ("swallow", Swallower()), ("eraser", Eraser()),
                 claims=Claims(disk_format="qcow2"))
    assert result.verdict is Verdict.REJECT
    assert [(f.code, f.plugin) for f in result.findings] == [("qcow2.backing_file", "disk_format")]


def test_findings_are_attributed_to_the_reporting_plugin(settings, raw_file):
    class Warner(Declares):
        @hookimpl
        def importhooks_pre_validate(self, context: ImportContext) -> None:
            context.report(WARNED, detail="x")

    result = run(settings, raw_file, ("warner", Warner()))
    assert result.verdict is Verdict.ACCEPT
    assert [(f.code, f.plugin, f.stage, f.severity) for f in result.findings] == [
        ("kit.warned", "warner", "pre_validate", Severity.WARNING)]


def test_undeclared_code_is_a_plugin_failure(settings, raw_file):
    class Sloppy:
        @hookimpl
        def importhooks_inspect(self, context: ImportContext) -> None:
            context.report("kit.undeclared", "Oops.")

    result = run(settings, raw_file, ("sloppy", Sloppy()))
    assert [(f.code, f.plugin) for f in result.findings] == [("pipeline.plugin_failed", "sloppy")]
    assert "kit.undeclared" in (result.findings[0].detail or "")


def test_stage_timeout_rejects_promptly_and_cleans_up(settings, raw_file, workdir):
    settings = settings.replace(timeouts=StageTimeouts(inspect=0.3))
    started = time.monotonic()
    result = run(settings, raw_file, ("slow", Sleeper("inspect", 5)))
    assert time.monotonic() - started < 3
    assert result.verdict is Verdict.REJECT
    assert codes(result) == ["pipeline.timeout"]
    assert list(workdir.iterdir()) == []


def test_a_plugin_reading_past_the_deadline_is_stopped_at_its_next_read(settings, raw_file):
    class SlowReader:
        @hookimpl
        def importhooks_inspect(self, context: ImportContext) -> None:
            for _chunk in context.data.stream(chunk_size=1024):
                time.sleep(0.01)

    settings = settings.replace(timeouts=StageTimeouts(inspect=0.2))
    result = run(settings, raw_file, ("slow", SlowReader()))
    assert codes(result) == ["pipeline.timeout"]


def test_halt_before_the_run(settings, raw_file):
    result = run(settings, raw_file, killswitch=KillSwitch(halted=True))
    assert result.verdict is Verdict.REJECT
    assert codes(result) == ["pipeline.halted"]
    assert result.findings[0].stage == "pre_validate"


def test_halt_file_set_while_running_stops_at_the_next_boundary(settings, raw_file, tmp_path, workdir):
    halt_file = tmp_path / "HALT"

    class Operator:
        @hookimpl
        def importhooks_inspect(self, context: ImportContext) -> None:
            halt_file.touch()

    log: list[tuple[str, str]] = []
    settings = settings.replace(halt_file=halt_file)
    result = run(settings, raw_file, ("operator", Operator()), ("rec", Recorder("rec", log)))
    assert codes(result) == ["pipeline.halted"]
    assert ("rec", "finalize") not in log
    assert list(workdir.iterdir()) == []


def test_halt_during_a_long_stage_is_noticed_by_the_watcher(settings, raw_file):
    switch = KillSwitch()

    class Sleepy:
        @hookimpl
        def importhooks_inspect(self, context: ImportContext) -> None:
            switch.halt()
            time.sleep(5)

    started = time.monotonic()
    result = run(settings, raw_file, ("sleepy", Sleepy()), killswitch=switch)
    assert time.monotonic() - started < 3
    assert codes(result) == ["pipeline.halted"]


def test_disabled_plugin_does_not_run(settings, raw_file):
    claims = Claims(disk_format="iso-but-not-allowed")
    assert "claims.disk_format_not_allowed" in codes(run(settings, raw_file, claims=claims))
    disabled = settings.replace(plugins=PluginSettings(entry_points=False, disabled=("claims",)))
    result = run(disabled, raw_file, claims=claims)
    assert "claims.disk_format_not_allowed" not in codes(result)
    log: list[tuple[str, str]] = []
    off = settings.replace(plugins=PluginSettings(entry_points=False, disabled=("rec",)))
    run(off, raw_file, ("rec", Recorder("rec", log)))
    assert log == []


def test_sanitize_replacement_is_inspected_again_and_cleaned_up(settings, raw_file, workdir):
    seen_layers: list[str] = []
    made: list[Path] = []

    class Unwrap:
        @hookimpl
        def importhooks_inspect(self, context: ImportContext) -> None:
            seen_layers.append(context.data.kind)

        @hookimpl
        def importhooks_sanitize(self, context: ImportContext) -> None:
            if context.data.kind == "staged":
                out = context.temp_path(".raw")
                with context.data.open() as src:
                    out.write_bytes(src.read()[: 4096])
                made.append(out)
                context.replace_data(out, kind="unwrapped")

    result = run(settings, raw_file, ("unwrap", Unwrap()))
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert seen_layers == ["staged", "unwrapped"]
    assert [layer.kind for layer in result.layers] == ["staged", "unwrapped"]
    assert result.detected["virtual_size"] == 4096 and result.checksums and result.checksums.size == 4096
    assert made and not made[0].exists() and list(workdir.iterdir()) == []


def test_endless_sanitize_is_cut_off(settings, raw_file):
    class Nest:
        @hookimpl
        def importhooks_sanitize(self, context: ImportContext) -> None:
            out = context.temp_path()
            out.write_bytes(b"x" * 512)
            context.replace_data(out, kind="again")

    result = run(settings.replace(max_sanitize_passes=2), raw_file, ("nest", Nest()))
    assert codes(result) == ["pipeline.too_many_passes"]


def test_conflicting_protected_properties_reject(settings, raw_file):
    def props(value: str) -> object:
        class P:
            @hookimpl
            def importhooks_set_protected_properties(self, context: ImportContext) -> dict[str, str]:
                return {"os_type": value}
        return P()

    result = run(settings, raw_file, ("a", props("linux")), ("b", props("windows")))
    assert codes(result) == ["pipeline.property_conflict"]


def test_read_budget_stops_a_looping_reader(settings, raw_file):
    class Looper:
        @hookimpl
        def importhooks_inspect(self, context: ImportContext) -> None:
            with context.data.open() as f:
                while True:
                    f.seek(0)
                    f.read(65536)

    result = run(settings, raw_file, ("looper", Looper()))
    assert codes(result) == ["data.read_budget"]


def test_failing_notifier_rejects(settings, raw_file):
    result = run(settings, raw_file, ("n", _FailOnFinished()))
    assert result.verdict is Verdict.REJECT
    assert [(f.code, f.plugin) for f in result.findings] == [("pipeline.plugin_failed", "n")]


class _FailOnFinished:
    @hookimpl
    def importhooks_notify(self, event, context) -> None:
        if event.type is EventType.FINISHED:
            raise OSError("log sink down")


def test_reject_stops_the_stage_at_once(settings, raw_file):
    log: list[tuple[str, str]] = []

    class Gate(Declares):
        @hookimpl(tryfirst=True)
        def importhooks_pre_validate(self, context: ImportContext) -> None:
            context.reject(GATE, "Not today.")

    result = run(settings, raw_file, ("gate", Gate()), ("rec", Recorder("rec", log)))
    assert codes(result) == ["kit.gate"] and log == []


@pytest.mark.parametrize("stage", ["pre_validate", "sanitize", "set_protected_properties", "finalize"])
def test_a_failure_in_any_stage_rejects(settings, raw_file, workdir, stage):
    result = run(settings, raw_file, ("bad", Raiser(stage)))
    assert result.verdict is Verdict.REJECT
    assert [f.stage for f in result.findings if f.code == "pipeline.plugin_failed"] == [stage]
    assert list(workdir.iterdir()) == []


def test_progress_events_during_long_reads(settings, tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(b"\0" * 24 * 4096)

    class Slow:
        @hookimpl
        def importhooks_inspect(self, context: ImportContext) -> None:
            for _chunk in context.data.stream(chunk_size=4096):
                time.sleep(0.05)

    events = EventLog()
    result = run(settings, path, ("slow", Slow()), ("events", events))
    assert result.verdict is Verdict.ACCEPT
    progress = [e for e in events.events if e.type is EventType.PROGRESS]
    assert len(progress) >= 2
    assert all(e.stage == "inspect" and e.percent is not None and 0 < e.percent <= 100 for e in progress)
    slow_pass = [e.percent for e in progress if e.percent is not None and e.percent < 100]
    assert slow_pass and slow_pass == sorted(slow_pass)


def test_store_receives_the_sanitized_data_only_on_accept(settings, raw_file, workdir, tmp_path):
    class Shrink:
        @hookimpl
        def importhooks_sanitize(self, context: ImportContext) -> None:
            if context.data.parent is None:
                out = context.temp_path(".raw")
                out.write_bytes(b"\1" * 4096)
                context.replace_data(out, kind="shrunk")

    stored = tmp_path / "store" / "image"
    stored.parent.mkdir()

    def store(path: Path) -> None:
        path.replace(stored)

    result = Pipeline.from_settings(settings, extra_plugins=[("shrink", Shrink())]).run(
        ImportRequest(path=raw_file), store=store)
    assert result.verdict is Verdict.ACCEPT
    assert stored.read_bytes() == b"\1" * 4096 and raw_file.exists()
    assert list(workdir.iterdir()) == []
    calls: list[Path] = []
    rejected = Pipeline.from_settings(settings, extra_plugins=[("bad", Raiser("finalize"))]).run(
        ImportRequest(path=raw_file), store=calls.append)
    assert rejected.verdict is Verdict.REJECT and calls == []


def test_missing_staged_file_raises_and_leaves_no_temp_dir(settings, tmp_path, workdir):
    with pytest.raises(FileNotFoundError):
        Pipeline.from_settings(settings).run(ImportRequest(path=tmp_path / "gone"))
    assert list(workdir.iterdir()) == []


def test_abandoned_worker_cannot_create_temp_files_after_the_run(settings, raw_file, workdir):
    late: list[BaseException] = []

    class Straggler:
        @hookimpl
        def importhooks_sanitize(self, context: ImportContext) -> None:
            time.sleep(0.6)
            try:
                context.temp_path(".raw")
            except BaseException as exc:
                late.append(exc)
                raise

    settings = settings.replace(timeouts=StageTimeouts(sanitize=0.2))
    result = run(settings, raw_file, ("straggler", Straggler()))
    assert codes(result) == ["pipeline.timeout"]
    time.sleep(0.8)
    assert late and list(workdir.iterdir()) == []
