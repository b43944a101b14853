"""The import pipeline: runs the stages over one request and fails closed.

A :class:`Pipeline` is built once from settings (it loads the plugins and checks
their options) and runs any number of requests, from any number of threads. Each
run works in a worker thread while the calling thread watches the stage deadlines:
a stage past its budget, a halt, or a plugin that raises ends the run with
``reject`` and a ``pipeline.*`` finding, and the run's temporary directory is
always removed.
"""

from __future__ import annotations

import contextvars
import errno
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from . import codes
from .context import ImportContext
from .data import ImageData, describe_os_error, pin_mmap_threshold, release_free_memory
from .errors import ConfigError, Halted, RunAborted, StageTimeout
from .events import Event, EventType
from .findings import Finding, FindingCode, FindingSink, Severity, Verdict, verdict_of
from .killswitch import KillSwitch
from .plugins import FAILURE_RECORDER, PluginRegistry, _record_failure, build_registry
from .request import ImportRequest
from .result import ImportResult
from .settings import PluginOptions, Settings

log = logging.getLogger("importhooks.pipeline")

_PROGRESS_INTERVAL = 1.0
#: Write errors that mean the work directory is full: ``pipeline.no_space``, not a plugin failure.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})

#: The resolved ``[plugin.SECTION]`` options of the pipeline whose :meth:`Pipeline.notify` is sending an
#: event: a notifier reads its options here when the event comes without a run context (``accepted``).
NOTIFY_OPTIONS: contextvars.ContextVar[Mapping[str, Mapping[str, Any]] | None] = contextvars.ContextVar(
    "importhooks_notify_options", default=None)


class RunControl:
    """Deadlines, halt and cancellation of one run, checked by every data read."""

    def __init__(self, settings: Settings, killswitch: KillSwitch, on_progress: Callable[[int, int], None], *,
                 checksums: bool = True) -> None:
        self._settings = settings
        self._killswitch = killswitch
        self._on_progress = on_progress
        self._checksums = checksums  # hash on each layer's first pass: the checksums plugin will ask
        self._run_deadline = time.monotonic() + settings.run_timeout
        self.stage_deadline = self._run_deadline
        self.cancelled: type[RunAborted] | None = None
        self._next_halt_check = 0.0

    def start_stage(self, stage: str) -> None:
        self.check_halt(force=True)
        self.stage_deadline = min(self._run_deadline, time.monotonic() + self._settings.timeouts.of(stage))

    def check_halt(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now >= self._next_halt_check:
            self._next_halt_check = now + 0.25
            if self._killswitch.is_halted():
                raise Halted("the kill switch is set")

    def time_left(self) -> float:
        return max(0.0, self.stage_deadline - time.monotonic())

    def check(self) -> None:
        if self.cancelled is not None:
            raise self.cancelled("the run was stopped")
        if time.monotonic() > self.stage_deadline:
            raise StageTimeout("the stage ran past its time budget")
        self.check_halt()

    def new_layer(self, path: Path, *, kind: str, parent: ImageData | None) -> ImageData:
        return ImageData(
            path,
            kind=kind,
            check=self.check,
            max_read_passes=self._settings.max_read_passes,
            hash_algo=self._settings.hashing_algorithm,
            on_progress=self._on_progress,
            parent=parent,
            hash_on_stream=self._checksums,
        )


class Pipeline:
    """Runs import requests through the plugins of a :class:`PluginRegistry`.

    Build it once (plugins are loaded and their options checked here, so a bad
    configuration fails at start-up) and call :meth:`run` from any thread.
    """

    def __init__(self, settings: Settings, registry: PluginRegistry, killswitch: KillSwitch | None = None) -> None:
        #: The settings every run uses.
        self.settings = settings
        #: The loaded plugins and where they came from.
        self.registry = registry
        #: Halts runs; a server checks it before accepting stage and import calls too.
        self.killswitch = killswitch or KillSwitch.from_settings(settings)
        #: Every declared finding code, by code.
        self.catalog = _build_catalog(registry)
        #: Names of the enabled plugins.
        self.enabled_plugins = frozenset(name for name, info in registry.infos.items() if info.enabled)
        #: Resolved ``[plugin.SECTION]`` options, by section.
        self.options = _resolve_options(settings, registry)
        pin_mmap_threshold()  # once per process: large read buffers never stay in malloc's arenas
        work_dir = settings.work_dir
        if work_dir is not None and not (work_dir.is_dir() and os.access(work_dir, os.W_OK | os.X_OK)):
            raise ConfigError("work_dir", f"not a writable directory: {work_dir}")

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, extra_plugins: Iterable[tuple[str, object]] = (),
                      killswitch: KillSwitch | None = None) -> Pipeline:
        """Build a pipeline with the built-in, entry-point and configured plugins."""
        settings = settings or Settings()
        return cls(settings, build_registry(settings, extra_plugins), killswitch)

    def notify(self, event: Event, context: ImportContext | None = None) -> None:
        """Send an event to every ``importhooks_notify`` implementation (e.g. ``accepted`` from a server)."""
        token = NOTIFY_OPTIONS.set(self.options)
        try:
            self.registry.hook.importhooks_notify(event=event, context=context)
        finally:
            NOTIFY_OPTIONS.reset(token)

    def run(self, request: ImportRequest, *, store: Callable[[Path], None] | None = None) -> ImportResult:
        """Run every stage over ``request`` and return the result. Never raises for bad data.

        ``store``, if given, is called once with the path of the data that would be
        stored, only when the verdict is ``accept``, before the run's temporary
        directory is removed: the staged file itself, or the file the last
        ``sanitize`` pass produced. It may move (``os.replace``) or copy that file
        into the image store; what it raises reaches the caller.
        """
        started = time.monotonic()
        workdir = _LazyDir(self.settings.work_dir)
        try:
            run = _Run(self, request, workdir)
            run.start()
            result = run.wait(started)
            if store is not None and result.verdict is Verdict.ACCEPT:
                store(run.context.data.path)
            return result
        finally:
            workdir.remove()
            release_free_memory()


