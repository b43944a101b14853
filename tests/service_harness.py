"""Start the reference image service (examples/image_service) as a real subprocess, for end-to-end tests.

:class:`ServiceProcess` writes a TOML configuration (a free port on 127.0.0.1, a private
data directory, static tokens for an admin and two members of different projects, the
importhooks settings given), runs the installed ``importhooks-image-service`` console
script with it, and waits until ``GET /versions`` answers. The test plugins of
``tests/svc_*.py`` are importable by the service because the repository is on its
``PYTHONPATH``; :data:`EVENTS_ENV` names the file the events plugin writes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openstack
import pytest

from .svc_events_plugin import EVENTS_ENV

REPO = Path(__file__).resolve().parent.parent
#: The console script the example package installs into the venv (scripts/setup.sh installs it editable).
SERVICE_BIN = Path(sys.executable).parent / "importhooks-image-service"

GLANCE = Path(sys.executable).parent / "glance"
OPENSTACK = Path(sys.executable).parent / "openstack"
MiB = 1 << 20

ADMIN, ALICE, BOB, CAROL = "admin-token", "alice-token", "bob-token", "carol-token"
#: token -> (user, project, roles); carol shares alice's project and also holds the ``importer`` role.
TOKENS: dict[str, tuple[str, str, list[str]]] = {
    ADMIN: ("admin", "admin-project", ["admin", "member"]),
    ALICE: ("alice", "project-a", ["member"]),
    BOB: ("bob", "project-b", ["member"]),
    CAROL: ("carol", "project-a", ["member", "importer"]),
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

    def __init__(self, base: Path, *, data_dir: Path | None = None, service_config: Mapping[str, Any] | None = None,
                 **settings: Any) -> None:
        self.base = base
        self.data_dir = data_dir or base / "data"
        self.service_config = dict(service_config or {})
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
                  **self.service_config, "tokens": tokens, "importhooks": self.settings}
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


# -- real faults: a small filesystem, filled up ---------------------------------------------------


@contextmanager
def tmpfs(path: Path, size: str = "4m") -> Iterator[Path]:
    """A fresh tmpfs of ``size`` mounted on ``path`` (we are root), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def fill_up(directory: Path, name: str = "filler") -> Path:
    """Write a file in ``directory`` until its filesystem is full (ENOSPC); the file."""
    filler = directory / name
    block = b"\xff" * 65536
    with open(filler, "wb", buffering=0) as out:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    out.write(block[:size])
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


# -- the calls the tests make ----------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def new_image(client: httpx.Client, name: str, disk_format: str = "raw", container_format: str = "bare",
              **extra: Any) -> dict[str, Any]:
    body = {"name": name, "disk_format": disk_format, "container_format": container_format, "os_type": "linux"}
    body.update(extra)
    response = client.post("/v2/images", json=body)
    assert response.status_code == 201, response.text
    image: dict[str, Any] = response.json()
    return image


def stage(client: httpx.Client, image_id: str, data: bytes) -> httpx.Response:
    return client.put(f"/v2/images/{image_id}/stage", content=data,
                      headers={"Content-Type": "application/octet-stream"})


def upload_file(client: httpx.Client, image_id: str, data: bytes) -> httpx.Response:
    """``PUT /file``, the trusted upload path, as the clients send it."""
    return client.put(f"/v2/images/{image_id}/file", content=data, headers={"Content-Type": "application/octet-stream"})


PATCH_TYPE = "application/openstack-images-v2.1-json-patch"


def patch_image(client: httpx.Client, image_id: str, changes: list[dict[str, Any]]) -> httpx.Response:
    """``PATCH`` with Glance's JSON-patch media type."""
    return client.patch(f"/v2/images/{image_id}", json=changes, headers={"Content-Type": PATCH_TYPE})


def listed(client: httpx.Client, **params: str) -> set[str]:
    """The ids ``GET /v2/images`` lists with ``params``."""
    response = client.get("/v2/images", params=params)
    assert response.status_code == 200, response.text
    return {image["id"] for image in response.json()["images"]}


def start_import(client: httpx.Client, image_id: str, body: Any = None) -> httpx.Response:
    return client.post(f"/v2/images/{image_id}/import", json=body or {"method": {"name": "glance-direct"}})


