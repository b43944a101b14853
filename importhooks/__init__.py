"""importhooks: a safe, operator-customizable image import pipeline.

The names a plugin author or an embedder needs are importable from here::

    from importhooks import hookimpl, FindingCode, ImportContext

Importing this package creates no plugin manager and reads no configuration.
"""

from __future__ import annotations

from .context import ImportContext
from .data import Checksums, ImageData
from .errors import ConfigError, ImporthooksError, PluginLoadError, Rejected, RunAborted
from .events import Event, EventType
from .findings import Finding, FindingCode, Severity, Verdict
from .hookspecs import hookimpl
from .killswitch import KillSwitch
from .pipeline import Pipeline
from .request import Claims, ImportRequest, Requester
from .result import ImportResult
from .settings import PluginOption, PluginOptions, Settings, load_settings

__all__ = [
    "Checksums",
    "Claims",
    "ConfigError",
    "Event",
    "EventType",
    "Finding",
    "FindingCode",
    "ImageData",
    "ImportContext",
    "ImportRequest",
    "ImportResult",
    "ImporthooksError",
    "KillSwitch",
    "Pipeline",
    "PluginLoadError",
    "PluginOption",
    "PluginOptions",
    "Rejected",
    "Requester",
    "RunAborted",
    "Settings",
    "Severity",
    "Verdict",
    "hookimpl",
    "load_settings",
]
