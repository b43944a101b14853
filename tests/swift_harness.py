"""A real single-node OpenStack Swift on loopback, for the swift-local tests.

:func:`start_swift` builds one Swift in a scratch directory and starts it: a proxy with
tempauth, an account, a container and an object server (``workers = 0``: one process
each, nothing forked), and the memcached tempauth needs, all on free loopback ports.
Rings (one replica, 16 partitions, one device) are built with Swift's own
``RingBuilder``; the one device is a plain directory (``mount_check = false``); Swift's
``swift.conf`` is the harness's own, not ``/etc/swift/swift.conf``. It returns once every
server answers and both test accounts can log in (3 to 10 s, more on a busy machine), and
:meth:`SwiftCluster.stop` ends every process it started, by its id; a test process that
dies outright takes them with it (PDEATHSIG).

Swift comes from Debian's packages (scripts/setup.sh installs them), whose modules only
Debian's ``/usr/bin/python3`` has; the servers are started as that interpreter running
this file (``serve`` and ``rings`` below) in isolated mode (``-I``: neither tests/ nor the
environment's PYTHONPATH on its path), so this module uses the standard library alone.

The :func:`swift_cluster` fixture (session scope, made available to every test module by
tests/conftest.py) starts the cluster the first time a test asks for it and stops it at
the end of the session.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SWIFT_PYTHON = "/usr/bin/python3"
KINDS = ("account", "container", "object")  # the storage servers, started before the proxy
READY_TIMEOUT = 60.0  # a cold first start measured 4.7 s; CI machines may be slower
STOP_TIMEOUT = 10.0
START_ATTEMPTS = 3  # a free port another process took before a server bound it: start again on new ones
PR_SET_PDEATHSIG = 1
POLICY = "importhooks-tests"  # the storage policy of the harness's swift.conf, which /info shows


@dataclass(frozen=True)
class Account:
    """A tempauth account (the project) and its one user."""

    name: str
    user: str
    key: str

    @property
    def login(self) -> str:
        return f"{self.name}:{self.user}"


#: Two projects, each with its own user: the tests read as one and are refused as the other.
ALPHA = Account("alpha", "alice", "alice-secret")
BETA = Account("beta", "bob", "bob-secret")
ACCOUNTS = (ALPHA, BETA)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port nothing listens on now."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_conf(root: Path, port: int, log_port: int, body: str) -> str:
    return (f"[DEFAULT]\nbind_ip = 127.0.0.1\nbind_port = {port}\nworkers = 0\nswift_dir = {root / 'etc'}\n"
            f"devices = {root / 'srv'}\nmount_check = false\n"
            # Swift logs to syslog; with no /dev/log it would send to 127.0.0.1:514: keep it on a dead port.
            f"log_udp_host = 127.0.0.1\nlog_udp_port = {log_port}\n\n{body}")


def _proxy_body(memcached_port: int) -> str:
    users = "".join(f"user_{a.name}_{a.user} = {a.key} .admin\n" for a in ACCOUNTS)
    # Large objects (slo, dlo) and symlinks as a production proxy has them: each may make one GET read
    # other objects, and Swift checks those reads against the same token.
    filters = "".join(f"[filter:{name}]\nuse = egg:swift#{name}\n\n" for name in
                      ("catch_errors", "gatekeeper", "healthcheck", "listing_formats", "copy", "slo", "dlo",
                       "versioned_writes", "symlink"))
    return ("[pipeline:main]\npipeline = catch_errors gatekeeper healthcheck cache listing_formats tempauth copy "
            "slo dlo versioned_writes symlink proxy-server\n\n"
            "[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n\n"
            f"[filter:cache]\nuse = egg:swift#memcache\nmemcache_servers = 127.0.0.1:{memcached_port}\n\n"
            f"[filter:tempauth]\nuse = egg:swift#tempauth\n{users}\n{filters}")


@dataclass
class SwiftCluster:
    """A running single-node Swift; see the module doc."""

    root: Path
    ports: dict[str, int]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['proxy']}/auth/v1.0"

    def storage_url(self, account: Account) -> str:
        """The account's storage URL, as tempauth hands it out."""
        return f"http://127.0.0.1:{self.ports['proxy']}/v1/AUTH_{account.name}"

    def login(self, account: Account) -> tuple[str, str]:
        """Log in as the account's user: (storage URL, token), tempauth's v1 auth."""
        request = urllib.request.Request(self.auth_url, headers={"X-Auth-User": account.login,
                                                                 "X-Auth-Key": account.key})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.headers["X-Storage-Url"], response.headers["X-Auth-Token"]

    def request(self, method: str, account: Account, path: str, data: bytes | None = None,
                headers: dict[str, str] | None = None, query: str = "") -> int:
        """One request as ``account``'s user to ``path`` (quoted here) under its storage URL; the status."""
        storage_url, token = self.login(account)
        url = f"{storage_url}/{urllib.parse.quote(path, safe='/')}" + (f"?{query}" if query else "")
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"X-Auth-Token": token, **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    def put(self, account: Account, container: str, name: str, data: bytes,
            headers: dict[str, str] | None = None, query: str = "") -> None:
        """Create ``container`` (if need be) and store ``data`` as ``name`` in it, as ``account``'s user."""
        status = self.request("PUT", account, container, b"")
        assert status in (201, 202), f"container PUT answered {status}"
        status = self.request("PUT", account, f"{container}/{name}", data, headers, query)
        assert status == 201, f"object PUT answered {status}"

    def revoke(self, token: str) -> None:
        """Drop a tempauth token from memcached: to Swift it is then what an expired one is, unknown."""
        # tempauth keys a token as RESELLER_PREFIX/token/TOKEN (prefix AUTH_), stored under its MD5.
        key = hashlib.md5(f"AUTH_/token/{token}".encode(), usedforsecurity=False).hexdigest()
        with socket.create_connection(("127.0.0.1", self.ports["memcached"]), timeout=5) as sock:
            sock.sendall(f"delete {key}\r\n".encode("ascii"))
            answer = sock.recv(64)
        assert answer.startswith(b"DELETED"), answer

    def alive(self) -> list[str]:
        """The servers still running."""
        return [name for name, process in self.processes.items() if process.poll() is None]

    def stop(self) -> None:
        """SIGTERM every process started, by id; SIGKILL what is still there after STOP_TIMEOUT."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def info(self) -> dict[str, Any]:
        """The proxy's /info document (what the cluster is and allows)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['proxy']}/info", timeout=10) as response:
            return dict(json.load(response))

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.root / "log" / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the test process dies, even by SIGKILL (Linux's PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _launch(cluster: SwiftCluster, name: str, argv: list[str], user: str | None = None) -> None:
    log = (cluster.root / "log" / f"{name}.log").open("wb")
    with log:
        # Popen changes the user before it calls preexec_fn: a later change would clear PDEATHSIG.
        cluster.processes[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                                   stderr=subprocess.STDOUT, cwd=cluster.root,
                                                   preexec_fn=_die_with_parent, user=user)


def _answers(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> bool:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status) == 200
    except (OSError, urllib.error.HTTPError):
        return False


def _wait_ready(cluster: SwiftCluster) -> None:
    """Every storage server answers OPTIONS, the proxy its healthcheck, and both users can log in.

    An auth 200 alone is not enough (it does not touch storage): the object server may still be starting.
    """
    deadline = time.monotonic() + READY_TIMEOUT
    pending = [*(f"http://127.0.0.1:{cluster.ports[kind]}/" for kind in KINDS),
               f"http://127.0.0.1:{cluster.ports['proxy']}/healthcheck"]
    while time.monotonic() < deadline:
        dead = [name for name, process in cluster.processes.items() if process.poll() is not None]
        if dead:
            raise _ServerDied(f"Swift's {dead[0]} exited while starting:\n{cluster.log_tail(dead[0])}")
        pending = [url for url in pending if not _answers(url, "OPTIONS" if "healthcheck" not in url else "GET")]
        if not pending and all(_answers(cluster.auth_url, headers={"X-Auth-User": a.login, "X-Auth-Key": a.key})
                               for a in ACCOUNTS):
            return
        time.sleep(0.1)
    raise RuntimeError(f"Swift was not ready after {READY_TIMEOUT:g} s; proxy log:\n{cluster.log_tail('proxy')}")


def check_installed() -> None:
    """Fail with the fix if Swift or memcached is missing (scripts/setup.sh installs both)."""
    probe = subprocess.run([SWIFT_PYTHON, "-c", "import swift.common.ring"], capture_output=True, check=False)
    if probe.returncode != 0 or shutil.which("memcached") is None:
        raise RuntimeError("OpenStack Swift (Debian's swift-proxy, swift-account, swift-container, swift-object) "
                           "and memcached are needed: run scripts/setup.sh")


class _ServerDied(RuntimeError):
    """A server exited while starting (e.g. its port was taken meanwhile)."""


def start_swift(root: Path) -> SwiftCluster:
    """Configure and start a Swift in ``root`` (an empty scratch directory); stopped again if it fails to start."""
    check_installed()
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return _start(root / f"attempt-{attempt}")
        except _ServerDied:
            if attempt == START_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _start(root: Path) -> SwiftCluster:
    for sub in ("etc", "srv/d1", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("proxy", *KINDS, "memcached")}
    log_port = free_port(socket.SOCK_DGRAM)
    cluster = SwiftCluster(root, ports)
    etc = root / "etc"
    (etc / "swift.conf").write_text("[swift-hash]\nswift_hash_path_prefix = importhooks-tests\n"
                                    "swift_hash_path_suffix = importhooks-tests\n\n"
                                    f"[storage-policy:0]\nname = {POLICY}\ndefault = yes\n")
    for kind in KINDS:
        body = f"[pipeline:main]\npipeline = {kind}-server\n\n[app:{kind}-server]\nuse = egg:swift#{kind}\n"
        (etc / f"{kind}-server.conf").write_text(_server_conf(root, ports[kind], log_port, body))
    (etc / "proxy-server.conf").write_text(_server_conf(root, ports["proxy"], log_port,
                                                        _proxy_body(ports["memcached"])))
    here = str(Path(__file__).resolve())
    subprocess.run([SWIFT_PYTHON, "-I", here, "rings", str(etc), *(str(ports[kind]) for kind in KINDS)],
                   check=True, capture_output=True, timeout=60)
    try:
        memcached = ["memcached", "-l", "127.0.0.1", "-p", str(ports["memcached"]), "-U", "0", "-m", "16", "-t", "1"]
        # memcached will not run as root without -u, and dropping to that user itself would clear PDEATHSIG.
        _launch(cluster, "memcached", memcached, user="memcache" if os.geteuid() == 0 else None)
        for kind in (*KINDS, "proxy"):
            _launch(cluster, kind, [SWIFT_PYTHON, "-I", here, "serve", kind, str(etc / f"{kind}-server.conf")])
        _wait_ready(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def running_swift(root: Path) -> Iterator[SwiftCluster]:
    """:func:`start_swift` for a ``with`` block; every process is gone when it ends."""
    cluster = start_swift(root)
    try:
        yield cluster
    finally:
        cluster.stop()
        assert not cluster.alive(), f"Swift processes still running: {cluster.alive()}"


# --- pytest fixture -------------------------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # run by Debian's python3 as a launcher (below): no pytest there
    pass
else:
    @pytest.fixture(scope="session")
    def swift_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwiftCluster]:
        """One real Swift for the whole session, started the first time a test asks for it."""
        with running_swift(tmp_path_factory.mktemp("swift")) as cluster:
            yield cluster


# --- run by Debian's python3 -----------------------------------------------------------------------------------
def _build_rings(etc: Path, ports: list[int]) -> None:
    from swift.common.ring import RingBuilder  # Debian's python3 only

    for kind, port in zip(KINDS, ports, strict=True):
        builder = RingBuilder(4, 1, 1)  # 2**4 partitions, 1 replica, min_part_hours 1
        builder.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1", "port": port, "device": "d1",
                         "weight": 1.0})
        builder.rebalance()
        builder.get_ring().save(str(etc / f"{kind}.ring.gz"))


def _serve(kind: str, conf: str) -> None:
    """Run Debian's swift-KIND-server on ``conf``, with the swift.conf beside it instead of /etc/swift's."""
    from swift.common.utils import set_swift_dir  # Debian's python3 only

    # Swift reads swift.conf from /etc/swift unless told: the hash prefix and suffix now, the storage
    # policies and constraints when the server script first imports them.
    set_swift_dir(str(Path(conf).parent))
    sys.argv = [f"swift-{kind}-server", conf, "--verbose"]
    runpy.run_path(f"/usr/bin/swift-{kind}-server", run_name="__main__")


if __name__ == "__main__":
    if sys.argv[1] == "rings":
        _build_rings(Path(sys.argv[2]), [int(port) for port in sys.argv[3:]])
    elif sys.argv[1] == "serve":
        _serve(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"usage: {sys.argv[0]} rings ETC PORT... | serve KIND CONF")
