"""S3Fetcher and list_prefix against a real S3 server (moto in server mode)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from producers.errors import ErrorCode, PermanentError, TransientError
from producers.s3 import list_prefix, make_s3_client
from producers.settings import S3Settings
from tests.support.servers import S3Server, free_port
from worker.fetch.policy import FetchPolicy
from worker.fetch.s3 import S3Fetcher


def settings_for(s3_srv: S3Server, **overrides: Any) -> S3Settings:
    values: dict[str, Any] = {
        "endpoint_url": s3_srv.endpoint_url,
        "region": "us-east-1",
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "max_attempts": 2,
    }
    values.update(overrides)
    return S3Settings(**values)


@pytest.fixture()
def client(s3_srv: S3Server) -> Any:
    return make_s3_client(settings_for(s3_srv))


@pytest.fixture()
def bucket(client: Any) -> Iterator[str]:
    name = f"fetch-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    yield name


def calls_of(client: Any) -> list[str]:
    """Names of the S3 operations the real client sends (botocore's own event hook)."""
    seen: list[str] = []
    client.meta.events.register("before-call.s3.*", lambda model, **_: seen.append(model.name))
    return seen


def test_client_uses_standard_retries_and_timeouts(s3_srv: S3Server) -> None:
    c = make_s3_client(settings_for(s3_srv, max_attempts=7), connect_timeout_s=1.5, read_timeout_s=2.5)
    assert c.meta.config.retries == {"mode": "standard", "total_max_attempts": 7}
    assert (c.meta.config.connect_timeout, c.meta.config.read_timeout) == (1.5, 2.5)


def test_fetches_an_object(client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="a/img.jpg", Body=b"\xff\xd8jpeg", ContentType="image/jpeg")
    fetched = S3Fetcher(client, FetchPolicy()).fetch(f"s3://{bucket}/a/img.jpg")
    assert fetched.data == b"\xff\xd8jpeg"
    assert fetched.content_type == "image/jpeg"
    assert (fetched.meta["bucket"], fetched.meta["key"]) == (bucket, "a/img.jpg")


def test_versioned_read(client: Any, bucket: str) -> None:
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v1 = client.put_object(Bucket=bucket, Key="k", Body=b"first")["VersionId"]
    client.put_object(Bucket=bucket, Key="k", Body=b"second")
    fetcher = S3Fetcher(client, FetchPolicy())
    old = fetcher.fetch(f"s3://{bucket}/k", version=v1)
    assert (old.data, old.meta["version_id"]) == (b"first", v1)
    assert fetcher.fetch(f"s3://{bucket}/k").data == b"second"
    with pytest.raises(PermanentError) as info:
        fetcher.fetch(f"s3://{bucket}/k", version="no-such-version")
    assert info.value.code is ErrorCode.NOT_FOUND


def test_version_in_the_uri_and_what_was_read(client: Any, bucket: str) -> None:
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    first = client.put_object(Bucket=bucket, Key="k.jpg", Body=b"first")
    second = client.put_object(Bucket=bucket, Key="k.jpg", Body=b"second")
    fetcher = S3Fetcher(client, FetchPolicy())
    old = fetcher.fetch(f"s3://{bucket}/k.jpg?versionId={first['VersionId']}")
    assert (old.data, old.meta["version_id"]) == (b"first", first["VersionId"])
    assert old.meta["etag"] == first["ETag"].strip('"')  # unquoted, as S3 Inventory lists ETags
    latest = fetcher.fetch(f"s3://{bucket}/k.jpg")
    assert (latest.data, latest.meta["version_id"]) == (b"second", second["VersionId"])
    same = fetcher.fetch(f"s3://{bucket}/k.jpg?versionId={first['VersionId']}", version=first["VersionId"])
    assert same.data == b"first"
    calls = calls_of(client)
    with pytest.raises(PermanentError) as info:
        fetcher.fetch(f"s3://{bucket}/k.jpg?versionId={first['VersionId']}", version=second["VersionId"])
    assert info.value.code is ErrorCode.INVALID_SOURCE
    assert calls == []  # a contradiction is refused before any request


@pytest.mark.parametrize("key", ["what?.jpg", "a?b=c&d.jpg", "hash#tag.png", "50%25?.png", "k?versionId="])
def test_keys_with_question_marks_stay_readable(client: Any, bucket: str, key: str) -> None:
    client.put_object(Bucket=bucket, Key=key, Body=b"odd key")
    fetched = S3Fetcher(client, FetchPolicy()).fetch(f"s3://{bucket}/{key}")
    assert (fetched.data, fetched.meta["key"]) == (b"odd key", key)


def test_a_key_ending_in_a_version_suffix_is_read_with_an_explicit_version(client: Any, bucket: str) -> None:
    # the one key the URI form cannot name alone: its own version suffix is its escape
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    version = client.put_object(Bucket=bucket, Key="k?versionId=x", Body=b"odd")["VersionId"]
    fetched = S3Fetcher(client, FetchPolicy()).fetch(f"s3://{bucket}/k?versionId=x?versionId={version}")
    assert (fetched.data, fetched.meta["key"]) == (b"odd", "k?versionId=x")


def test_size_cap_is_checked_by_head_without_downloading(client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="big", Body=b"x" * 5000)
    calls = calls_of(client)
    with pytest.raises(PermanentError) as info:
        S3Fetcher(client, FetchPolicy(max_bytes=4096)).fetch(f"s3://{bucket}/big")
    assert info.value.code is ErrorCode.TOO_LARGE
    assert calls == ["HeadObject"]


def test_size_cap_holds_while_reading_when_head_was_wrong(client: Any, bucket: str) -> None:
    # The object is replaced by a bigger one between HEAD and GET: HEAD's answer is shrunk to say so.
    client.put_object(Bucket=bucket, Key="grows", Body=b"x" * 5000)

    def stale_head(parsed: dict[str, Any], **_: object) -> None:
        parsed["ContentLength"] = 10

    client.meta.events.register("after-call.s3.HeadObject", stale_head)
    with pytest.raises(PermanentError) as info:
        S3Fetcher(client, FetchPolicy(max_bytes=4096)).fetch(f"s3://{bucket}/grows")
    assert info.value.code is ErrorCode.TOO_LARGE


def test_object_exactly_at_the_cap_is_read(client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="cap", Body=b"y" * 4096)
    assert S3Fetcher(client, FetchPolicy(max_bytes=4096)).fetch(f"s3://{bucket}/cap").data == b"y" * 4096


def test_bucket_allow_list(client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="k", Body=b"data")
    calls = calls_of(client)
    with pytest.raises(PermanentError) as info:
        S3Fetcher(client, FetchPolicy(allowed_buckets=frozenset({"some-other-bucket"}))).fetch(f"s3://{bucket}/k")
    assert info.value.code is ErrorCode.FORBIDDEN
    assert calls == []  # refused before any request
    assert S3Fetcher(client, FetchPolicy(allowed_buckets=frozenset({bucket}))).fetch(f"s3://{bucket}/k").data


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("s3://{bucket}/missing.jpg", ErrorCode.NOT_FOUND),
        ("s3://no-such-bucket-{bucket}/k.jpg", ErrorCode.NOT_FOUND),
        ("s3://{bucket}/", ErrorCode.INVALID_SOURCE),
        ("s3:///k.jpg", ErrorCode.INVALID_SOURCE),
    ],
)
def test_missing_and_malformed_sources(client: Any, bucket: str, source: str, code: ErrorCode) -> None:
    with pytest.raises(PermanentError) as info:
        S3Fetcher(client, FetchPolicy()).fetch(source.format(bucket=bucket))
    assert info.value.code is code


