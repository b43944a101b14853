"""importhooks as an OpenStack Glance image import plugin.

Enabled in glance-api.conf with ``image_import_plugins = [importhooks]`` in
``[image_import_opts]``; the entry point ``importhooks`` of the group
``glance.image_import.plugins`` names :func:`get_flow`. Glance calls it for every
glance-direct and web-download import task, and runs the task it returns after the
staged data is verified and before anything is written to a store.

The task runs the importhooks pipeline on the staged file with the claims Glance holds
and the requester of the request. On ``accept`` it sets the verified and protected
properties on the image, and when a container was unpacked (OVA, compressed) it puts
the inspected disk in place of the staged file, so that the disk is what Glance
stores. Anything else (a rejection, the halt file, a timeout, an error inside
importhooks, settings that do not load) fails the task with Glance's
``UploadException`` and importhooks' user-safe message, and reverts the image the way
Glance's own plugins do.

This module imports Glance's libraries; :mod:`importhooks` never imports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from types import MappingProxyType
from typing import Any

from oslo_config import cfg
from taskflow import task
from taskflow.patterns import linear_flow

from importhooks import Claims, ImportRequest, ImportResult, Pipeline, Requester, Settings, load_settings
from importhooks.findings import Severity
from importhooks.text import escape

log = logging.getLogger(__name__)

#: The glance-api.conf group of this plugin's options.
GROUP = "importhooks"
OPTS = [
    cfg.StrOpt(
        "config_file",
        help="Path of the importhooks settings file (TOML). Unset: importhooks' defaults. If the file "
             "or a site plugin it names fails to load, every import fails closed until it is fixed.",
    ),
]
cfg.CONF.register_opts(OPTS, group=GROUP)

#: Task message when the settings or a site plugin do not load (the log has the reason).
UNAVAILABLE = "Image import is unavailable: the image checks could not be loaded. Contact the cloud operator."
#: Task message when importhooks itself failed on this image (the log has the traceback).
CHECK_FAILED = "The image could not be checked, so it was not imported. Try again later or contact the operator."
#: Task message of a rejection without an error finding (never expected; the log has the findings).
REJECTED = "The image was rejected."

#: Import methods whose own revert (Glance's ``_WebDownload``) resets the image and deletes the staged data.
_METHODS_GLANCE_REVERTS = frozenset({"web-download", "glance-download"})

_lock = threading.Lock()
_pipelines: dict[str | None, Pipeline] = {}


def pipeline_for(config_file: str | None) -> Pipeline:
    """The worker process' pipeline for ``config_file``, built on first use.

    A file that fails to load raises (``ConfigError``, ``PluginLoadError``) and is tried
    again on the next import, so an operator who fixes it needs no restart.
    """
    with _lock:
        pipeline = _pipelines.get(config_file)
        if pipeline is None:
            pipeline = Pipeline.from_settings(glance_settings(load_settings(config_file)))
            _pipelines[config_file] = pipeline
        return pipeline


def glance_settings(settings: Settings) -> Settings:
    """``settings`` without the ``checksums`` plugin: Glance computes ``checksum`` and ``os_hash_value``
    itself while it writes the data to the store, so hashing it here too would only cost a pass."""
    if "checksums" in settings.plugins.disabled:
        return settings
    return settings.replace(plugins=dataclasses.replace(settings.plugins,
                                                        disabled=(*settings.plugins.disabled, "checksums")))


def configured_file() -> str | None:
    """``[importhooks] config_file`` of the running Glance, or ``None``."""
    value = cfg.CONF[GROUP].config_file
    return str(value) if value else None


def _upload_error(message: str) -> Exception:
    """Glance's exception whose text becomes the task message (any other reads "Internal Error")."""
    from glance.common import exception

    return exception.UploadException(message)  # type: ignore[no-any-return]


def _local_path(file_path: str) -> Path:
    """The staged file of a ``file://`` URI (what Glance passes as ``file_path``)."""
    return Path(file_path.removeprefix("file://"))


def keep_disk(data: Path, staged: Path) -> None:
    """Put the inspected ``data`` in place of ``staged`` (same directory: one atomic rename at the end)."""
    if data == staged:
        return
    fd, name = tempfile.mkstemp(prefix=f".{staged.name}.", suffix=".importhooks", dir=staged.parent)
    os.close(fd)
    try:
        shutil.move(data, name)  # a rename on the same filesystem, else a copy
        os.replace(name, staged)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def log_findings(image_id: str, result: ImportResult) -> None:
    """Every finding to Glance's log, untrusted text escaped, then the verdict."""
    for finding in result.findings:
        level = {Severity.ERROR: logging.ERROR, Severity.WARNING: logging.WARNING}.get(finding.severity, logging.INFO)
        detail = f" ({escape(finding.detail)})" if finding.detail else ""
        log.log(level, "importhooks: image %s: %s %s [%s] %s%s", image_id, finding.severity.value, finding.code,
                finding.plugin, escape(finding.message), detail)
    log.info("importhooks: image %s: %s in %.3f s", image_id, result.verdict.value, result.elapsed_s)


