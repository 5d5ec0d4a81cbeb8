"""HTTP(S) fetching that cannot be pointed at our own network.

Every hop: :func:`check_url` (scheme, credentials, port, length, literal addresses) -> resolve the host
ONCE with ``getaddrinfo`` -> refuse the host if ANY resolved address is forbidden -> connect to one of the
checked addresses (no second lookup, so DNS rebinding cannot swap it) -> for https, TLS with SNI and
certificate verification against the host *name* -> ``Host`` header with the name. Redirects are
followed by hand, each through the same steps, at most ``max_redirects`` times.

Why ``http.client`` and not urllib3: everything urllib3 adds on top (pools keyed by host, retries,
redirects, its own DNS lookup) must be switched off to pin the checked address and re-check each hop;
what is left is ``http.client`` plus a TLS wrap, which the standard library gives with no indirection.
Owning the socket and the buffered reader lets us (a) arm a total-deadline watchdog on the socket before
the TLS handshake and (b) see bytes a server sends beyond its ``Content-Length``.

Limits: the body is read in chunks and capped at ``max_bytes`` whatever ``Content-Length`` says (an
announced size over the cap fails at once; bytes beyond the announced size -> ``too-large``, detected in
what has already arrived, never read further). ``connect_timeout_s`` bounds TCP+TLS set-up,
``read_timeout_s`` each socket read, and ``total_timeout_s`` the whole fetch including redirects: a
watchdog timer shuts the socket down at the deadline, so a slow-drip server gets ``timeout`` (transient).
Name resolution uses the system resolver's own timeouts (``getaddrinfo`` cannot be interrupted). We ask
for ``Accept-Encoding: identity`` and never decompress: a server that compresses anyway hands the decoder
bytes it rejects, instead of a decompression bomb. Content-Type is reported, never trusted.

Status codes: 2xx -> the body; 404/410 -> ``not-found``; 401/403/451 -> ``forbidden`` (permanent);
408/425/429/5xx -> ``fetch-failed`` (transient, ``Retry-After`` -> ``retry_after_s``); other codes ->
``fetch-failed`` (permanent). DNS: NXDOMAIN / no address (``EAI_NONAME``, ``EAI_NODATA``) -> permanent
``fetch-failed`` (a name that does not exist will not start to exist within our retry window, and
retrying only delays the caller's answer); any other resolver failure (``EAI_AGAIN``...) -> transient.
Connection refused/reset/unreachable, a body shorter than announced or a reply that is not HTTP ->
transient ``fetch-failed``; an invalid TLS certificate -> permanent ``fetch-failed``; more than
``max_redirects`` redirects -> ``invalid-source``. Webhooks: :func:`make_poster` (same policy, no redirects).
"""

from __future__ import annotations

import email.utils
import functools
import http.client
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from urllib.parse import urljoin

from producers.errors import ErrorCode, FakesakeError, PermanentError, TransientError, is_retryable_status
from worker.core.ports import Fetched
from worker.fetch.limits import CHUNK_BYTES, Deadline, read_capped
from worker.fetch.policy import FetchPolicy
from worker.fetch.ssrf import CheckedUrl, IPAddress, check_url, forbidden_reason, redact_url

__all__ = [
    "HttpFetcher",
    "HttpReply",
    "http_request",
    "make_poster",
    "parse_retry_after",
    "redact_url",
    "resolve_checked",
]

log = logging.getLogger(__name__)

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DNS_PERMANENT = frozenset(
    getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY") if hasattr(socket, name)
)
_MAX_RETRY_AFTER_S = 24 * 3600.0


@dataclass(frozen=True)
class HttpReply:
    """One final (non-redirect) response: status, headers, body (capped), and where it came from."""

    status: int
    headers: Message
    body: bytes
    url: str  # the final URL (unredacted: the caller decides what to show)
    address: str
    redirects: int = 0


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), clamped to [0, 1 day]."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)


def resolve_checked(target: CheckedUrl, policy: FetchPolicy) -> list[IPAddress]:
    """Resolve ``target.host`` once and check EVERY address; one forbidden address refuses the host
    (a name mixing public and private records is an attack, not a fallback)."""
    if target.address is not None:
        return [target.address]  # already checked by check_url
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        message = f"cannot resolve {target.host!r} ({exc.strerror}): {redact_url(target.url)}"
        if exc.errno in _DNS_PERMANENT:
            raise PermanentError(ErrorCode.FETCH_FAILED, message) from exc
        raise TransientError(ErrorCode.FETCH_FAILED, message) from exc
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]))
        if address not in addresses:
            addresses.append(address)
    for address in addresses:
        reason = forbidden_reason(address, policy.allow_private)
        if reason is not None:
            raise PermanentError(
                ErrorCode.FORBIDDEN_ADDRESS,
                f"{target.host} resolves to {address}, which is not allowed: {reason}; "
                "FAKESAKE_FETCH__ALLOW_PRIVATE lists exceptions",
            )
    if not addresses:
        raise PermanentError(ErrorCode.FETCH_FAILED, f"{target.host!r} has no address")
    return addresses


