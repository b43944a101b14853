"""importhooks: a safe, operator-customizable image import pipeline.

The names a plugin author or an embedder of the pipeline needs are importable from
here::

    from importhooks import hookimpl, FindingCode, ImportContext

The server kit (:mod:`importhooks.server.staging`, :mod:`importhooks.server.runner`,
:mod:`importhooks.server.validation`, :mod:`importhooks.server.status`,
:mod:`importhooks.server.discovery`) is imported from its modules. Importing this package
creates no plugin manager, reads no configuration and loads no plugin.
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
from .result import ImportResult, Layer
from .settings import PluginOption, PluginOptions, Settings, iter_setting_docs, load_settings, settings_from_mapping

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
    "Layer",
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
    "iter_setting_docs",
    "load_settings",
    "settings_from_mapping",
]
