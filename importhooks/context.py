"""The context passed through every stage of one import run."""

from __future__ import annotations

import contextvars
import itertools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .data import Checksums, ImageData
from .errors import Rejected
from .findings import Finding, FindingCode, FindingSink, Severity
from .request import Claims, ImportRequest, Requester
from .settings import Settings

if TYPE_CHECKING:
    from .pipeline import RunControl

#: Name of the plugin whose hook implementation is running in this thread; set by
#: the guards of :mod:`importhooks.plugins`, read by :meth:`ImportContext.report`.
CURRENT_PLUGIN: contextvars.ContextVar[str] = contextvars.ContextVar("importhooks_plugin", default="<unknown>")


class ImportContext:
    """Everything a plugin may know about, and do to, the run it is part of.

    Built by the pipeline, one per run; plugins never construct it.
    """

    def __init__(
        self,
        request: ImportRequest,
        settings: Settings,
        *,
        sink: FindingSink,
        catalog: Mapping[str, FindingCode],
        options: Mapping[str, Mapping[str, Any]],
        control: RunControl,
        workdir: Callable[[], Path],
        data: ImageData,
        enabled_plugins: frozenset[str] = frozenset(),
    ) -> None:
        self.request = request
        self.settings = settings
        self._sink = sink
        self._catalog = catalog
        self._options = options
        self._control = control
        self._workdir = workdir
        self._names = itertools.count(1)
        self._replacement: ImageData | None = None
        #: Names of the plugins registered and enabled in this pipeline.
        self.enabled_plugins = enabled_plugins
        #: The layers of data, the staged data first; the last is the current one.
        self.layers: list[ImageData] = [data]
        #: The stage now running.
        self.stage = "pre_validate"
        #: Properties returned by ``set_protected_properties``.
        self.properties: dict[str, str] = {}
        #: Checksums of the data that would be stored, set in ``finalize``.
        self.checksums: Checksums | None = None

    @property
    def request_id(self) -> str:
        """The request's id, as in events and logs."""
        return self.request.request_id

    @property
    def claims(self) -> Claims:
        """What the user says the data is; untrusted."""
        return self.request.claims

    @property
    def requester(self) -> Requester:
        """Who asked for the import."""
        return self.request.requester

    @property
    def data(self) -> ImageData:
        """The current data layer."""
        return self.layers[-1]

    @property
    def facts(self) -> dict[str, Any]:
        """Facts about the current data layer (``disk_format``, ``virtual_size`` ...)."""
        return self.data.facts

    @property
    def findings(self) -> tuple[Finding, ...]:
        """The findings so far, read-only (e.g. to skip costly work on data already rejected)."""
        return self._sink.snapshot()

    def has_errors(self) -> bool:
        """Whether an error finding was reported so far in this run."""
        return self._sink.has_errors()

    def options(self, section: str) -> Mapping[str, Any]:
        """The resolved ``[plugin.SECTION]`` options a plugin declared."""
        return self._options.get(section, {})

    def report(
        self,
        code: FindingCode | str,
        message: str | None = None,
        *,
        detail: str | None = None,
        severity: Severity | None = None,
    ) -> Finding:
        """Record a finding attributed to the calling plugin and the current stage.

        ``code`` must be declared by an ``importhooks_finding_codes`` implementation
        (an undeclared code is a plugin bug: the plugin fails and the run is
        rejected). ``message`` defaults to the code's summary; it must be safe to
        show the user. ``detail`` is for operators. ``severity`` defaults to the
        code's. An error finding makes the verdict ``reject``.
        """
        name = code if isinstance(code, str) else code.code
        declared = self._catalog.get(name)
        if declared is None:
            raise ValueError(f"finding code {name!r} is not declared by any importhooks_finding_codes")
        code = declared
        finding = Finding(
            code=code.code,
            severity=severity or code.severity,
            stage=self.stage,
            plugin=CURRENT_PLUGIN.get(),
            message=message or code.summary,
            detail=detail,
        )
        self._sink.add(finding)
        return finding

    def reject(self, code: FindingCode | str, message: str | None = None, *, detail: str | None = None) -> NoReturn:
        """Report an error finding and stop the run now."""
        self.report(code, message, detail=detail, severity=Severity.ERROR)
        raise Rejected(detail or "")

    def time_left(self) -> float:
        """Seconds left in the current stage's time budget (never negative): cap subprocesses with it."""
        return self._control.time_left()

    def check(self) -> None:
        """Raise if the run must stop (stage timeout, halt); long plugin loops call this."""
        self._control.check()

    def temp_path(self, suffix: str = "") -> Path:
        """A new path inside the run's private temporary directory.

        The name is chosen by the pipeline (never from the data); the directory and
        everything in it are removed when the run ends, whatever the verdict.
        """
        if suffix and (not suffix.startswith(".") or os.sep in suffix or not suffix[1:].isalnum()):
            raise ValueError(f"suffix must look like '.raw', got {suffix!r}")
        self.check()
        return self._workdir() / f"layer-{next(self._names)}{suffix}"

    def replace_data(self, path: Path, *, kind: str) -> ImageData:
        """In ``sanitize``: make ``path`` (from :meth:`temp_path`) the data to inspect and store."""
        if self.stage != "sanitize":
            raise RuntimeError("replace_data is only allowed in the sanitize stage")
        if path.parent != self._workdir():
            raise ValueError("replace_data takes a path from context.temp_path()")
        if self._replacement is not None:
            raise RuntimeError("the data was already replaced in this sanitize pass")
        self._replacement = self._control.new_layer(path, kind=kind, parent=self.data)
        return self._replacement

    def _take_replacement(self) -> ImageData | None:
        replacement, self._replacement = self._replacement, None
        return replacement
