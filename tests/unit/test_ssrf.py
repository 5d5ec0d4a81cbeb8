"""SSRF checks without any network: addresses, URL shapes, libc spellings of IPv4, redaction."""

from __future__ import annotations

import ipaddress
import socket
import sys

import pytest

from producers.errors import ErrorCode, PermanentError
from worker.fetch.policy import FetchPolicy
from worker.fetch.ssrf import check_address, check_url, parse_host_address, redact_url

FORBIDDEN_ADDRESSES = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback, end of /8"),
    ("::1", "IPv6 loopback"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.0.1", "link-local"),
    ("10.0.0.1", "RFC 1918 10/8"),
    ("10.255.255.255", "RFC 1918 10/8 end"),
    ("172.16.0.1", "RFC 1918 172.16/12"),
    ("172.31.255.254", "RFC 1918 172.16/12 end"),
    ("192.168.1.1", "RFC 1918 192.168/16"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.254", "CGNAT end"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network"),
    ("::", "IPv6 unspecified"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:7f00:1", "IPv4-mapped loopback, hex"),
    ("::ffff:169.254.169.254", "IPv4-mapped metadata"),
    ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("::7f00:1", "IPv4-compatible loopback"),
    ("2002:7f00:0001::", "6to4 of loopback"),
    ("2002:a9fe:a9fe::1", "6to4 of metadata"),
    ("2002:c0a8:0101::1", "6to4 of 192.168.1.1"),
    ("64:ff9b::7f00:1", "NAT64 of loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 of metadata"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("2001:db8::1", "documentation"),
    ("fc00::1", "unique-local fc00::/7"),
    ("fd12:3456:789a::1", "unique-local fd00::/8"),
    ("fe80::1", "IPv6 link-local"),
    ("fe80::1%eth0", "IPv6 link-local with zone"),
    ("fec0::1", "site-local"),
    ("ff02::1", "IPv6 multicast"),
    ("ff0e::1", "IPv6 global-scope multicast"),
    ("224.0.0.1", "IPv4 multicast"),
    ("239.255.255.250", "SSDP multicast"),
    ("240.0.0.1", "reserved 240/4"),
    ("255.255.255.255", "broadcast"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.254", "benchmarking end"),
    ("192.0.2.1", "TEST-NET-1"),
    ("198.51.100.1", "TEST-NET-2"),
    ("203.0.113.1", "TEST-NET-3"),
    ("192.0.0.8", "IETF protocol assignments"),
    ("192.88.99.1", "6to4 relay anycast"),
    ("100::1", "discard-only"),
]

ALLOWED_ADDRESSES = [
    ("93.184.216.34", "example.com"),
    ("8.8.8.8", "public DNS"),
    ("1.1.1.1", "public DNS"),
    ("172.15.255.255", "just below 172.16/12"),
    ("172.32.0.1", "just above 172.16/12"),
    ("100.63.255.255", "just below CGNAT"),
    ("100.128.0.1", "just above CGNAT"),
    ("2606:4700:4700::1111", "public IPv6"),
    ("2a00:1450:4001:80b::200e", "public IPv6"),
    ("::ffff:93.184.216.34", "IPv4-mapped public"),
    ("2002:5db8:d822::1", "6to4 of a public address"),
    ("64:ff9b::5db8:d822", "NAT64 (DNS64) of a public address"),
]


@pytest.mark.parametrize(("address", "why"), FORBIDDEN_ADDRESSES)
def test_non_global_addresses_are_forbidden(address: str, why: str) -> None:
    with pytest.raises(PermanentError) as info:
        check_address(address)
    assert info.value.code is ErrorCode.FORBIDDEN_ADDRESS, why
    assert not info.value.retryable


@pytest.mark.parametrize(("address", "why"), ALLOWED_ADDRESSES)
def test_global_addresses_pass(address: str, why: str) -> None:
    check_address(address)  # no exception, no network


@pytest.mark.parametrize(
    ("address", "allow"),
    [
        ("127.0.0.1", ["127.0.0.0/8"]),
        ("10.1.2.3", ["10.0.0.0/8"]),
        ("::1", ["::1/128"]),
        ("::ffff:127.0.0.1", ["127.0.0.0/8"]),  # judged by the IPv4 it embeds
        ("fd00::5", ["fd00::/8"]),
    ],
)
def test_allow_private_opens_exactly_its_networks(address: str, allow: list[str]) -> None:
    check_address(address, allow)
    with pytest.raises(PermanentError):
        check_address("192.168.0.1", allow)


def test_allow_private_is_not_wider_than_its_cidr() -> None:
    with pytest.raises(PermanentError):
        check_address("127.0.0.2", ["127.0.0.1/32"])


def test_junk_address_is_refused() -> None:
    with pytest.raises(PermanentError) as info:
        check_address("not-an-ip")
    assert info.value.code is ErrorCode.FORBIDDEN_ADDRESS


LIBC_SPELLINGS = [
    ("2130706433", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("0", "0.0.0.0"),
    ("0xa9fea9fe", "169.254.169.254"),
    ("2852039166", "169.254.169.254"),
    ("10.1", "10.0.0.1"),
    ("1572395042", "93.184.216.34"),
]


@pytest.mark.parametrize(("host", "address"), LIBC_SPELLINGS)
def test_numeric_hosts_are_read_like_libc(host: str, address: str) -> None:
    assert parse_host_address(host) == ipaddress.ip_address(address)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc numeric-host parsing")
@pytest.mark.parametrize(("host", "address"), LIBC_SPELLINGS)
def test_getaddrinfo_agrees_with_our_reading(host: str, address: str) -> None:
    # AI_NUMERICHOST: libc parses, never queries DNS; proves we judge the address a connect would reach.
    info = socket.getaddrinfo(host, 80, socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    assert info[0][4][0] == address


@pytest.mark.parametrize("host", ["example.com", "1e100.net", "0x7f.example", "127.0.0.1.nip.io", "localhost"])
def test_names_are_not_addresses(host: str) -> None:
    assert parse_host_address(host) is None


POLICY = FetchPolicy(allowed_ports=frozenset({80, 443, 8443}))

REFUSED_URLS = [
    ("http://127.0.0.1/", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://[::1]/", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://169.254.169.254/latest/meta-data/", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://10.0.0.1/x.jpg", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://172.16.5.4/x.jpg", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://192.168.0.1/x.jpg", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://100.64.0.1/x.jpg", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://0.0.0.0/", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://[::ffff:127.0.0.1]/", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://[::ffff:7f00:1]/", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://[2002:7f00:0001::]/", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://[fc00::1]/", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://[fe80::1%25eth0]/", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://[ff02::1]/", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://224.0.0.1/", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://2130706433/", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://0177.0.0.1/", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://0x7f.1/", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://0X7F.0.0.1/", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://127.1/", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://127.0.0.1./", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://\uff11\uff12\uff17.0.0.1/", ErrorCode.FORBIDDEN_ADDRESS),  # full-width digits, IDNA-mapped
    ("http://example.com:8080/x.jpg", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://example.com:22/", ErrorCode.FORBIDDEN_ADDRESS),
    ("https://example.com:6379/", ErrorCode.FORBIDDEN_ADDRESS),
    ("http://user:pass@example.com/x.jpg", ErrorCode.INVALID_SOURCE),
    ("http://user@example.com/x.jpg", ErrorCode.INVALID_SOURCE),
    ("http://@example.com/x.jpg", ErrorCode.INVALID_SOURCE),
    ("http://example.com@127.0.0.1/", ErrorCode.INVALID_SOURCE),
    ("file:///etc/passwd", ErrorCode.INVALID_SOURCE),
    ("gopher://127.0.0.1:6379/_FLUSHALL", ErrorCode.INVALID_SOURCE),
    ("ftp://example.com/x.jpg", ErrorCode.INVALID_SOURCE),
    ("dict://127.0.0.1:11211/", ErrorCode.INVALID_SOURCE),
    ("javascript:alert(1)", ErrorCode.INVALID_SOURCE),
    ("//example.com/x.jpg", ErrorCode.INVALID_SOURCE),
    ("example.com/x.jpg", ErrorCode.INVALID_SOURCE),
    ("http:///x.jpg", ErrorCode.INVALID_SOURCE),
    ("http://example.com:99999/", ErrorCode.INVALID_SOURCE),
    ("http://example.com:abc/", ErrorCode.INVALID_SOURCE),
    ("http://exa mple.com/", ErrorCode.INVALID_SOURCE),
    ("http://example.com/a\r\nHost: evil", ErrorCode.INVALID_SOURCE),
    ("http://a..b/", ErrorCode.INVALID_SOURCE),
    ("http://[::1/", ErrorCode.INVALID_SOURCE),
    ("http://example.com/" + "a" * 5000, ErrorCode.INVALID_SOURCE),
]


@pytest.mark.parametrize(("url", "code"), REFUSED_URLS)
def test_refused_urls(url: str, code: ErrorCode) -> None:
    with pytest.raises(PermanentError) as info:
        check_url(url, POLICY)
    assert info.value.code is code


@pytest.mark.parametrize(
    ("url", "host", "port", "target", "host_header"),
    [
        ("http://example.com/x.jpg", "example.com", 80, "/x.jpg", "example.com"),
        ("HTTPS://Example.COM/x.jpg?a=1#frag", "example.com", 443, "/x.jpg?a=1", "example.com"),
        ("https://example.com:8443", "example.com", 8443, "/", "example.com:8443"),
        ("http://93.184.216.34/x", "93.184.216.34", 80, "/x", "93.184.216.34"),
        ("http://[2606:4700:4700::1111]/x", "2606:4700:4700::1111", 80, "/x", "[2606:4700:4700::1111]"),
        ("http://b\u00fccher.example/x", "xn--bcher-kva.example", 80, "/x", "xn--bcher-kva.example"),
        ("http://example.com/\u00e9.jpg", "example.com", 80, "/%C3%A9.jpg", "example.com"),
    ],
)
def test_accepted_urls_are_split_for_a_pinned_connection(
    url: str, host: str, port: int, target: str, host_header: str
) -> None:
    checked = check_url(url, POLICY)
    assert (checked.host, checked.port, checked.target, checked.host_header) == (
        host,
        port,
        target,
        host_header,
    )


def test_url_length_limit_is_the_policy_s() -> None:
    url = "http://example.com/" + "a" * 100
    check_url(url, POLICY)
    with pytest.raises(PermanentError) as info:
        check_url(url, FetchPolicy(max_url_length=len(url) - 1))
    assert info.value.code is ErrorCode.INVALID_SOURCE


def test_allow_private_lets_a_literal_through() -> None:
    policy = FetchPolicy(allowed_ports=frozenset({8080}), allow_private=(ipaddress.ip_network("127.0.0.0/8"),))
    assert check_url("http://127.0.0.1:8080/x", policy).address == ipaddress.ip_address("127.0.0.1")


def test_refusal_messages_never_carry_the_query_or_credentials() -> None:
    url = "http://user:hunter2@10.0.0.1/x.jpg?X-Amz-Signature=deadbeef"
    with pytest.raises(PermanentError) as info:
        check_url(url, POLICY)
    assert "deadbeef" not in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://b.s3.amazonaws.com/k.jpg?X-Amz-Signature=abc&X-Amz-Credential=AKIA",
            "https://b.s3.amazonaws.com/k.jpg?<redacted>",
        ),
        ("https://user:secret@example.com/a.jpg", "https://example.com/a.jpg"),
        ("http://example.com/a.jpg#frag", "http://example.com/a.jpg"),
        ("http://example.com/a.jpg", "http://example.com/a.jpg"),
        ("s3://bucket/key.jpg?versionId=1", "s3://bucket/key.jpg?versionId=1"),  # an S3 URI keeps its key and version
        ("http://[::1/?token=x", "http://[::1/"),
        ("/plain/path.jpg", "/plain/path.jpg"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_truncates() -> None:
    assert len(redact_url("http://example.com/" + "a" * 1000, limit=64)) == 64
