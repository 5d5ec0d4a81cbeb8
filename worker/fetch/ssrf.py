"""SSRF checks: which URLs may be fetched and which addresses may be connected to. Pure (no network).

Decisions (codes):

- Scheme other than ``http``/``https`` (``file://``, ``gopher://``, ``ftp://``...), a URL that does not parse,
  has no host, carries credentials (``user:pass@``), is longer than ``max_url_length`` or holds control
  characters -> ``invalid-source``: the reference itself is malformed for URL fetching.
- A port outside ``allowed_ports`` -> ``forbidden-address``: like a private address, it is about *where*
  we would connect (internal services listen on odd ports).
- Any non-global address -> ``forbidden-address``, unless inside an ``allow_private`` network.
- Hosts spelled as numbers (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``) are read with libc's
  own ``inet_aton`` (the parser ``getaddrinfo`` applies to numeric hosts), so we judge the address the
  connection would really reach.

The address rule does not trust ``ipaddress.is_global`` alone (Python 3.11 calls multicast and NAT64
global): an explicit table of special-purpose ranges (IANA registries) comes first. Addresses that embed
an IPv4 address are judged by that IPv4 address: IPv4-mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16`` and
NAT64 ``64:ff9b::/96`` (so DNS64 on IPv6-only clusters keeps working for public hosts). Teredo
(``2001::/32``) is refused outright.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from producers.errors import ErrorCode, PermanentError
from producers.redaction import redact_url
from worker.fetch.policy import FetchPolicy, IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = ["CheckedUrl", "check_address", "check_url", "forbidden_reason", "parse_host_address", "redact_url"]

ALLOWED_SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Characters kept as they are when a path/query is re-encoded for the request line (RFC 3986 reserved
# and unreserved, plus "%" so existing escapes survive); everything else (spaces, non-ASCII) is escaped.
_SAFE_IN_TARGET = "/?#[]@!$&'()*+,;=:%~-._"

# Special-purpose ranges (IANA IPv4/IPv6 special-purpose registries), checked before is_global.
_FORBIDDEN_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), label)
    for cidr, label in (
        ("0.0.0.0/8", "'this network' / unspecified"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata lives here)"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("255.255.255.255/32", "broadcast"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "IPv4-compatible (deprecated)"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/32", "Teredo"),
        ("2001::/23", "IETF protocol assignments"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing"),
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated)"),
        ("ff00::/8", "multicast"),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed :func:`check_url`, split into what a pinned connection needs."""

    url: str
    scheme: str
    host: str  # lower-case ASCII (IDNA), no brackets
    port: int
    target: str  # request target: path and query, ASCII, "/" at least
    address: IPAddress | None  # set when the host is an address literal (any libc spelling)

    @property
    def host_header(self) -> str:
        """``Host`` header value: brackets for IPv6, port only when not the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, for forms that route to it."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def forbidden_reason(ip: IPAddress, allow_private: Iterable[IPNetwork] = ()) -> str | None:
    """Why connecting to ``ip`` is refused, or None when it is allowed."""
    allow = tuple(allow_private)
    if any(ip in net for net in allow):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            reason = forbidden_reason(embedded, allow)
            return None if reason is None else f"embeds {embedded}, {reason}"
    for net, label in _FORBIDDEN_NETWORKS:
        if ip in net:
            return f"{label} ({net})"
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return "not a global address"
    return None


def check_address(ip: IPAddress | str, allow_private: Iterable[IPNetwork | str] = ()) -> None:
    """Raise ``PermanentError(forbidden-address)`` unless ``ip`` is global or inside ``allow_private``."""
    try:
        address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    except ValueError as exc:
        raise PermanentError(ErrorCode.FORBIDDEN_ADDRESS, f"not an IP address: {ip!r}") from exc
    networks = [ipaddress.ip_network(n, strict=False) if isinstance(n, str) else n for n in allow_private]
    reason = forbidden_reason(address, networks)
    if reason is not None:
        raise PermanentError(
            ErrorCode.FORBIDDEN_ADDRESS,
            f"address {address} is not allowed: {reason}; FAKESAKE_FETCH__ALLOW_PRIVATE lists exceptions",
        )


def parse_host_address(host: str) -> IPAddress | None:
    """The address ``host`` denotes when it is an address literal in any spelling libc accepts
    (``127.1``, ``0x7f.1``, ``0177.0.0.1``, ``2130706433``, ``::1``), else None (a DNS name)."""
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    if not host or not all(c.isalnum() or c == "." for c in host) or not host[0].isdigit():
        return None  # DNS labels that cannot be numbers: skip libc, which would accept trailing junk
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _invalid(url: str, why: str) -> PermanentError:
    return PermanentError(ErrorCode.INVALID_SOURCE, f"{why}: {redact_url(url)}")


def check_url(url: str, policy: FetchPolicy) -> CheckedUrl:
    """Validate ``url`` against ``policy`` without touching the network (DNS is the fetcher's job)."""
    if len(url) > policy.max_url_length:
        raise PermanentError(
            ErrorCode.INVALID_SOURCE, f"URL is {len(url)} characters long, limit {policy.max_url_length}"
        )
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise _invalid(url, "URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _invalid(url, f"malformed URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise _invalid(url, f"only http/https URLs are fetched, not {scheme or 'no scheme'!r}")
    if "@" in parts.netloc:
        raise _invalid(url, "URLs with credentials are refused")
    if not parts.hostname:
        raise _invalid(url, "URL has no host")
    host = parts.hostname.rstrip(".") if ":" not in parts.hostname else parts.hostname
    try:
        host = host.encode("idna").decode("ascii") if ":" not in host else host
    except UnicodeError as exc:
        raise _invalid(url, "host name is not valid") from exc
    port = port if port is not None else _DEFAULT_PORTS[scheme]
    if port not in policy.allowed_ports:
        raise PermanentError(
            ErrorCode.FORBIDDEN_ADDRESS,
            f"port {port} is not allowed (FAKESAKE_FETCH__ALLOWED_PORTS): {redact_url(url)}",
        )
    address = parse_host_address(host)
    if ":" in host and address is None:
        raise _invalid(url, "host is not a valid IPv6 address")
    if address is not None:
        check_address(address, policy.allow_private)
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return CheckedUrl(
        url=url,
        scheme=scheme,
        host=host,
        port=port,
        target=quote(target, safe=_SAFE_IN_TARGET),
        address=address,
    )