def _connect(target: CheckedUrl, addresses: list[IPAddress], policy: FetchPolicy, deadline: Deadline) -> socket.socket:
    """A TCP connection to the first checked address that answers."""
    last: OSError | None = None
    for address in addresses:
        timeout = min(policy.connect_timeout_s, deadline.remaining())
        if timeout <= 0:
            raise deadline.error(target.url)
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((str(address), target.port))
        except OSError as exc:
            sock.close()
            last = exc
            log.debug("connect to %s for %s failed: %s", address, redact_url(target.url), exc)
            continue
        return sock
    if isinstance(last, TimeoutError):
        raise TransientError(ErrorCode.TIMEOUT, f"connect timed out: {redact_url(target.url)}")
    raise TransientError(ErrorCode.FETCH_FAILED, f"cannot connect ({last}): {redact_url(target.url)}")


def _read_body(resp: http.client.HTTPResponse, url: str, max_bytes: int) -> bytes:
    """Read the body in chunks with a hard cap; detect bytes beyond an announced Content-Length."""
    announced = resp.length
    if announced is not None and announced > max_bytes:
        raise PermanentError(ErrorCode.TOO_LARGE, f"announces {announced} bytes, limit {max_bytes}: {redact_url(url)}")
    buf = bytearray()
    if announced is not None and not resp.chunked and resp.fp is not None:
        fp = resp.fp  # the buffered socket reader: peek() shows bytes already received
        remaining = announced
        while remaining > 0:
            pending = fp.peek(1)  # at most one socket read, and only while body bytes are still due
            if not pending:
                raise TransientError(
                    ErrorCode.FETCH_FAILED,
                    f"connection closed after {len(buf)} of {announced} bytes: {redact_url(url)}",
                )
            if len(pending) > remaining:
                raise PermanentError(
                    ErrorCode.TOO_LARGE,
                    f"server sent more bytes than its Content-Length ({announced}): {redact_url(url)}",
                )
            chunk = fp.read1(min(remaining, CHUNK_BYTES))
            buf += chunk
            remaining -= len(chunk)
        return bytes(buf)
    return read_capped(resp.read1, max_bytes, redact_url(url))  # chunked framing, or until close


@functools.cache
def _context() -> ssl.SSLContext:
    # CERT_REQUIRED, check_hostname, system CA store; one shared context (thread-safe for wrap_socket).
    return ssl.create_default_context()


class _Exchange:
    """One request/response on one pinned connection."""

    def __init__(self, policy: FetchPolicy, ssl_context: ssl.SSLContext | None) -> None:
        self.policy = policy
        self.ssl_context = ssl_context

    def run(
        self,
        method: str,
        target: CheckedUrl,
        body: bytes | None,
        headers: Mapping[str, str],
        deadline: Deadline,
    ) -> tuple[int, Message, bytes, str]:
        addresses = resolve_checked(target, self.policy)
        deadline.check(target.url)
        sock = _connect(target, addresses, self.policy, deadline)
        address = str(sock.getpeername()[0])
        try:
            with deadline.guard(sock):
                try:
                    if target.scheme == "https":
                        context = self.ssl_context or _context()
                        # SNI and certificate check against the host NAME; the socket goes to the checked IP.
                        sock = context.wrap_socket(sock, server_hostname=target.host)
                        deadline.watch(sock)
                    status, msg, data = self._talk(method, target, body, headers, sock)
                except FakesakeError:
                    if deadline.expired:
                        raise deadline.error(target.url) from None
                    raise
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    raise self._failure(exc, target, deadline) from exc
                if deadline.expired:  # a read woken by the watchdog may look like a clean end of body
                    raise deadline.error(target.url)
                return status, msg, data, address
        finally:
            sock.close()

    def _talk(
        self,
        method: str,
        target: CheckedUrl,
        body: bytes | None,
        headers: Mapping[str, str],
        sock: socket.socket,
    ) -> tuple[int, Message, bytes]:
        sock.settimeout(self.policy.read_timeout_s)
        conn = http.client.HTTPConnection(target.host, target.port)
        conn.sock = sock  # pre-connected: http.client never resolves or connects by itself
        all_headers = {
            "Host": target.host_header,
            "User-Agent": self.policy.user_agent,
            "Accept": "image/*, */*;q=0.5",
            "Accept-Encoding": "identity",
            "Connection": "close",
            **headers,
        }
        try:
            conn.request(method, target.target, body=body, headers=all_headers)
            resp = conn.getresponse()
            try:
                data = b"" if resp.status in _REDIRECTS else _read_body(resp, target.url, self.policy.max_bytes)
            finally:
                resp.close()  # drops the reader's hold on the socket, so closing it really closes it
            return resp.status, resp.msg, data
        finally:
            conn.close()

    def _failure(self, exc: BaseException, target: CheckedUrl, deadline: Deadline) -> FakesakeError:
        url = redact_url(target.url)
        if deadline.expired:
            return deadline.error(target.url)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return PermanentError(ErrorCode.FETCH_FAILED, f"TLS certificate rejected ({exc.verify_message}): {url}")
        if isinstance(exc, TimeoutError):
            return TransientError(ErrorCode.TIMEOUT, f"no data for {self.policy.read_timeout_s:g}s: {url}")
        return TransientError(ErrorCode.FETCH_FAILED, f"{type(exc).__name__}: {exc}: {url}")


