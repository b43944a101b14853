"""What an embedder hands the pipeline: the staged data, the user's claims and who asked."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Claims:
    """What the user says the data is. Nothing here is trusted."""

    disk_format: str | None = None
    container_format: str | None = None
    os_type: str | None = None
    properties: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asked for the import; policy plugins decide by these."""

    user: str | None = None
    project: str | None = None
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ImportRequest:
    """One import to run: ``path`` is the staged data, which the pipeline never writes."""

    path: Path
    claims: Claims = field(default_factory=Claims)
    requester: Requester = field(default_factory=Requester)
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