class _LazyDir:
    """A run's private temporary directory, made on first use: most runs never need one."""

    def __init__(self, parent: Path | None) -> None:
        self._parent = parent
        self._path: Path | None = None
        self._closed = False
        self._lock = threading.Lock()

    def __call__(self) -> Path:
        with self._lock:
            if self._closed:  # a worker abandoned after a timeout must not make a new one
                raise RuntimeError("the run is over; its temporary directory is gone")
            if self._path is None:
                self._path = Path(tempfile.mkdtemp(prefix="importhooks-", dir=self._parent))
            return self._path

    def remove(self) -> None:
        with self._lock:
            self._closed = True
            if self._path is not None:
                shutil.rmtree(self._path, ignore_errors=True)


class _Run:
    """One run: a worker thread executing the stages, watched by the caller's thread."""

    def __init__(self, pipeline: Pipeline, request: ImportRequest, workdir: Callable[[], Path]) -> None:
        self.pipeline = pipeline
        self.sink = FindingSink()
        self.done = threading.Event()
        self.stage = "pre_validate"
        self.completed = False
        self._last_progress = 0.0
        self.control = RunControl(pipeline.settings, pipeline.killswitch, self._progress,
                                  checksums="checksums" in pipeline.enabled_plugins)
        data = self.control.new_layer(Path(request.path), kind="staged", parent=None)
        self.context = ImportContext(request, pipeline.settings, sink=self.sink, catalog=pipeline.catalog,
                                     options=pipeline.options, control=self.control, workdir=workdir, data=data,
                                     enabled_plugins=pipeline.enabled_plugins)

    def framework_finding(self, code: FindingCode, detail: str | None = None, plugin: str = "importhooks") -> None:
        self.sink.add(Finding(code.code, code.severity, self.stage, plugin, code.summary, detail))

    def _record_plugin_failure(self, plugin: str, exc: BaseException) -> None:
        """Record why the run stops, once, at the first guard the exception passes."""
        if isinstance(exc, RunAborted):
            code = codes.BY_NAME.get(exc.code)
            if code is not None and self.control.cancelled is None:  # the watcher recorded a cancel already
                self.framework_finding(code, exc.detail or None)
            return  # Rejected: the plugin reported its finding itself
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            self.framework_finding(codes.NO_SPACE, f"{describe_os_error(exc)} in {self.stage}", plugin=plugin)
            return
        detail = describe_exception(exc)
        log.error("plugin %r failed in %s of request %s: %s", plugin, self.stage, self.context.request_id, detail)
        self.framework_finding(codes.PLUGIN_FAILED, detail, plugin=plugin)

    def _progress(self, seen: int, total: int) -> None:
        now = time.monotonic()
        if total and now - self._last_progress >= _PROGRESS_INTERVAL:
            self._last_progress = now
            self._emit(Event(EventType.PROGRESS, self.context.request_id, self.stage, round(100 * seen / total, 1)))

    def _emit(self, event: Event) -> None:
        self.pipeline.registry.hook.importhooks_notify(event=event, context=self.context)

    def start(self) -> None:
        thread = threading.Thread(target=self._work, name=f"importhooks-{self.context.request_id}", daemon=True)
        thread.start()

    def _work(self) -> None:
        FAILURE_RECORDER.set(self._record_plugin_failure)
        try:
            self._stages()
        except BaseException as exc:  # noqa: BLE001 - fail closed: guards recorded plugin failures, this the rest
            _record_failure("importhooks", exc)
            if not self.sink.has_errors():  # fail closed whatever happened
                self.framework_finding(codes.PLUGIN_FAILED, f"{type(exc).__name__} with no finding")
        finally:
            self.done.set()

    def _call(self, stage: str) -> Any:
        self.stage = self.context.stage = stage
        self.control.start_stage(stage)
        result = getattr(self.pipeline.registry.hook, f"importhooks_{stage}")(context=self.context)
        self.control.check()
        return result

    def _stages(self) -> None:
        self._emit(Event(EventType.STARTED, self.context.request_id, "pre_validate"))
        self._call("pre_validate")
        if self.sink.has_errors():
            return
        for _pass in range(self.pipeline.settings.max_sanitize_passes + 1):
            self._call("inspect")
            if self.sink.has_errors():
                return
            self._call("sanitize")
            if self.sink.has_errors():
                return
            replacement = self.context._take_replacement()
            if replacement is None:
                break
            self.context.layers.append(replacement)
        else:
            self.framework_finding(codes.TOO_MANY_PASSES, f"{self.pipeline.settings.max_sanitize_passes} passes")
            return
        for returned in self._call("set_protected_properties"):
            self._merge_properties(returned)
        if self.sink.has_errors():
            return
        self._call("finalize")
        for layer in self.context.layers:  # what was checked is still what the paths name
            layer.verify()
        self.completed = not self.sink.has_errors()

    def _merge_properties(self, returned: Any) -> None:
        if not returned:
            return
        for key, value in dict(returned).items():
            if not isinstance(key, str) or not isinstance(value, str):
                self.framework_finding(codes.BAD_PROPERTY, f"{key!r}={value!r}")
            elif self.context.properties.setdefault(key, value) != value:
                earlier = self.context.properties[key]
                self.framework_finding(codes.PROPERTY_CONFLICT, f"{key!r}: {earlier!r} vs {value!r}")

    def wait(self, started: float) -> ImportResult:
        control = self.control
        while not self.done.wait(timeout=max(0.0, min(control.stage_deadline - time.monotonic(), 0.5))):
            try:
                control.check_halt()
                if time.monotonic() > control.stage_deadline:
                    raise StageTimeout(f"{self.stage} ran past its time budget")
            except (StageTimeout, Halted) as exc:
                control.cancelled = type(exc)
                code = codes.TIMEOUT if isinstance(exc, StageTimeout) else codes.HALTED
                self.framework_finding(code, f"stage {self.stage}")
                break
        if not self.completed and not self.sink.has_errors():
            self.framework_finding(codes.INCOMPLETE, f"stopped in {self.stage}")
        verdict = verdict_of(self.sink.snapshot())
        verdict = self._finish(verdict)
        findings = self.sink.snapshot()
        return ImportResult.from_context(self.context, verdict, findings, time.monotonic() - started)

    def _finish(self, verdict: Verdict) -> Verdict:
        """Send ``finished``; a notifier failing here still turns the verdict to reject."""
        codes_seen = tuple(f.code for f in self.sink.snapshot() if f.severity is not Severity.INFO)
        token = FAILURE_RECORDER.set(self._record_plugin_failure)
        try:
            self._emit(Event(EventType.FINISHED, self.context.request_id, self.stage, verdict=verdict,
                             codes=codes_seen))
        except BaseException as exc:  # noqa: BLE001 - a failing notifier rejects, it never crashes the caller
            _record_failure("importhooks", exc)
            return Verdict.REJECT
        finally:
            FAILURE_RECORDER.reset(token)
        return Verdict.REJECT if verdict is Verdict.REJECT else verdict_of(self.sink.snapshot())


