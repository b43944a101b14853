from __future__ import annotations

from pathlib import Path

import pytest

from importhooks import Settings
from importhooks.settings import PluginSettings

from . import images
from .conftest_servers import postgres, postgres_server, rabbitmq, rabbitmq_server  # noqa: F401
from .service_harness import reference_service  # noqa: F401  (the session's reference service, on first use)
from .swift_harness import swift_cluster  # noqa: F401  (a session's real Swift, started on first use)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The pipeline's temporary-directory root; tests assert it is empty after a run."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def settings(workdir: Path) -> Settings:
    """Default settings, site entry points off (the tests' environment decides nothing)."""
    return Settings(work_dir=workdir, plugins=PluginSettings(entry_points=False))


@pytest.fixture
def raw_file(tmp_path: Path) -> Path:
    return images.raw_image(tmp_path / "disk.raw")


@pytest.fixture
def backing_qcow2(tmp_path: Path) -> Path:
    return images.qcow2_with_backing_file(tmp_path / "evil.qcow2")
