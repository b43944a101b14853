"""The exceptions importhooks raises: one small tree under :class:`ImporthooksError`.

Configuration and loading problems are raised to the embedder (a server refuses to
start, the CLI exits 2). Everything that goes wrong *during* an import run is turned
into a finding and a ``reject`` by the pipeline; the :class:`RunAborted` branch is how
the framework itself stops a run early, each with the finding code it stands for.
The :class:`RequestError` branch is what the embedding kit raises for a call a server
must refuse, each with its HTTP status.
"""

from __future__ import annotations


class ImporthooksError(Exception):
    """Base class of every exception importhooks raises on purpose."""


class ConfigError(ImporthooksError):
    """A setting is unknown or has a bad value; ``key`` is its dotted name."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


class PluginLoadError(ImporthooksError):
    """A plugin could not be loaded: import failure, bad hookimpl, or a name collision."""


class RunAborted(ImporthooksError):
    """Stops an import run; the pipeline records ``code`` and rejects.

    Plugins do not raise this directly: they call ``context.reject(...)``, and the
    framework raises the subclasses below when a budget runs out.
    """

    code = "pipeline.aborted"

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(detail or self.code)


class Rejected(RunAborted):
    """A plugin rejected the import with ``context.reject()``; its finding is already recorded."""

    code = "pipeline.rejected"


class ReadBudgetExceeded(RunAborted):
    """A plugin read more of the data than the read budget allows."""

    code = "data.read_budget"


class DataChanged(RunAborted):
    """The data changed size (or was rewritten) while it was being checked."""

    code = "data.changed"


class DataReplaced(RunAborted):
    """The data's path names another file than the one being checked (renamed over, or removed)."""

    code = "data.replaced"


class DataReadError(RunAborted):
    """Reading the data failed with an operating-system error (EIO from the disk, a network filesystem)."""

    code = "data.read_error"


class StageTimeout(RunAborted):
    """A stage ran past its time budget."""

    code = "pipeline.timeout"


class Halted(RunAborted):
    """The kill switch was set while the import was running."""

    code = "pipeline.halted"


class ImageGone(ImporthooksError):
    """A server's ``store`` callback found the image deleted during its import: the data is dropped, quietly."""


class RequestError(ImporthooksError):
    """A call an image service must refuse; ``status`` is its HTTP status, ``message`` safe for the user.

    The embedding kit raises these (the status machine, request validation, the staging
    writer, the kill switch); a server turns one into its error response, e.g. Glance's
    ``{"error": {"message": ...}}`` with ``status``.
    """

    status = 400

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class BadRequest(RequestError):
    """The request body is not valid (400); ``field`` names the offending field, if one does."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class RequestTimeout(RequestError):
    """An upload took longer than ``max_upload_time`` (408)."""

    status = 408


class StatusConflict(RequestError):
    """The call is not allowed in the image's current status (409)."""

    status = 409


class PayloadTooLarge(RequestError):
    """An upload is larger than ``max_upload_bytes`` (413)."""

    status = 413


class UnsupportedMediaType(RequestError):
    """The request body has the wrong content type (415)."""

    status = 415


class ImportHalted(RequestError):
    """Imports are halted by the kill switch (503): new stage and import calls are refused."""

    status = 503
