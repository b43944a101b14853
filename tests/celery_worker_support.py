"""The Celery worker the Celery runner tests start as subprocesses (``celery -A tests.celery_worker_support``).

Everything comes from the environment the test sets: the broker, the queue and a base
directory shared with the test (``staging/``, ``store/``, ``work/`` and ``outcomes.sqlite``).
The ``finish`` callback writes each outcome into that SQLite database, and every start of
the import task is recorded there too (with the worker's pid), so a test sees what the
real worker processes did.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from celery.signals import task_prerun

from importhooks import Pipeline, Settings
from importhooks.server.celery_runner import TASK_NAME, WorkerSide, make_app, register_worker
from importhooks.server.runner import ImportJob, ImportOutcome
from importhooks.server.staging import StagingArea
from importhooks.settings import settings_from_mapping

BROKER = "IMPORTHOOKS_TEST_CELERY_BROKER"
QUEUE = "IMPORTHOOKS_TEST_CELERY_QUEUE"
BASE = "IMPORTHOOKS_TEST_CELERY_DIR"


def test_settings(base: Path) -> Settings:
    """The settings both sides use: the slow test plugin, no entry points, a short run budget."""
    return settings_from_mapping({"work_dir": str(base / "work"), "run_timeout": "120s",
                                  "plugins": {"entry_points": False, "enabled": ["tests.svc_slow_plugin"]}})


def connect(base: Path) -> sqlite3.Connection:
    """The outcomes database (made on first use; both workers and the test open it)."""
    db = sqlite3.connect(base / "outcomes.sqlite", timeout=30, isolation_level=None)
    db.execute("CREATE TABLE IF NOT EXISTS starts (image_id TEXT, pid INTEGER)")
    db.execute("CREATE TABLE IF NOT EXISTS outcomes (image_id TEXT, status TEXT, message TEXT, codes TEXT,"
               " pid INTEGER)")
    return db


def store(job: ImportJob, path: Path) -> None:
    shutil.copyfile(path, _base / "store" / job.image_id)


def finish(job: ImportJob, outcome: ImportOutcome) -> None:
    codes = [finding.code for finding in outcome.result.findings] if outcome.result else []
    with closing(connect(_base)) as db:
        db.execute("INSERT INTO outcomes VALUES (?, ?, ?, ?, ?)",
                   (job.image_id, outcome.status.value, outcome.message, json.dumps(codes), os.getpid()))


@task_prerun.connect
def _started(sender: Any = None, args: Any = None, **_: Any) -> None:
    if getattr(sender, "name", None) == TASK_NAME and args:
        with closing(connect(_base)) as db:
            db.execute("INSERT INTO starts VALUES (?, ?)", (str(args[0].get("image_id")), os.getpid()))


_base = Path(os.environ.get(BASE, "."))
_settings = test_settings(_base)
app = make_app(os.environ.get(BROKER, "amqp://127.0.0.1//"), _settings, queue=os.environ.get(QUEUE, "importhooks"))
if BASE in os.environ:  # imported by the test for its helpers: no pipeline, no task
    register_worker(app, WorkerSide(Pipeline.from_settings(_settings), StagingArea(_base / "staging", _settings),
                                    store, finish))
