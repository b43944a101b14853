"""What an image record keeps of its import job, to run it again after a restart."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from importhooks.request import Claims, ImportRequest, Requester
from importhooks.server.runner import ImportJob
from importhooks.server.staging import StagingArea


def job_to_json(job: ImportJob) -> dict[str, Any]:
    """The record's copy of an import job."""
    request = job.request
    claims = request.claims
    return {
        "request_id": request.request_id,
        "requester": {"user": request.requester.user, "project": request.requester.project,
                      "roles": list(request.requester.roles)},
        "claims": {"disk_format": claims.disk_format, "container_format": claims.container_format,
                   "os_type": claims.os_type, "properties": dict(claims.properties)},
    }


def job_from_json(image_id: str, staging: StagingArea, data: Mapping[str, Any]) -> ImportJob | None:
    """The job :func:`job_to_json` saved; ``None`` if the record's copy is unusable."""
    try:
        who, said = data["requester"], data["claims"]
        claims = Claims(disk_format=said["disk_format"], container_format=said["container_format"],
                        os_type=said["os_type"], properties=MappingProxyType(dict(said["properties"])))
        requester = Requester(who["user"], who["project"], tuple(who["roles"]))
        path = staging.claimed_path(image_id)
        return ImportJob(image_id, ImportRequest(path, claims, requester, str(data["request_id"])))
    except (KeyError, TypeError, ValueError):
        return None