def describe_exception(exc: BaseException) -> str:
    """``RuntimeError: boom`` for an operator: the type once, the message on one line, at most 500 characters."""
    text = " ".join(str(exc).split())
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:500]


def _build_catalog(registry: PluginRegistry) -> dict[str, FindingCode]:
    catalog = {code.code: code for code in codes.FRAMEWORK_CODES}
    for declared in registry.hook.importhooks_finding_codes():
        for code in declared or ():
            if not isinstance(code, FindingCode):
                raise ConfigError("plugins", f"importhooks_finding_codes returned {code!r}, not a FindingCode")
            if code.code in catalog and catalog[code.code] != code:
                raise ConfigError("plugins", f"finding code {code.code!r} is declared twice, differently")
            catalog[code.code] = code
    return catalog


def _resolve_options(settings: Settings, registry: PluginRegistry) -> dict[str, dict[str, Any]]:
    declared: dict[str, PluginOptions] = {}
    for spec in registry.hook.importhooks_plugin_options():
        if spec is not None:
            declared[spec.section] = spec
    # A disabled plugin's table stays valid config: disabling is one edit.
    unknown = sorted(set(settings.plugin) - set(declared) - set(settings.plugins.disabled))
    if unknown:
        raise ConfigError(f"plugin.{unknown[0]}", f"no loaded plugin declares this section "
                                                  f"(declared: {', '.join(sorted(declared)) or 'none'})")
    known = set(registry.infos)
    for name in settings.plugins.order:
        if name not in known:
            raise ConfigError("plugins.order", f"no plugin named {name!r}")
    for name in settings.plugins.disabled:
        if name not in known:
            raise ConfigError("plugins.disabled", f"no plugin named {name!r}")
    return {section: spec.resolve(settings.plugin.get(section, {})) for section, spec in declared.items()}
