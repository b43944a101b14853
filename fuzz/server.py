"""Targets of the server family: the settings loader, the import request and the reference service's bodies.

* ``settings``: the bytes as a settings file through :func:`~importhooks.load_settings`, then, if
  they load, a :class:`~importhooks.Pipeline` built from them (every plugin's options resolved);
  only :class:`~importhooks.errors.ConfigError` may leave. Site plugins are not loaded: a fuzzed
  ``[plugins] enabled`` list would import arbitrary modules.
* ``import_request``: ``importhooks.server.validation``: the first byte picks the content type and
  whether ``require_os_type`` is set, the rest is the body of ``POST /v2/images/{id}/import``.
* ``service_body``: the reference service's ``POST /v2/images`` body as its app parses it
  (``bodies.parse_json``, then ``validate_new_image``), or, when the first byte says so, its upload
  size headers (``declared_size``).

Only :class:`~importhooks.errors.RequestError` may leave the request parsers, and its message
(shown to the user) must be one printable line of bounded length.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path

from importhooks_image_service import validation as service_validation
from importhooks_image_service.bodies import parse_json
from importhooks_image_service.config import DEFAULT_MAX_JSON_DEPTH

from importhooks import Pipeline, load_settings
from importhooks.errors import ConfigError, RequestError
from importhooks.server.validation import import_claims, parse_import_request
from importhooks.settings import PluginSettings, Settings

from .harness import FuzzFailure, expect
from .targets import OneInput, Target, register

#: Longest user message a refused request may carry.
MAX_MESSAGE = 1024
CONTENT_TYPES = ("application/json", "application/json; charset=utf-8", "APPLICATION/JSON ",
                 "application/openstack-images-v2.1-json-patch", "text/plain", None)
IMAGE_RECORDS: tuple[dict[str, str], ...] = (
    {},
    {"disk_format": "qcow2", "container_format": "bare", "os_type": "linux"},
    {"disk_format": "", "os_type": "plan9"},
)


def _check_message(exc: RequestError) -> None:
    text = exc.message
    if not text or len(text) > MAX_MESSAGE or not text.isprintable():
        raise FuzzFailure(f"{type(exc).__name__} with an unsafe user message {text[:200]!r}")


#: What :func:`_refused` returns for a refusal (``None`` is a valid JSON document).
REFUSED = object()


def _refused(call: Callable[..., object], *args: object, **kwargs: object) -> object:
    """``call(...)``, or :data:`REFUSED` if it refused with a :class:`RequestError` whose message is safe."""
    try:
        return call(*args, **kwargs)
    except RequestError as exc:
        _check_message(exc)
        return REFUSED
    except Exception as exc:
        raise FuzzFailure(f"{type(exc).__name__} escaped {call.__qualname__}: {exc}") from exc


def _settings_target() -> OneInput:
    root = Path(tempfile.mkdtemp(prefix="importhooks-fuzz-"))
    path = root / "importhooks.toml"

    def one(data: bytes) -> object:
        path.write_bytes(data)
        settings = expect((ConfigError,), load_settings, path)
        if settings is None:
            return None
        if not isinstance(settings, Settings):
            raise FuzzFailure(f"load_settings returned {type(settings).__name__}")
        plugins = PluginSettings(disabled=settings.plugins.disabled, order=settings.plugins.order,
                                 entry_points=False)
        return expect((ConfigError,), Pipeline.from_settings, settings.replace(plugins=plugins))

    weakref.finalize(one, shutil.rmtree, root, True)
    return one


def _import_request_target() -> OneInput:
    plain, strict = Settings(), Settings(require_os_type=True)

    def one(data: bytes) -> object:
        selector, body = (data[0], data[1:]) if data else (0, b"")
        settings = strict if selector & 0x80 else plain
        content_type = CONTENT_TYPES[selector % len(CONTENT_TYPES)]
        parsed = _refused(parse_import_request, body, content_type, settings)
        if parsed is REFUSED:
            return None
        image = IMAGE_RECORDS[(selector >> 3) % len(IMAGE_RECORDS)]
        return _refused(import_claims, parsed, image, settings, {"hw_disk_bus": "virtio"})
    return one


def _service_body_target() -> OneInput:
    settings = Settings()

    def one(data: bytes) -> object:
        selector, body = (data[0], data[1:]) if data else (0, b"")
        if selector & 0x40:  # the upload's size headers, as text
            text = body.decode("utf-8", "replace")
            first, _, second = text.partition("\n")
            headers = {"X-OpenStack-Image-Size": first}
            if selector & 0x20:
                headers["Content-Length"] = second
            return _refused(service_validation.declared_size, headers)
        document = _refused(parse_json, body, DEFAULT_MAX_JSON_DEPTH)  # what the app does first
        if document is REFUSED:
            return None
        return _refused(service_validation.validate_new_image, document, settings)
    return one


register(Target("settings", "server", "importhooks/settings.py: load_settings, settings_from_mapping, options",
                _settings_target, "settings.dict", 16 << 10))
register(Target("import_request", "server", "importhooks/server/validation.py: parse_import_request, import_claims",
                _import_request_target, "json.dict", 8 << 10))
register(Target("service_body", "server", "examples/image_service validation: new image bodies, size headers",
                _service_body_target, "json.dict", 8 << 10))