def status_of(client: httpx.Client, image_id: str) -> str:
    response = client.get(f"/v2/images/{image_id}")
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def assert_error(response: httpx.Response, status: int, *words: str) -> str:
    """The response is Glance's error shape with ``status``, and its message holds ``words``; the message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status
    assert error["title"]
    for word in words:
        assert word in error["message"], error["message"]
    return str(error["message"])


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


def sdk(service: ServiceProcess, token: str) -> openstack.connection.Connection:
    return openstack.connection.Connection(auth_type="admin_token", auth={"endpoint": service.url, "token": token},
                                           image_endpoint_override=service.url)


def _close_stdin() -> None:
    os.close(0)


def cli_env(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OS_")}
    env["HOME"] = str(home)
    return env


def glance(service: ServiceProcess, token: str, home: Path, *args: str, stdin_closed: bool = True,
           ) -> subprocess.CompletedProcess[str]:
    """Run the real ``glance`` CLI against the service, with its own ``$HOME`` (its schema cache).

    stdin is *closed* (as ``glance ... <&-`` does): the CLI treats a stdin that is not a TTY
    as image data, and refuses ``--file`` together with it ("cannot use both --file and
    stdin"), which is what pytest's captured or /dev/null stdin would be.
    """
    command = [str(GLANCE), "--os-image-url", service.url, "--os-auth-token", token, *args]
    if stdin_closed:
        return subprocess.run(command, env=cli_env(home), capture_output=True, text=True, timeout=120,
                              preexec_fn=_close_stdin)
    return subprocess.run(command, env=cli_env(home), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def openstack_cli(endpoint: str, token: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``openstack`` CLI with a static token, as against a Glance without Keystone."""
    command = [str(OPENSTACK), "--os-auth-type", "admin_token", "--os-endpoint", endpoint, "--os-token", token, *args]
    return subprocess.run(command, env=cli_env(home), capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)


class RawUpload:
    """An upload over a raw socket whose body a thread sends while the test reads the answer.

    The server may answer (and close) before the body is all sent, as it does when it cuts an
    upload off: the sender then stops at its first failed send, and :meth:`answer` still reads
    what the server said. ``parts`` are ``(bytes, pause)``; :meth:`stop` ends the sending early.
    """

    def __init__(self, service: ServiceProcess, method: str, path: str, token: str, headers: Mapping[str, str],
                 parts: Iterator[tuple[bytes, float]] | list[tuple[bytes, float]], timeout: float = 60.0) -> None:
        head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{service.port}", f"X-Auth-Token: {token}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        self.sock = socket.create_connection(("127.0.0.1", service.port), timeout=timeout)
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        self.sent = 0
        self.send_error: OSError | None = None
        self._stop = threading.Event()
        self._parts = parts
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._sender.start()

    def _send(self) -> None:
        try:
            for data, pause in self._parts:
                if self._stop.is_set():
                    return
                self.sock.sendall(data)
                self.sent += len(data)
                if pause:
                    self._stop.wait(pause)
        except OSError as exc:
            self.send_error = exc

    def stop(self) -> None:
        self._stop.set()
        self._sender.join(30)

    def answer(self) -> tuple[int | None, dict[str, Any]]:
        """The status and JSON body of the answer; ``(None, {})`` if the server closed without one."""
        response = b""
        try:
            while b"\r\n\r\n" not in response:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return None, {}
                response += chunk
            header, _, body = response.partition(b"\r\n\r\n")
            lines = header.decode("latin-1").split("\r\n")
            fields = {key.strip().lower(): value.strip()
                      for key, _, value in (line.partition(":") for line in lines[1:])}
            while len(body) < int(fields.get("content-length", "0")):
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                body += chunk
        except ConnectionResetError:
            return (None, {}) if b"\r\n\r\n" not in response else (int(response.split()[1]), {})
        return int(lines[0].split()[1]), json.loads(body) if body else {}

    def close(self) -> None:
        self.stop()
        self.sock.close()


def chunk_parts(total: int, size: int = 64 << 10, pause: float = 0.0,
                fill: bytes = b"\0") -> Iterator[tuple[bytes, float]]:
    """``total`` bytes as HTTP/1.1 chunks of ``size``, each followed by ``pause`` s, then the last chunk."""
    for start in range(0, total, size):
        length = min(size, total - start)
        yield f"{length:x}\r\n".encode() + fill * length + b"\r\n", pause
    yield b"0\r\n\r\n", 0.0


@pytest.fixture(scope="session")
def reference_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The session's reference service with the default test configuration (caps 4 / 2 per project, 32 MiB
    and 2 s upload limits, the test plugins), started on first use; modules that need another configuration
    start their own."""
    svc = ServiceProcess(tmp_path_factory.mktemp("reference_service"))
    svc.start()
    yield svc
    svc.stop()
