"""Real HTTP servers on loopback for the web-download tests: honest, redirecting, lying, slow and endless.

:class:`WebServer` is a threaded :mod:`http.server` on a real socket (``127.0.0.1`` or any
other loopback address, e.g. ``127.0.0.2``), serving routes the test adds: :meth:`body`,
:meth:`redirect`, :meth:`status`, :meth:`lying`, :meth:`trickle`, :meth:`endless`,
:meth:`stall`. It records every request's path and ``Host`` header in :attr:`hits`.
:class:`TLSServer` only shakes hands (with a :func:`self_signed` certificate) and records the
SNI name the client sent.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Route = Callable[[BaseHTTPRequestHandler], None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.server.hits.append((self.path, self.headers.get("Host", "")))
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        try:
            route(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up: what the slow and endless routes expect

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[str, Route]
    hits: list[tuple[str, str]]


class WebServer:
    """One HTTP server on ``host`` (a loopback address), on a port the system picks."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.stopping = threading.Event()
        self._server = _Server((host, 0), _Handler)
        self._server.routes = {}
        self._server.hits = []
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    @property
    def hits(self) -> list[tuple[str, str]]:
        return self._server.hits

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def close(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def route(self, path: str, route: Route) -> str:
        self._server.routes[path] = route
        return self.url(path)

    # -- routes ----------------------------------------------------------------------------

    def body(self, path: str, data: bytes, *, chunked: bool = False, headers: dict[str, str] | None = None,
             piece: int = 65536) -> str:
        """``data``, with its Content-Length (or chunked, in chunks of ``piece`` bytes, each flushed)."""
        def serve(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(200)
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            if chunked:
                handler.send_header("Transfer-Encoding", "chunked")
                handler.end_headers()
                for start in range(0, len(data), piece):
                    chunk = data[start:start + piece]
                    handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    handler.wfile.flush()
                handler.wfile.write(b"0\r\n\r\n")
            else:
                handler.send_header("Content-Length", str(len(data)))
                handler.end_headers()
                handler.wfile.write(data)
        return self.route(path, serve)

    def redirect(self, path: str, location: str, code: int = 302) -> str:
        def serve(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(code)
            handler.send_header("Location", location)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        return self.route(path, serve)

    def status(self, path: str, code: int) -> str:
        def serve(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(code)
            handler.send_header("Content-Length", "2")
            handler.end_headers()
            handler.wfile.write(b"no")
        return self.route(path, serve)

    def lying(self, path: str, data: bytes, declared: int) -> str:
        """Declares ``declared`` bytes, sends ``data`` and closes the connection."""
        def serve(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(200)
            handler.send_header("Content-Length", str(declared))
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(data)
            handler.wfile.flush()
            handler.close_connection = True
        return self.route(path, serve)

    def trickle(self, path: str, piece: bytes = b"x", interval: float = 0.2, total: int = 1 << 20) -> str:
        """Declares ``total`` bytes and sends ``piece`` every ``interval`` seconds."""
        def serve(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(200)
            handler.send_header("Content-Length", str(total))
            handler.end_headers()
            while not self.stopping.is_set():
                handler.wfile.write(piece)
                handler.wfile.flush()
                time.sleep(interval)
        return self.route(path, serve)

    def endless(self, path: str, piece: bytes = b"\0" * 65536) -> str:
        """A chunked body that never ends."""
        def serve(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(200)
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            while not self.stopping.is_set():
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        return self.route(path, serve)

    def stall(self, path: str) -> str:
        """Reads the request and answers nothing until the server closes."""
        def serve(handler: BaseHTTPRequestHandler) -> None:
            self.stopping.wait(30)
        return self.route(path, serve)


@contextmanager
def web_server(host: str = "127.0.0.1") -> Iterator[WebServer]:
    server = WebServer(host)
    try:
        yield server
    finally:
        server.close()


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` and its key (PEM files), made with cryptography."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TLSServer:
    """A TLS listener on 127.0.0.1 that records the SNI name of each handshake, then closes."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.names: list[str | None] = []
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.sni_callback = lambda sock, name, ctx: self.names.append(name)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                try:
                    with self.context.wrap_socket(conn, server_side=True):
                        pass
                except (OSError, ssl.SSLError):
                    pass

    def close(self) -> None:
        self._sock.close()