class ImporthooksTask(task.Task):
    """Runs the pipeline on the staged file; provides the ``file_path`` Glance stores."""

    default_provides = "file_path"

    def __init__(self, kwargs: dict[str, Any], pipeline: Pipeline | None, failure: str | None) -> None:
        task_type = kwargs.get("task_type") or "api_image_import"
        super().__init__(name=f"{task_type}-Importhooks-{kwargs.get('task_id')}")
        self.context = kwargs.get("context")
        self.image_id = str(kwargs.get("image_id"))
        self.image_repo = kwargs.get("image_repo")
        self.action_wrapper = kwargs["action_wrapper"]
        self.stores = [store for store in kwargs.get("backend") or () if store]
        method = (kwargs.get("import_req") or {}).get("method") or {}
        self.method = str(method.get("name") or "glance-direct")
        self.pipeline = pipeline
        self.failure = failure
        self.staged: Path | None = None
        self.recorded: tuple[str, ...] = ()  # the properties this task set, taken back by revert

    def execute(self, file_path: str) -> str:
        staged = self.staged = _local_path(file_path)
        if self.pipeline is None:
            raise _upload_error(self.failure or UNAVAILABLE)
        try:
            request = self.import_request(staged)
            result = self.pipeline.run(request, store=lambda data: keep_disk(data, staged))
        except Exception as exc:
            if type(exc).__name__ == "TaskAbortedError":  # the image lock was lost: Glance's own answer
                raise
            log.exception("importhooks: image %s: the check failed", self.image_id)
            raise _upload_error(CHECK_FAILED) from exc
        log_findings(self.image_id, result)
        if not result.accepted:
            raise _upload_error(result.user_message or REJECTED)
        self.record(result, staged)
        return f"file://{staged}"

    def import_request(self, staged: Path) -> ImportRequest:
        """Claims from the image (formats, ``os_type``, name, custom properties); requester from the context."""
        with self.action_wrapper as action:
            disk_format = action.image_disk_format
            container_format = action.image_container_format
            extra = dict(action.image_extra_properties or {})
        properties = {str(name): str(value) for name, value in extra.items()
                      if name != "os_type" and not str(name).startswith("os_glance")}
        name = getattr(self.image_repo.get(self.image_id), "name", None) if self.image_repo is not None else None
        if name:
            properties.setdefault("name", str(name))
        os_type = extra.get("os_type")
        claims = Claims(disk_format=disk_format or None, container_format=container_format or None,
                        os_type=str(os_type) if os_type else None, properties=MappingProxyType(properties))
        context = self.context
        requester = Requester(getattr(context, "user_id", None), getattr(context, "project_id", None),
                              tuple(getattr(context, "roles", None) or ()))
        return ImportRequest(staged, claims, requester, request_id=self.image_id)

    def record(self, result: ImportResult, staged: Path) -> None:
        """The verified properties, and the detected format when a container was unpacked."""
        properties = {name: str(value) for name, value in result.properties.items() if value is not None}
        with self.action_wrapper as action:
            action.set_image_extra_properties(properties)
            self.recorded = tuple(properties)
            if len(result.layers) > 1:
                disk_format = result.detected.get("disk_format")
                attributes: dict[str, Any] = {"container_format": "bare", "size": staged.stat().st_size}
                if disk_format:
                    attributes["disk_format"] = str(disk_format)
                action.set_image_attribute(**attributes)

    def revert(self, result: Any = None, **kwargs: Any) -> None:
        """glance-direct: back to ``queued``, stores marked failed, staged data deleted (as image_conversion).

        web-download and glance-download are left to Glance's own download revert, which does
        the same; doing it twice makes that revert fail. Whatever the method, the properties
        this task set are taken back when a later step failed (the store refused the data):
        left behind, they would read as verified on an image that is not, and the next
        import would refuse them as protected properties the user set.
        """
        if self.recorded:
            try:
                with self.action_wrapper as action:
                    for name in self.recorded:
                        action.pop_extra_property(name)
                self.recorded = ()
            except Exception:
                log.exception("importhooks: image %s: could not take back the verified properties", self.image_id)
        if self.method in _METHODS_GLANCE_REVERTS:
            return
        try:
            with self.action_wrapper as action:
                if action.image_status != "queued":
                    action.set_image_attribute(status="queued")
                if self.stores:
                    action.remove_importing_stores(self.stores)
                    action.add_failed_stores(self.stores)
        except Exception:
            log.exception("importhooks: image %s: could not reset the image after a failed import", self.image_id)
        if self.staged is not None:
            with contextlib.suppress(FileNotFoundError):
                self.staged.unlink()


def get_flow(**kwargs: Any) -> Any:
    """Glance's plugin entry point: a linear flow with one :class:`ImporthooksTask`. Never raises.

    If the settings or a site plugin fail to load, the task fails every import closed
    (Glance itself would skip a plugin whose ``get_flow`` raised, and import unchecked).
    """
    pipeline: Pipeline | None = None
    failure: str | None = None
    try:
        pipeline = pipeline_for(configured_file())
    except Exception as exc:  # noqa: BLE001 - any load failure fails imports closed
        log.error("importhooks: cannot load the settings or plugins, every import fails: %s", escape(exc))
        failure = UNAVAILABLE
    task_type = kwargs.get("task_type") or "api_image_import"
    try:
        return linear_flow.Flow(f"{task_type}-importhooks").add(ImporthooksTask(kwargs, pipeline, failure))
    except Exception:
        log.exception("importhooks: cannot build the import flow")
        return linear_flow.Flow(f"{task_type}-importhooks").add(_Closed(name=f"{task_type}-Importhooks-closed"))


class _Closed(task.Task):
    """The last resort of :func:`get_flow`: fail the import (the log says why)."""

    def execute(self, file_path: str) -> None:
        raise _upload_error(UNAVAILABLE)
