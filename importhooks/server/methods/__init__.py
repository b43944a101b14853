"""Import methods: a small registry of the ways image data reaches staging.

Each :class:`ImportMethod` is a name (Glance's: ``glance-direct``, ``web-download``...), its
part of the import request schema (the JSON-schema ``properties`` it adds to ``method``, and
which of them are ``required``), and how it brings data to staging:

* ``bring is None`` and ``uses_staging``: the user staged the data already
  (``PUT /stage``; :mod:`.glance_direct`); the import starts from ``uploading``.
* ``bring`` a callable taking a :class:`MethodRequest` (the image id, the method's parameters
  from the request, the server's :class:`~importhooks.server.staging.StagingArea`, the
  :class:`~importhooks.settings.Settings`, the requester and their credentials, the kill switch) that writes
  the data into the staging area, through :meth:`StagingArea.receive_sync` or
  :meth:`StagingArea.receive` so that ``max_upload_bytes`` and ``max_upload_time`` hold and a
  failure leaves nothing behind, and returns the bytes staged; it raises a
  :class:`~importhooks.errors.RequestError` (with a user-safe message) when it fails. The
  import starts from ``queued``; the server runs ``bring`` in the background and then
  imports what it staged as for ``glance-direct`` (:mod:`.web_download`).
* ``precheck``, if given, runs while the import request is answered (the parameters and
  settings; a :class:`~importhooks.errors.RequestError` there is the answer, e.g. 400 for a
  URL that will not be fetched), so that plain mistakes are not found only in the background.

A method is offered when its name is in the ``enabled_import_methods`` setting
(:func:`enabled` checks the list); discovery (:mod:`importhooks.server.discovery`) and request
validation (:mod:`importhooks.server.validation`) are generated from the enabled methods, and
the kill switch stops them all. A new method is one module that calls :func:`register` with
its :class:`ImportMethod`, and one import line below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ...errors import ConfigError
from ...request import Requester
from ...settings import Settings
from ..staging import StagingArea
from ..status import Call, ImageStatus, allowed


@dataclass(frozen=True, slots=True)
class MethodRequest:
    """What a method's ``bring`` gets: the image, the request's method parameters, where and how to stage."""

    image_id: str
    parameters: Mapping[str, Any]
    staging: StagingArea
    settings: Settings
    requester: Requester | None = None
    #: The user's own credentials, for methods that read from the user's storage (e.g. a token).
    credentials: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: The kill switch (e.g. ``runner.pipeline.killswitch.is_halted``): a method stops when it turns true.
    halted: Callable[[], bool] | None = None


Bring = Callable[[MethodRequest], int]
Precheck = Callable[[Mapping[str, Any], Settings], None]


@dataclass(frozen=True, slots=True)
class ImportMethod:
    """One import method: its name, its schema part, and how its data reaches staging."""

    name: str
    parameters: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    required: tuple[str, ...] = ()
    uses_staging: bool = False
    bring: Bring | None = None
    precheck: Precheck | None = None
    description: str = ""

    @property
    def servable(self) -> bool:
        """Whether a server can offer it: it reads staged data, or brings its own."""
        return self.uses_staging or self.bring is not None

    def may_import_from(self, status: ImageStatus) -> bool:
        """Whether an import by this method may start on an image in ``status``."""
        if self.uses_staging:
            return allowed(Call.IMPORT, status)
        return status is ImageStatus.QUEUED


_REGISTRY: dict[str, ImportMethod] = {}


def register(method: ImportMethod) -> ImportMethod:
    """Add ``method`` to the registry (replacing one of the same name); returns it."""
    _REGISTRY[method.name] = method
    return method


def get(name: str) -> ImportMethod | None:
    """The registered method called ``name``, if any."""
    return _REGISTRY.get(name)


def registered() -> tuple[ImportMethod, ...]:
    """Every registered method, servable or described only (for the schema of Glance's other methods)."""
    return tuple(_REGISTRY.values())


def enabled(settings: Settings) -> tuple[ImportMethod, ...]:
    """The methods ``enabled_import_methods`` offers; :class:`ConfigError` for one a server cannot offer."""
    found: list[ImportMethod] = []
    for name in dict.fromkeys(settings.enabled_import_methods):
        method = _REGISTRY.get(name)
        if method is None or not method.servable:
            known = ", ".join(m.name for m in _REGISTRY.values() if m.servable)
            raise ConfigError("enabled_import_methods", f"unknown import method {name!r} (known: {known})")
        found.append(method)
    return tuple(found)


def enabled_names(settings: Settings) -> tuple[str, ...]:
    """The names of :func:`enabled`."""
    return tuple(method.name for method in enabled(settings))


from . import glance_direct, swift_local, web_download  # noqa: E402,F401  (they register themselves)

# Glance's method for copying from another region: described for the schema, not offered here.
register(ImportMethod(
    "glance-download",
    MappingProxyType({
        "glance_image_id": {"type": "string", "minLength": 1, "description": "The image in the remote region."},
        "glance_region": {"type": "string", "minLength": 1, "description": "The remote region."},
        "glance_service_interface": {"type": "string", "minLength": 1,
                                     "description": "The remote image service's endpoint interface."},
    }),
    ("glance_image_id", "glance_region"),
    description="Copy an image from another region (Glance's; not offered by importhooks).",
))
