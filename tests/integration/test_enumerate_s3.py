"""S3 prefix enumeration against moto's S3 server (paginated listing, single objects, errors)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from producers.enumerate import expand_inputs, expand_s3, list_prefix, make_s3_client
from producers.errors import ErrorCode, PermanentError
from producers.settings import S3Settings
from tests.support.servers import S3Server

KEYS = [
    "photos/a.jpg",
    "photos/b.png",
    "photos/sub/c.webp",
    "photos/sub/",
    "photos2/d.jpg",
    "raw/e",
    "top.jpg",
]


@pytest.fixture()
def bucket(s3_srv: S3Server) -> tuple[Any, str]:
    client = s3_srv.client()
    name = f"enum-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    for key in KEYS:
        client.put_object(Bucket=name, Key=key, Body=b"x")
    return client, name


def test_prefix_listing_is_paginated_and_skips_folder_markers(bucket: tuple[Any, str]) -> None:
    client, name = bucket
    calls: list[dict[str, Any]] = []
    client.meta.events.register("before-call.s3.ListObjectsV2", lambda params, **_: calls.append(params))
    keys = list(list_prefix(client, name, "photos/", page_size=2))
    assert keys == ["photos/a.jpg", "photos/b.png", "photos/sub/c.webp"]
    assert len(calls) >= 2  # more than one page was fetched


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://{b}/photos/", ["photos/a.jpg", "photos/b.png", "photos/sub/c.webp"]),
        ("s3://{b}/photos", ["photos/a.jpg", "photos/b.png", "photos/sub/c.webp"]),  # folder without "/"
        ("s3://{b}/photos/a.jpg", ["photos/a.jpg"]),  # an object stays one source, unlisted
        ("s3://{b}/nothing-here", ["nothing-here"]),  # neither: one source, the worker reports it
        ("s3://{b}/raw/", ["raw/e"]),
        ("s3://{b}", sorted(k for k in KEYS if not k.endswith("/"))),
        ("s3://{b}/photos?versionId=v1", ["photos?versionId=v1"]),  # a version names one object: never listed
    ],
)
def test_expand_s3(bucket: tuple[Any, str], uri: str, expected: list[str]) -> None:
    client, name = bucket
    assert list(expand_s3(uri.format(b=name), client, page_size=2)) == [f"s3://{name}/{k}" for k in expected]


def test_expand_inputs_mixes_urls_and_prefixes(s3_srv: S3Server, bucket: tuple[Any, str]) -> None:
    _, name = bucket
    client = make_s3_client(
        S3Settings(
            endpoint_url=s3_srv.endpoint_url,
            region="us-east-1",
            access_key_id="testing",
            secret_access_key="testing",
        )
    )
    items = list(expand_inputs(["https://x.example/1.jpg", f"s3://{name}/raw/"], s3_client=client))
    assert items == [{"source": "https://x.example/1.jpg"}, {"source": f"s3://{name}/raw/e"}]


def test_missing_bucket_is_not_found(s3_srv: S3Server) -> None:
    with pytest.raises(PermanentError) as info:
        list(expand_s3("s3://no-such-bucket-x/", s3_srv.client()))
    assert info.value.code is ErrorCode.NOT_FOUND
