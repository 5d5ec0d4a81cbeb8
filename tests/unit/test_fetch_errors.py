"""Error mapping of the fetchers without servers: DNS answers (scripted resolver), S3 client errors,
Retry-After, the policy built from settings, and import hygiene (no torch, no Pillow)."""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

from producers.errors import ConfigError, ErrorCode, PermanentError, TransientError
from producers.s3 import s3_error
from worker.fetch.http import parse_retry_after, resolve_checked
from worker.fetch.policy import FetchPolicy
from worker.fetch.ssrf import check_url
from worker.service.builder import fetch_policy
from worker.service.settings import WorkerSettings

POLICY = FetchPolicy()


def answer(*addresses: str) -> Any:
    def fake(host: str, port: int, *args: object, **kwargs: object) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for a in addresses:
            if ":" in a:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)))
        return out

    return fake


def failing(errno: int) -> Any:
    def fake(*args: object, **kwargs: object) -> Any:
        raise socket.gaierror(errno, "scripted resolver failure")

    return fake


@pytest.mark.parametrize(
    "addresses",
    [
        ("127.0.0.1",),
        ("93.184.216.34", "10.0.0.5"),  # one bad record refuses the host
        ("2606:4700::1", "::1"),
        ("169.254.169.254",),
        ("::ffff:192.168.0.1",),
    ],
)
def test_any_forbidden_resolved_address_refuses_the_host(
    monkeypatch: pytest.MonkeyPatch, addresses: tuple[str, ...]
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", answer(*addresses))
    with pytest.raises(PermanentError) as info:
        resolve_checked(check_url("http://images.example/x.jpg", POLICY), POLICY)
    assert info.value.code is ErrorCode.FORBIDDEN_ADDRESS


def test_all_public_addresses_are_returned_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", answer("93.184.216.34", "2606:2800:220:1::1", "93.184.216.34"))
    got = resolve_checked(check_url("http://images.example/x.jpg", POLICY), POLICY)
    assert [str(a) for a in got] == ["93.184.216.34", "2606:2800:220:1::1"]


@pytest.mark.parametrize(
    ("errno", "error_class"),
    [
        (socket.EAI_NONAME, PermanentError),  # NXDOMAIN: permanent
        (socket.EAI_AGAIN, TransientError),  # resolver unavailable: transient
        (socket.EAI_FAIL, TransientError),
    ],
)
def test_dns_failures(monkeypatch: pytest.MonkeyPatch, errno: int, error_class: type) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", failing(errno))
    with pytest.raises((PermanentError, TransientError)) as info:
        resolve_checked(check_url("http://images.example/x.jpg?sig=abc", POLICY), POLICY)
    assert type(info.value) is error_class
    assert info.value.code is ErrorCode.FETCH_FAILED
    assert "sig=abc" not in str(info.value)


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )


@pytest.mark.parametrize(
    ("exc", "code", "error_class"),
    [
        (client_error("NoSuchKey", 404), ErrorCode.NOT_FOUND, PermanentError),
        (client_error("404", 404), ErrorCode.NOT_FOUND, PermanentError),
        (client_error("NoSuchBucket", 404), ErrorCode.NOT_FOUND, PermanentError),
        (client_error("AccessDenied", 403), ErrorCode.FORBIDDEN, PermanentError),
        (client_error("403", 403), ErrorCode.FORBIDDEN, PermanentError),
        (client_error("SlowDown", 503), ErrorCode.FETCH_FAILED, TransientError),
        (client_error("503", 503), ErrorCode.FETCH_FAILED, TransientError),
        (client_error("InternalError", 500), ErrorCode.FETCH_FAILED, TransientError),
        (client_error("RequestTimeout", 400), ErrorCode.TIMEOUT, TransientError),
        (client_error("InvalidArgument", 400), ErrorCode.INVALID_SOURCE, PermanentError),
        (client_error("400", 400), ErrorCode.INVALID_SOURCE, PermanentError),
        (client_error("PreconditionFailed", 412), ErrorCode.FETCH_FAILED, PermanentError),
        (EndpointConnectionError(endpoint_url="http://s3.local"), ErrorCode.FETCH_FAILED, TransientError),
        (ReadTimeoutError(endpoint_url="http://s3.local"), ErrorCode.TIMEOUT, TransientError),
        (NoCredentialsError(), ErrorCode.CONFIG, ConfigError),
        (RuntimeError("boom"), ErrorCode.INTERNAL, PermanentError),
    ],
)
def test_s3_error_mapping(exc: BaseException, code: ErrorCode, error_class: type) -> None:
    mapped = s3_error(exc, "s3://b/k")
    assert isinstance(mapped, error_class)
    assert mapped.code is code


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
        ("99999999", 86400.0),  # clamped
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)) == expected


def test_policy_from_settings_and_validation() -> None:
    settings = WorkerSettings.model_validate(
        {"fetch": {"allowed_ports": "80,443,8080", "total_timeout_s": 3, "allow_local_files": True}}
    )
    policy = fetch_policy(settings)
    assert policy.allowed_ports == frozenset({80, 443, 8080})
    assert policy.total_timeout_s == 3
    assert policy.allow_local_files
    assert not fetch_policy(settings, allow_local_files=False).allow_local_files
    assert policy.bucket_allowed("anything")  # empty allow-list
    with pytest.raises(ValueError):
        FetchPolicy(total_timeout_s=0)


def test_fetch_package_imports_neither_torch_nor_pillow() -> None:
    code = (
        "import sys, worker.fetch.router, worker.fetch.s3, worker.fetch.http, worker.fetch.local;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'PIL', 'timm', 'torchvision')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
