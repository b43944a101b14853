"""Throwaway RabbitMQ and PostgreSQL servers for the tests, started from Debian's packages.

Each server lives in its own temporary directory (data, logs, sockets, Erlang cookie),
listens on 127.0.0.1 only, on ports picked free at start, and runs in its own session
so that stopping it leaves nothing behind. ``stop()`` keeps the data and ``start()``
boots the same node or cluster again: the restart helpers of the fault tests.
``close()`` stops the server and removes its directory.

Facts behind the choices (boot times, root, epmd, wrappers): shared/notes/servers.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
RABBITMQ_BOOT_TIMEOUT = 90.0  # median boot is ~6 s; two nodes on 2 busy cores took 9 s each
POSTGRES_BOOT_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class ServerError(RuntimeError):
    """A server did not start or stop; the message carries the end of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _dies_with_us(sig: int) -> Any:
    """A ``preexec_fn``: the child gets ``sig`` when this process dies, even by SIGKILL (a killed test
    run leaves no server behind). Set after Popen's user switch, which would clear it."""

    def arm() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG

    return arm


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-limit:]
    except OSError:
        return "(no log)"


def _stop_tree(process: subprocess.Popen[Any], sig: int, timeout: float = STOP_TIMEOUT) -> None:
    """Send ``sig`` to the process and wait; then SIGKILL whatever of its tree is left, and wait for that too.

    The tree is taken before the signal: postgres' helpers start sessions of their own,
    so neither the session nor the process group holds them all.
    """
    tree = _tree(process.pid)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    tree |= _tree(process.pid) if process.poll() is None else set()
    for pid in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout)
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in tree):
        if time.monotonic() > deadline:
            raise ServerError(f"processes still run after stop: {sorted(p for p in tree if _alive(p))}")
        time.sleep(0.05)


def _proc_stat(pid: int) -> list[str] | None:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _tree(root: int) -> set[int]:
    """``root`` and its live descendants, and the members of its session (sid == root)."""
    parents: dict[int, int] = {}
    found = {root} if _alive(root) else set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _proc_stat(int(entry.name))) and fields[0] not in ("Z", "X"):
            parents[int(entry.name)] = int(fields[1])
            if int(fields[3]) == root:
                found.add(int(entry.name))
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        grew = bool(children)
        found |= children
    return found


