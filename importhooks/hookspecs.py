"""Hook specifications: the stages of an import run, and how plugins join them.

A run calls the stage hooks in this order, each under its own time budget
(``[timeouts]``)::

    pre_validate -> inspect -> sanitize -> (inspect -> sanitize ...) ->
    set_protected_properties -> finalize

``inspect`` and ``sanitize`` repeat while a ``sanitize`` implementation replaces the
data (a gzip stream becomes the disk it holds), at most ``max_sanitize_passes``
times. Every hook receives the run's :class:`~importhooks.context.ImportContext` as
``context``; plugins report problems with ``context.report(...)`` or stop the run
with ``context.reject(...)``, never through return values, so no other plugin can
drop them. A plugin that raises ends the run with ``pipeline.plugin_failed``.

Implement a hook with the :data:`importhooks.hookimpl` marker; ``tryfirst``,
``trylast`` and ``wrapper`` work as in pluggy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .context import ImportContext
    from .events import Event
    from .findings import FindingCode
    from .settings import PluginOptions

PROJECT_NAME = "importhooks"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def importhooks_finding_codes() -> Iterable[FindingCode]:
    """Declare the finding codes this plugin may report.

    :return: the plugin's :class:`~importhooks.findings.FindingCode` constants.

    Called once when the pipeline is built. The codes feed the docs' codes table,
    the SARIF rules of ``importhooks audit --format sarif`` and the default user
    message of each finding.

    Example::

        NAME_TOO_LONG = FindingCode(
            "policy.name_too_long", "The image name is too long.",
            "Image names are limited by the site policy; choose a shorter one.")

        @hookimpl
        def importhooks_finding_codes():
            return [NAME_TOO_LONG]
    """
    raise NotImplementedError


@hookspec
def importhooks_plugin_options() -> PluginOptions | None:
    """Declare the options this plugin reads from its ``[plugin.SECTION]`` table.

    :return: a :class:`~importhooks.settings.PluginOptions`, or ``None``.

    Called once when the pipeline is built; a table for an undeclared section, an
    unknown option or a value of the wrong type fails the build with a
    :class:`~importhooks.errors.ConfigError` naming the key. At run time the
    resolved values are in ``context.options(SECTION)``.

    Example::

        @hookimpl
        def importhooks_plugin_options():
            return PluginOptions("name_policy", (
                PluginOption("max_length", 64, "Longest image name allowed."),))
    """
    raise NotImplementedError


@hookspec
def importhooks_pre_validate(context: ImportContext) -> None:
    """Check the request and its claims before any data is read.

    :param context: the run's context; ``context.claims``, ``context.requester``,
        ``context.settings`` and ``context.data.size`` are what this stage should
        look at. Reading the data here is a mistake.

    Runs first, once. Report a finding for each problem: an unknown disk format,
    a missing ``os_type``, a property the requester may not set, a role that may not
    import. The run stops after this stage if any error was reported.

    Example::

        @hookimpl
        def importhooks_pre_validate(context):
            if "admin" not in context.requester.roles and context.claims.disk_format == "iso":
                context.report(ISO_FOR_ADMINS_ONLY)
    """


@hookspec
def importhooks_inspect(context: ImportContext) -> None:
    """Analyse the data, read-only, and record what it is.

    :param context: the run's context; read the data with ``context.data.open()``
        (random access) or ``context.data.stream()`` (one sequential pass, which
        also feeds the checksums), both counted against the read and time budgets.
        Record facts with ``context.facts[...] = value``.

    Runs after ``pre_validate``, and again on the new data each time ``sanitize``
    replaces it. Never writes to the data. The run stops after this stage if any
    error was reported.

    Example::

        @hookimpl
        def importhooks_inspect(context):
            with context.data.open() as f:
                if f.read(4) == b"QFI\\xfb":
                    context.facts["disk_format"] = "qcow2"
    """


@hookspec
def importhooks_sanitize(context: ImportContext) -> None:
    """Produce the data that would be stored, if it differs from what was staged.

    :param context: the run's context. Write the new data to a file from
        ``context.temp_path()`` (a path the pipeline chose, inside its own temporary
        directory), then call ``context.replace_data(path, kind=...)``.

    Runs after ``inspect`` passed. If an implementation replaced the data, the
    pipeline runs ``inspect`` and then ``sanitize`` again on the new data. At most one
    implementation may replace the data per pass.

    Example::

        @hookimpl
        def importhooks_sanitize(context):
            if context.facts.get("container_format") == "gzip":
                out = context.temp_path(".raw")
                with context.data.open() as src, gzip.open(src) as gz, open(out, "wb") as dst:
                    shutil.copyfileobj(gz, dst)
                context.replace_data(out, kind="gzip-payload")
    """


@hookspec
def importhooks_set_protected_properties(context: ImportContext) -> Mapping[str, str] | None:
    """Return image properties that only the pipeline may set.

    :param context: the run's context, with the facts of every data layer.
    :return: a mapping of property name to string value, or ``None``.

    Runs once, after the last ``inspect``/``sanitize`` pass. Two plugins returning
    different values for one property reject the run
    (``pipeline.property_conflict``).

    Example::

        @hookimpl
        def importhooks_set_protected_properties(context):
            return {"os_type": context.facts["os_type_detected"]}
    """


@hookspec
def importhooks_finalize(context: ImportContext) -> None:
    """Have the last word on the import, and compute the checksums.

    :param context: the run's context; ``context.properties`` holds what
        ``set_protected_properties`` returned and ``context.checksums`` is filled here.

    Runs last, once. An error finding here still rejects the run.

    Example::

        @hookimpl
        def importhooks_finalize(context):
            if context.properties.get("os_type") == "windows" and not context.claims.os_type:
                context.report(OS_TYPE_UNCLAIMED)
    """


@hookspec
def importhooks_notify(event: Event, context: ImportContext) -> None:
    """Receive an import event: accepted, started, progress or finished.

    :param event: the :class:`~importhooks.events.Event`, with its ``type``
        (``image.import.started`` ...), the stage, a progress percentage or the
        verdict and finding codes.
    :param context: the run's context (read it, do not change it), or ``None``
        for an ``accepted`` event a server sends with ``Pipeline.notify`` before
        the run exists.

    Called by the pipeline as the run goes on; progress at most every
    second per stage. During a run, a notifier that raises rejects the run like
    any plugin.

    Example::

        @hookimpl
        def importhooks_notify(event, context):
            if event.type is EventType.FINISHED:
                metrics.count("imports", verdict=event.verdict.value)
    """
