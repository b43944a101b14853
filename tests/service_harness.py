"""Start the reference image service (examples/image_service) as a real subprocess, for end-to-end tests.

:class:`ServiceProcess` writes a TOML configuration (a free port on 127.0.0.1, a private
data directory, static tokens for an admin and two members of different projects, the
importhooks settings given), runs the installed ``importhooks-image-service`` console
script with it, and waits until ``GET /versions`` answers. The test plugins of
``tests/svc_*.py`` are importable by the service because the repository is on its
``PYTHONPATH``; :data:`EVENTS_ENV` names the file the events plugin writes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from .svc_events_plugin import EVENTS_ENV

REPO = Path(__file__).resolve().parent.parent
#: The console script the example package installs into the venv (scripts/setup.sh installs it editable).
SERVICE_BIN = Path(sys.executable).parent / "importhooks-image-service"

ADMIN, ALICE, BOB = "admin-token", "alice-token", "bob-token"
#: token -> (user, project, roles)
TOKENS: dict[str, tuple[str, str, list[str]]] = {
    ADMIN: ("admin", "admin-project", ["admin", "member"]),
    ALICE: ("alice", "project-a", ["member"]),
    BOB: ("bob", "project-b", ["member"]),
}
PROJECT = {token: entry[1] for token, entry in TOKENS.items()}


def free_port() -> int:
    """A port nobody listens on now (the service binds it a moment later; :meth:`ServiceProcess.start` retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def toml_text(data: Mapping[str, Any], prefix: str = "") -> str:
    """A small TOML writer: scalars and lists first, then one ``[table]`` per nested mapping."""
    lines = [f"{json.dumps(key)} = {_toml_value(value)}" for key, value in data.items()
             if not isinstance(value, Mapping)]
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, value in data.items():
        if isinstance(value, Mapping):
            name = f"{prefix}{json.dumps(key)}"
            text += f"\n[{name}]\n" + toml_text(value, f"{name}.")
    return text


def service_settings(halt_file: Path, **overrides: Any) -> dict[str, Any]:
    """The ``[importhooks]`` table of the tests' services: small limits, the test plugins, no entry points."""
    settings: dict[str, Any] = {
        "require_os_type": True,
        "container_formats": ["bare", "ova", "compressed"],
        "max_upload_bytes": "32MiB",
        "max_upload_time": "2s",
        "max_concurrent_imports": 4,
        "max_imports_per_project": 2,
        "halt_file": str(halt_file),
        "work_dir": "work",
        "plugins": {"entry_points": False, "enabled": ["tests.svc_slow_plugin", "tests.svc_events_plugin"]},
    }
    settings.update(overrides)
    return settings


class ServiceProcess:
    """One image service process over a data directory under ``base``; start, stop, SIGKILL, start again."""

    def __init__(self, base: Path, **settings: Any) -> None:
        self.base = base
        self.data_dir = base / "data"
        self.halt_file = base / "HALT"
        self.events_file = base / "events.jsonl"
        self.log_file = base / "service.log"
        self.config_file = base / "service.toml"
        self.settings = service_settings(self.halt_file, **settings)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._write_config()

    def _write_config(self) -> None:
        tokens = {token: {"user": user, "project": project, "roles": roles}
                  for token, (user, project, roles) in TOKENS.items()}
        config = {"host": "127.0.0.1", "port": self.port, "data_dir": str(self.data_dir), "log_level": "info",
                  "tokens": tokens, "importhooks": self.settings}
        self.config_file.write_text(toml_text(config))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def staging_dir(self) -> Path:
        return self.data_dir / "staging"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "images"

    def start(self, timeout: float = 90.0) -> None:
        """Start the service and wait until it answers; a port taken meanwhile is replaced (three tries)."""
        if not SERVICE_BIN.exists():
            raise RuntimeError(f"{SERVICE_BIN} is missing: pip install -e examples/image_service (scripts/setup.sh)")
        env = {key: value for key, value in os.environ.items() if not key.startswith("OS_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env[EVENTS_ENV] = str(self.events_file)
        for _attempt in range(3):
            with open(self.log_file, "ab") as log:
                self.process = subprocess.Popen([str(SERVICE_BIN), "--config", str(self.config_file)],
                                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                cwd=self.base, env=env, start_new_session=True)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                try:
                    if httpx.get(f"{self.url}/versions", timeout=2.0).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            else:
                self.kill()
                raise RuntimeError(f"the image service did not answer within {timeout} s:\n{self.log_tail()}")
            if "address already in use" not in self.log_tail().lower():
                raise RuntimeError(f"the image service exited with {self.process.returncode}:\n{self.log_tail()}")
            self.port = free_port()
            self._write_config()
        raise RuntimeError(f"the image service found no free port:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (uvicorn shuts down gracefully), SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: the crash a restart must recover from."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def log_tail(self, size: int = 6000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-size:]
        except FileNotFoundError:
            return ""

    def client(self, token: str | None, timeout: float = 60.0) -> httpx.Client:
        headers = {"X-Auth-Token": token} if token is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def events(self) -> list[dict[str, Any]]:
        """The events the events plugin wrote, oldest first."""
        try:
            text = self.events_file.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_for_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if predicate(event):
                    return event
            time.sleep(0.1)
        raise AssertionError(f"no such event within {timeout} s; events: {self.events()[-10:]}")

    def wait_for_image(self, token: str, image_id: str, *, pending: tuple[str, ...] = ("importing",),
                       timeout: float = 180.0) -> dict[str, Any]:
        """Poll ``GET /v2/images/{id}`` until its status is not in ``pending``; the image."""
        deadline = time.monotonic() + timeout
        with self.client(token) as client:
            while True:
                response = client.get(f"/v2/images/{image_id}")
                assert response.status_code == 200, response.text
                image: dict[str, Any] = response.json()
                if image["status"] not in pending:
                    return image
                if time.monotonic() > deadline:
                    raise AssertionError(f"image {image_id} still {image['status']} after {timeout} s\n"
                                         f"{self.log_tail()}")
                time.sleep(0.2)

    def staged(self, image_id: str | None = None) -> list[Path]:
        """The files in the staging directory (of ``image_id`` only, if given), partial uploads included."""
        entries = sorted(self.staging_dir.iterdir()) if self.staging_dir.exists() else []
        return [entry for entry in entries if image_id is None or image_id in entry.name]

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
