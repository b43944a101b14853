"""A real glance-api 33 for the tests: uWSGI, SQLite, filesystem stores, no Keystone.

:class:`GlanceServer` writes glance-api.conf, a paste ini whose pipeline uses the
fixed-context filter of ``tests/glance_ctx.py``, and a uWSGI ini into its own directory,
runs ``glance-manage db_sync``, starts uWSGI from ``.venv-glance`` (made by
``scripts/setup.sh``: Glance, uWSGI, python-glanceclient and this checkout, editable)
and stops it. :meth:`GlanceServer.glance` runs the real ``glance`` CLI with its stdin
closed (glanceclient takes any stdin that is not a terminal as image data).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GLANCE_VENV = REPO / ".venv-glance"
GLANCE_BIN = GLANCE_VENV / "bin"
TESTS = Path(__file__).resolve().parent
STORE = "fs1"
FINAL_TASK_STATES = ("success", "failure")

PASTE_INI = """\
[composite:glance-api-importhooks]
paste.composite_factory = glance.api:root_app_factory
/: api

[composite:api]
paste.composite_factory = glance.api:pipeline_factory
importhooks = http_proxy_to_wsgi versionnegotiation fixed-context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory

[filter:fixed-context]
paste.filter_factory = glance_ctx:FixedContextMiddleware.factory
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GlanceServer:
    """One glance-api under uWSGI in ``root``; ``plugins`` is ``image_import_plugins``."""

    def __init__(self, root: Path, *, plugins: Iterable[str] = ("importhooks",),
                 importhooks_config: Path | None = None, web_port: int | None = None) -> None:
        self.root = root
        self.plugins = list(plugins)
        self.importhooks_config = importhooks_config
        self.web_port = web_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.etc = root / "etc"
        self.staging = root / "data" / "staging"
        self.store = root / "data" / "images"
        self.log = root / "logs" / "glance-api.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.etc / "glance-api.conf"

    def write_config(self) -> None:
        for directory in (self.etc, self.staging, self.store, self.root / "data" / "tasks", self.root / "logs",
                          self.root / "lock"):
            directory.mkdir(parents=True, exist_ok=True)
        lines = [
            "[DEFAULT]", "debug = true", f"log_file = {self.log}", f"enabled_backends = {STORE}:file",
            "enabled_import_methods = [glance-direct,web-download]", f"worker_self_reference_url = {self.url}",
            "use_keystone_limits = false",
            "[database]", f"connection = sqlite:///{self.root / 'data' / 'glance.sqlite'}",
            "[glance_store]", f"default_backend = {STORE}",
            f"[{STORE}]", f"filesystem_store_datadir = {self.store}/",
            "[os_glance_staging_store]", f"filesystem_store_datadir = {self.staging}/",
            "[os_glance_tasks_store]", f"filesystem_store_datadir = {self.root / 'data' / 'tasks'}/",
            "[image_import_opts]", f"image_import_plugins = [{','.join(self.plugins)}]",
            "[paste_deploy]", "flavor = importhooks", f"config_file = {self.etc / 'glance-api-paste.ini'}",
            "[oslo_concurrency]", f"lock_path = {self.root / 'lock'}",
        ]
        if self.web_port is not None:
            lines += ["[import_filtering_opts]", f"allowed_ports = [80,443,{self.web_port}]",
                      "allowed_hosts = [127.0.0.1]"]
        if self.importhooks_config is not None:
            lines += ["[importhooks]", f"config_file = {self.importhooks_config}"]
        self.conf.write_text("\n".join(lines) + "\n")
        (self.etc / "glance-api-paste.ini").write_text(PASTE_INI)
        (self.etc / "glance-uwsgi.ini").write_text("\n".join([
            "[uwsgi]", "module = glance.wsgi.api:application", f"virtualenv = {GLANCE_VENV}",
            f"pythonpath = {TESTS}", f"pythonpath = {REPO}", f"env = OS_GLANCE_CONFIG_DIR={self.etc}",
            f"http-socket = 127.0.0.1:{self.port}", "master = true", "processes = 1", "threads = 4",
            "enable-threads = true", "lazy-apps = true", "http-raw-body = true", "http-chunked-input = true",
            "chunked-input-limit = 16777216", "http-auto-chunked = true", "http-keepalive = false",
            "buffer-size = 65535", "add-header = Connection: close", "die-on-term = true",
            f"pidfile = {self.root / 'uwsgi.pid'}",
        ]) + "\n")

    def start(self, timeout: float = 60.0) -> GlanceServer:
        self.write_config()
        subprocess.run([str(GLANCE_BIN / "glance-manage"), "--config-file", str(self.conf), "db_sync"],
                       check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
        with open(self.root / "logs" / "uwsgi.log", "ab") as out:
            self.process = subprocess.Popen(
                [str(GLANCE_BIN / "uwsgi"), "--ini", str(self.etc / "glance-uwsgi.ini")],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uwsgi exited: see {self.root / 'logs' / 'uwsgi.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/versions", timeout=2) as reply:
                    if reply.status in (200, 300):
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("glance-api did not answer in time")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    # --- the glance CLI -------------------------------------------------------------------
    def glance(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The real ``glance`` command against this server, its stdin closed (``<&-``)."""
        command = [str(GLANCE_BIN / "glance"), "--os-image-url", self.url, "--os-auth-token", "test", *args]
        done = subprocess.run(["bash", "-c", 'exec "$@" <&-', "glance", *command], capture_output=True,
                              text=True, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"glance {' '.join(args)} failed: {done.stderr}{done.stdout}")
        return done

    def create_via_import(self, name: str, disk_format: str, container_format: str, *,
                          path: Path | None = None, uri: str | None = None,
                          properties: dict[str, str] | None = None) -> str:
        """``image-create-via-import`` (glance-direct with ``path``, web-download with ``uri``); the image id."""
        args = ["image-create-via-import", "--name", name, "--disk-format", disk_format,
                "--container-format", container_format]
        for key, value in (properties or {}).items():
            args += ["--property", f"{key}={value}"]
        if uri is not None:
            args += ["--import-method", "web-download", "--uri", uri]
        else:
            assert path is not None
            args += ["--import-method", "glance-direct", "--file", str(path)]
        out = self.glance(*args).stdout
        found = re.search(r"\|\s*id\s*\|\s*([0-9a-f-]{36})\s*\|", out)
        assert found, out
        return found.group(1)

    def stage_and_import(self, image_id: str, path: Path) -> None:
        self.glance("image-stage", "--file", str(path), image_id)
        self.glance("image-import", "--import-method", "glance-direct", image_id)

    # --- the API, for waiting and looking ---------------------------------------------------
    def api(self, path: str) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", headers={"X-Auth-Token": "test"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())

    def image(self, image_id: str) -> dict[str, Any]:
        return dict(self.api(f"/v2/images/{image_id}"))

    def tasks(self, image_id: str) -> list[dict[str, Any]]:
        return list(self.api(f"/v2/images/{image_id}/tasks")["tasks"])

    def wait(self, image_id: str, count: int = 1, timeout: float = 120.0) -> dict[str, Any]:
        """The image once its ``count``-th import task ended and the image left ``importing``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks = self.tasks(image_id)
            if len(tasks) >= count and all(t["status"] in FINAL_TASK_STATES for t in tasks):
                return self.image(image_id)  # the flow's reverts ran before the task ended
            time.sleep(0.25)
        raise AssertionError(f"image {image_id} import did not end: {self.tasks(image_id)}")

    def last_task(self, image_id: str) -> dict[str, Any]:
        return max(self.tasks(image_id), key=lambda t: str(t["created_at"]))

    def staged_files(self) -> list[str]:
        return sorted(p.name for p in self.staging.iterdir())

    def stored_files(self) -> list[str]:
        return sorted(p.name for p in self.store.iterdir())

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class WebServer:
    """Serves ``directory`` on 127.0.0.1 for web-download imports."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = int(self.httpd.server_address[1])
        self.directory = directory
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> WebServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass
