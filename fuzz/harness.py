"""Drive the real pipeline with fuzzed bytes and check the invariants of every run.

A :class:`PipelineHarness` builds one :class:`~importhooks.Pipeline` (only the plugins a
target needs, so executions stay fast) with its own work directory in a per-process
temporary directory, writes each input to a file there and runs it. Whatever the bytes:

* the run ends in ``accept`` or ``reject``; a reject has an error finding;
* every finding has a code the pipeline's catalog declares, and a user message with no
  host path in it;
* no plugin raised (``pipeline.plugin_failed``), hung (``pipeline.timeout``), stopped short
  (``pipeline.incomplete``) or read past its budget (``data.read_budget``, or a layer whose
  ``bytes_read`` is past ``max_read_passes`` times its size plus the data layer's slack);
* nothing is left in the work directory.

A broken invariant raises :class:`FuzzFailure`, which atheris reports as a crash.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from importhooks import Claims, ImportContext, ImportRequest, ImportResult, Pipeline, Settings, Verdict, hookimpl
from importhooks.events import Event, EventType
from importhooks.findings import Severity
from importhooks.plugins import DEFAULT_PLUGINS
from importhooks.settings import DISK_FORMATS, PluginSettings, StageTimeouts

#: Stage budget of a fuzzed run, in seconds: far above what a few KiB need, well below libFuzzer's -timeout.
STAGE_BUDGET = 10.0
#: What ImageData adds to ``max_read_passes`` times a layer's size (headers re-read at the edges).
READ_SLACK = 1 << 20
#: Framework codes that mean a bug, whatever the data: a plugin raised, hung, stopped short or looped.
BUG_CODES = frozenset({"pipeline.plugin_failed", "pipeline.timeout", "pipeline.incomplete",
                       "pipeline.bad_property", "pipeline.property_conflict", "data.read_budget"})
BUILTIN_NAMES = tuple(module.rsplit(".", 1)[1] for module in DEFAULT_PLUGINS)


class FuzzFailure(AssertionError):
    """An invariant of a fuzzed run does not hold: a bug to minimize, fix and keep as a regression test."""


class _Observer:
    """A notifier that records, when a run finishes, how much was read from each data layer."""

    def __init__(self) -> None:
        self.layers: list[tuple[str, int, int]] = []

    @hookimpl
    def importhooks_notify(self, event: Event, context: ImportContext | None) -> None:
        if event.type is EventType.FINISHED and context is not None:
            self.layers = [(layer.kind, layer.size, layer.bytes_read) for layer in context.layers]


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class PipelineHarness:
    """One pipeline with ``plugins`` enabled (built-in names), run over each input with ``claims``."""

    def __init__(self, plugins: Iterable[str], claims: Claims | None = None, *,
                 options: Mapping[str, Mapping[str, Any]] | None = None, suffix: str = ".img") -> None:
        wanted = tuple(plugins)
        unknown = set(wanted) - set(BUILTIN_NAMES)
        if unknown:
            raise ValueError(f"no built-in plugins named {sorted(unknown)}")
        self.root = Path(tempfile.mkdtemp(prefix="importhooks-fuzz-"))
        weakref.finalize(self, _remove, self.root)
        self.work_dir = self.root / "work"
        self.work_dir.mkdir()
        self.input = self.root / f"input{suffix}"
        self.claims = claims or Claims()
        budget = StageTimeouts(pre_validate=STAGE_BUDGET, inspect=STAGE_BUDGET, sanitize=STAGE_BUDGET,
                               set_protected_properties=STAGE_BUDGET, finalize=STAGE_BUDGET)
        self.settings = Settings(
            work_dir=self.work_dir, disk_formats=DISK_FORMATS, timeouts=budget, run_timeout=6 * STAGE_BUDGET,
            plugins=PluginSettings(entry_points=False,
                                   disabled=tuple(name for name in BUILTIN_NAMES if name not in wanted)),
            plugin=dict(options or {}),
        )
        self._observer = _Observer()
        self.pipeline = Pipeline.from_settings(self.settings, extra_plugins=[("fuzz_observer", self._observer)])

    def __call__(self, data: bytes) -> ImportResult:
        """Run ``data`` through the pipeline; :class:`FuzzFailure` if an invariant breaks."""
        self.input.write_bytes(data)
        self._observer.layers = []
        result = self.pipeline.run(ImportRequest(self.input, claims=self.claims, request_id="fuzz"))
        self.check(result)
        return result

    def check(self, result: ImportResult) -> None:
        if result.verdict not in (Verdict.ACCEPT, Verdict.REJECT):
            raise FuzzFailure(f"no verdict: {result.verdict!r}")
        errors = [f for f in result.findings if f.severity is Severity.ERROR]
        if (result.verdict is Verdict.REJECT) != bool(errors):
            raise FuzzFailure(f"verdict {result.verdict.value} with error findings {[f.code for f in errors]}")
        for finding in result.findings:
            if finding.code not in self.pipeline.catalog:
                raise FuzzFailure(f"undeclared finding code {finding.code!r} from {finding.plugin}")
            if finding.code in BUG_CODES:
                raise FuzzFailure(f"{finding.code} in {finding.stage} from {finding.plugin}: {finding.detail}")
            if str(self.root) in finding.message:
                raise FuzzFailure(f"{finding.code}: a host path in the user message {finding.message!r}")
        if not self._observer.layers:
            raise FuzzFailure("the run finished without a 'finished' event")
        for kind, size, read in self._observer.layers:
            if read > self.settings.max_read_passes * size + READ_SLACK:
                raise FuzzFailure(f"read {read} bytes of the {size}-byte {kind} layer")
        leftovers = sorted(path.name for path in self.work_dir.iterdir())
        if leftovers:
            for path in self.work_dir.iterdir():
                _remove(path) if path.is_dir() else path.unlink()
            raise FuzzFailure(f"the run left {leftovers} in its work directory")


def expect(allowed: tuple[type[BaseException], ...], call: Any, *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``; ``None`` if it raised one of ``allowed``, :class:`FuzzFailure` if another."""
    try:
        return call(*args, **kwargs)
    except allowed:
        return None
    except Exception as exc:
        raise FuzzFailure(f"{type(exc).__name__} escaped {getattr(call, '__qualname__', call)}: {exc}") from exc