def test_unreachable_endpoint_is_transient(s3_srv: S3Server) -> None:
    dead = make_s3_client(
        settings_for(s3_srv, endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1),
        connect_timeout_s=1.0,
    )
    with pytest.raises(TransientError) as info:
        S3Fetcher(dead, FetchPolicy()).fetch("s3://bucket/k.jpg")
    assert info.value.code is ErrorCode.FETCH_FAILED
    assert "testing" not in str(info.value)  # no credentials in messages


def test_lazy_fetcher_creates_its_client_on_first_use(s3_srv: S3Server, client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="k", Body=b"lazy")
    made: list[Any] = []

    def factory() -> Any:
        made.append(make_s3_client(settings_for(s3_srv)))
        return made[-1]

    fetcher = S3Fetcher.lazy(factory, FetchPolicy())
    assert made == []
    assert fetcher.fetch(f"s3://{bucket}/k").data == b"lazy"
    assert fetcher.fetch(f"s3://{bucket}/k").data == b"lazy"
    assert len(made) == 1


def test_list_prefix_pages_and_skips_folder_markers(client: Any, bucket: str) -> None:
    keys = sorted(f"p/{i:03d}.jpg" for i in range(25))
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    client.put_object(Bucket=bucket, Key="p/", Body=b"")  # a "folder"
    client.put_object(Bucket=bucket, Key="q/other.jpg", Body=b"x")
    calls = calls_of(client)
    assert list(list_prefix(client, bucket, "p/", page_size=10)) == keys
    assert calls.count("ListObjectsV2") == 3


def test_list_prefix_of_missing_bucket_is_not_found(client: Any) -> None:
    with pytest.raises(PermanentError) as info:
        list(list_prefix(client, f"missing-{uuid.uuid4().hex[:8]}", ""))
    assert info.value.code is ErrorCode.NOT_FOUND