class RabbitMQServer:
    """One RabbitMQ node (``rabbitmq-server`` from /usr/lib/rabbitmq/bin) and its own epmd."""

    def __init__(self, root: Path, name: str = "importhooks") -> None:
        self.root = root
        self.node = f"{name}@localhost"  # fixed: the node's data directory is named after it
        self.port, self.dist_port, self.epmd_port, self.ctl_port = (free_port() for _ in range(4))
        self._server: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        for sub in ("mnesia", "log", "home"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        # consumer_timeout above any test's longest task (notes: the node-wide 30 min default kills long tasks).
        (root / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
                                            "loopback_users.guest = true\nconsumer_timeout = 3600000\n")
        (root / "enabled_plugins").write_text("[].\n")
        (root / "advanced.config").write_text("[].\n")
        (root / "rabbitmq-env.conf").write_text("")

    @property
    def url(self) -> str:
        """The AMQP URL (user guest, which RabbitMQ lets in from localhost only)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def transport_url(self) -> str:
        """The same broker as an oslo.messaging transport URL."""
        return f"rabbit://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        """The environment the server and the CLI tools share (same HOME: same Erlang cookie)."""
        root, interface = self.root, "-kernel inet_dist_use_interface {127,0,0,1}"
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": str(root / "home"),
            "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port), "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.ctl_port), "RABBITMQ_CTL_DIST_PORT_MAX": str(self.ctl_port),
            "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(root / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"), "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_PID_FILE": str(root / "rabbit.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": interface, "RABBITMQ_CTL_ERL_ARGS": interface,
        }

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.poll() is None

    def start(self) -> None:
        """Boot the node (on its existing data, after :meth:`stop`) and wait until AMQP logins work."""
        if self.running:
            return
        if self._epmd is None or self._epmd.poll() is not None:
            # Our own epmd in the foreground: one that beam starts itself daemonises and outlives the node.
            self._epmd = subprocess.Popen(["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          env=self.env(), start_new_session=True,
                                          preexec_fn=_dies_with_us(signal.SIGTERM))
        with open(self.root / "server.out", "ab") as out:
            self._server = subprocess.Popen([str(RABBITMQ_BIN / "rabbitmq-server")], env=self.env(), cwd=self.root,
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=_dies_with_us(signal.SIGTERM))
        self._wait_ready()

    def _wait_ready(self) -> None:
        import amqp  # Celery's and kombu's AMQP client

        assert self._server is not None
        deadline = time.monotonic() + RABBITMQ_BOOT_TIMEOUT
        while True:
            if self._server.poll() is not None:  # a bad config ends the wrapper with rc 0: exited is failed
                self.stop()
                raise ServerError(f"rabbitmq-server exited before it was ready:\n{_tail(self.root / 'server.out')}")
            try:
                connection = amqp.Connection(f"127.0.0.1:{self.port}", userid="guest", password="guest",
                                             connect_timeout=2)
                connection.connect()
                connection.close()
                return
            except (OSError, amqp.exceptions.AMQPError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerError(f"RabbitMQ not ready in {RABBITMQ_BOOT_TIMEOUT:g} s:\n"
                                      f"{_tail(self.root / 'server.out')}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop the node cleanly (SIGTERM to the wrapper stops beam), keeping its data; epmd stays."""
        if self._server is not None:
            _stop_tree(self._server, signal.SIGTERM)
            self._server = None

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n NODE ARGS`` against this node; its output."""
        done = subprocess.run([str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args], env=self.env(),
                              cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode:
            raise ServerError(f"rabbitmqctl {' '.join(args)}: rc {done.returncode}: {done.stderr[-2000:]}")
        return done.stdout

    def close(self) -> None:
        """Stop the node and its epmd; the caller removes the directory."""
        try:
            self.stop()
        finally:
            if self._epmd is not None:
                _stop_tree(self._epmd, signal.SIGTERM)
                self._epmd = None


class PostgresServer:
    """One PostgreSQL 15 cluster, run in the foreground as a non-root user (postgres refuses root)."""

    def __init__(self, root: Path, database: str = "importhooks", user: str = "importhooks",
                 password: str = "importhooks") -> None:
        self.root = root
        self.port = free_port()
        self.database, self.user, self.password = database, user, password
        self.data, self.socket_dir = root / "data", root / "sock"
        self._process: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:
            account = pwd.getpwnam("postgres")
            self._as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            os.chown(root, account.pw_uid, account.pw_gid)
            os.chown(self.socket_dir, account.pw_uid, account.pw_gid)
        self._run([str(POSTGRES_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                   "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
        self._initialised = False

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the test database (psycopg 3)."""
        return f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(argv, cwd=self.root, capture_output=True, text=True, timeout=120, check=False,
                              **self._as)
        if done.returncode:
            raise ServerError(f"{Path(argv[0]).name}: rc {done.returncode}: {done.stderr[-2000:]}")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the cluster (its data kept across :meth:`stop`) and wait until it takes connections."""
        if self.running:
            return
        argv = [str(POSTGRES_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.socket_dir), "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with open(self.root / "postgres.log", "ab") as log:
            self._process = subprocess.Popen(argv, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True, preexec_fn=_dies_with_us(signal.SIGINT),
                                             **self._as)
        deadline = time.monotonic() + POSTGRES_BOOT_TIMEOUT
        while not self._ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"PostgreSQL did not start:\n{_tail(self.root / 'postgres.log')}")
            time.sleep(0.05)
        if not self._initialised:
            self._psql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'",
                       f"CREATE DATABASE {self.database} OWNER {self.user}")
            self._initialised = True

    def _ready(self) -> bool:
        done = subprocess.run([str(POSTGRES_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                              capture_output=True, timeout=10, check=False)
        return done.returncode == 0

    def _psql(self, *statements: str) -> None:
        argv = [str(POSTGRES_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir),
                "-p", str(self.port), "-U", "postgres", "-d", "postgres"]
        for statement in statements:
            argv += ["-c", statement]
        self._run(argv)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), keeping the data."""
        if self._process is not None:
            _stop_tree(self._process, signal.SIGINT)
            self._process = None

    def close(self) -> None:
        self.stop()


class ServerDir:
    """A temporary directory other users can traverse (postgres runs as its own user)."""

    def __init__(self, prefix: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self.path.chmod(0o755)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