def http_request(
    method: str,
    url: str,
    policy: FetchPolicy,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    follow_redirects: bool = True,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpReply:
    """Send one request through the SSRF policy and return the final response (any status).

    Webhook delivery reuses this (``follow_redirects=False``). 303, and 301/302 after a non-GET, turn
    into a GET without body, as browsers do; 307/308 keep method and body.
    """
    deadline = Deadline(policy.total_timeout_s)
    exchange = _Exchange(policy, ssl_context)
    redirects = 0
    while True:
        target = check_url(url, policy)
        started = time.monotonic()
        status, msg, data, address = exchange.run(method, target, body, headers or {}, deadline)
        log.debug(
            "%s %s -> %s from %s in %.3fs",
            method,
            redact_url(url),
            status,
            address,
            time.monotonic() - started,
        )
        location = msg.get("Location")
        if not follow_redirects or status not in _REDIRECTS or not location:
            return HttpReply(status=status, headers=msg, body=data, url=url, address=address, redirects=redirects)
        if redirects >= policy.max_redirects:
            raise PermanentError(
                ErrorCode.INVALID_SOURCE, f"more than {policy.max_redirects} redirects: {redact_url(url)}"
            )
        redirects += 1
        url = urljoin(url, location.strip())
        if status == 303 or (status in (301, 302) and method != "GET"):
            method, body = "GET", None


def make_poster(
    policy: FetchPolicy, *, ssl_context: ssl.SSLContext | None = None
) -> Callable[[str, bytes, dict[str, str]], int]:
    """``post(url, body, headers) -> status`` through the SSRF policy, redirects not followed: the
    ``Poster`` that :func:`producers.webhook.deliver` expects, so callback URLs get the same protection."""

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        return http_request("POST", url, policy, body=body, headers=headers, follow_redirects=False).status

    return post


class HttpFetcher:
    """The :class:`~worker.core.ports.Fetcher` for ``http://`` and ``https://`` sources."""

    def __init__(self, policy: FetchPolicy, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.policy = policy
        self.ssl_context = ssl_context

    def fetch(self, source: str, *, version: str | None = None) -> Fetched:
        """GET ``source`` (``version`` is ignored: URLs carry no object version)."""
        reply = http_request("GET", source, self.policy, ssl_context=self.ssl_context)
        status, url = reply.status, redact_url(reply.url)
        if 200 <= status < 300:
            return Fetched(
                data=reply.body,
                source=source,
                content_type=reply.headers.get("Content-Type"),
                meta={
                    "final_url": url,
                    "redirects": reply.redirects,
                    "address": reply.address,
                    "status": status,
                },
            )
        if status in (404, 410):
            raise PermanentError(ErrorCode.NOT_FOUND, f"HTTP {status}: {url}")
        if status in (401, 403, 451):
            raise PermanentError(ErrorCode.FORBIDDEN, f"HTTP {status}: {url}")
        if is_retryable_status(status):
            retry_after = parse_retry_after(reply.headers.get("Retry-After"))
            raise TransientError(ErrorCode.FETCH_FAILED, f"HTTP {status}: {url}", retry_after_s=retry_after)
        raise PermanentError(ErrorCode.FETCH_FAILED, f"HTTP {status}: {url}")
