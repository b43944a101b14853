"""web-download's fetcher: httpx with the connection pinned to the checked addresses, one hop at a time.

:func:`fetch_to_staging` checks the URL (:func:`~._url_policy.check_url`, which resolves the
host once), then asks httpx for it through a transport whose httpcore network backend
(:class:`PinnedBackend`) connects only to the addresses that were checked: httpx never
resolves the name itself, so a DNS answer that changes after the check (rebinding) changes
nothing. The request still names the host, so ``Host`` and TLS SNI (and the certificate
check) are the name's. Redirects are not followed by httpx: each ``Location`` is checked
again the same way, up to ``max_redirects`` hops. Proxies from the environment are ignored
(``trust_env`` off): a proxy would resolve names itself.

The body streams into the :class:`~importhooks.server.staging.StagingArea` undecoded
(``Accept-Encoding: identity``; a compressed body is the import pipeline's to judge), within
``max_upload_bytes`` (a ``Content-Length`` over it is refused before a byte is read; a body
without one is stopped when it passes the limit: 413) and ``max_upload_time``, counted from
the first connection over all hops: every socket read and write waits at most until that
deadline (:class:`_DeadlineStream`), so a server that trickles or stalls ends in a 408.
On any failure the staging area removes what was written: nothing is left behind.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urljoin

import httpcore
import httpx

from ... import codes
from ...errors import ImportHalted, RequestError, RequestTimeout
from ...settings import Settings
from ..staging import StagingArea
from ._url_policy import RefusedURL, Resolver, Target, check_url

log = logging.getLogger(__name__)

HALTED = codes.HALTED.summary
USER_AGENT = "importhooks-web-download"


class DownloadFailed(RequestError):
    """The remote server failed the download (an HTTP error status, a broken connection): 502."""

    status = 502


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every read and write waits at most until the download's deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def _timeout(self, timeout: float | None) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise httpcore.ReadTimeout("the download's time budget is spent")
        return remaining if timeout is None else min(timeout, remaining)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._timeout(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._timeout(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        inner = self._stream.start_tls(ssl_context, server_hostname, self._timeout(timeout))
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class PinnedBackend(httpcore.NetworkBackend):
    """httpcore's network backend for one checked :class:`Target`: it connects to its addresses only.

    Asked for any other host or port (which cannot happen with redirects off), it refuses
    instead of resolving.
    """

    def __init__(self, target: Target, deadline: float) -> None:
        self.target = target
        self.deadline = deadline
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        if host.strip("[]").lower() != self.target.host.strip("[]") or port != self.target.port:
            raise httpcore.ConnectError("not the host that was checked")
        error: Exception = httpcore.ConnectError("no address")
        for address in self.target.addresses:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise httpcore.ConnectTimeout("the download's time budget is spent")
            try:  # an address literal: create_connection looks nothing up
                stream = self._inner.connect_tcp(str(address), port, min(timeout or remaining, remaining),
                                                 local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            return _DeadlineStream(stream, self.deadline)
        raise error


class PinnedTransport(httpx.HTTPTransport):
    """httpx's own transport, whose connection pool uses a :class:`PinnedBackend`.

    httpx builds its httpcore pool in ``HTTPTransport.__init__`` without a way to pass a network
    backend, so the pool (``_pool``, which ``handle_request`` uses) is replaced by one that has it;
    tests/test_web_download_ssrf.py's rebinding and SNI tests fail if a new httpx stops using it.
    """

    def __init__(self, backend: PinnedBackend) -> None:
        super().__init__(trust_env=False)
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):  # fail closed, never unpinned
            raise RuntimeError("this httpx keeps its connection pool elsewhere: web-download cannot pin connections")
        self._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(trust_env=False),
                                             max_connections=1, network_backend=backend)


def _declared(response: httpx.Response) -> int | None:
    text = response.headers.get("content-length")
    if text is None or "transfer-encoding" in response.headers:
        return None
    return int(text) if text.isdigit() else None  # h11 has already refused a malformed one


def _next_url(base: str, location: str) -> str:
    """Where a redirect points, resolved against the URL that answered; :class:`RefusedURL` if unreadable."""
    try:
        return urljoin(base, location)
    except ValueError:
        raise RefusedURL("The URL cannot be used for web-download: it redirects to something that is not a "
                         "valid URL.", "syntax") from None


def fetch_to_staging(url: str, image_id: str, staging: StagingArea, settings: Settings,
                     resolver: Resolver = socket.getaddrinfo, halted: Callable[[], bool] | None = None) -> int:
    """Download ``url`` as the staged data of ``image_id``; the bytes staged.

    Raises :class:`~._url_policy.RefusedURL` (400) for a URL or a redirect it will not follow,
    :class:`~importhooks.errors.PayloadTooLarge` (413), :class:`RequestTimeout` (408),
    :class:`DownloadFailed` (502) or the staging area's :class:`~importhooks.errors.BadRequest`
    (a body shorter than its ``Content-Length``), or :class:`~importhooks.errors.ImportHalted` (503)
    when ``halted`` (the kill switch, asked before each hop and chunk) turns true. Nothing is staged
    after a failure.
    """
    def observe(chunk: bytes) -> None:
        if halted is not None and halted():
            raise ImportHalted(HALTED)

    policy = settings.web_download
    deadline = time.monotonic() + settings.max_upload_time
    current = url
    for hop in range(policy.max_redirects + 1):
        observe(b"")
        target = check_url(current, policy, resolver)
        log.info("web-download of image %s: hop %d to host %r port %d", image_id, hop, target.host, target.port)
        headers = {"Accept-Encoding": "identity", "User-Agent": USER_AGENT}
        timeout = httpx.Timeout(settings.max_upload_time).as_dict()
        request = httpx.Request("GET", target.url, headers=headers, extensions={"timeout": timeout})
        try:  # the transport alone: no client-side redirects, cookies, proxies or environment
            with PinnedTransport(PinnedBackend(target, deadline)) as transport:
                reply = transport.handle_request(request)
                try:
                    if reply.is_redirect:
                        current = _next_url(target.url, reply.headers.get("location", ""))
                        continue
                    if reply.status_code != 200:
                        raise DownloadFailed(f"The download failed: the server answered HTTP {reply.status_code}.")
                    return staging.receive_sync(image_id, reply.iter_raw(), declared_size=_declared(reply),
                                                 observe=observe)
                finally:
                    reply.close()
        except httpx.TimeoutException:
            staging.discard(image_id)
            raise RequestTimeout(f"The download took longer than this cloud allows "
                                 f"({settings.max_upload_time:g} s).") from None
        except httpx.HTTPError:
            staging.discard(image_id)
            raise DownloadFailed("The download failed: the server could not be reached, or its answer "
                                 "was cut short or was not valid HTTP.") from None
    raise RefusedURL(f"The URL cannot be used for web-download: it redirects more than {policy.max_redirects} "
                     "times.", "redirects")
