"""The fixtures themselves: each server answers, and stopping it frees exactly what it started."""

from __future__ import annotations

import urllib.request

import redis

from tests.support.servers import HttpServer, Route, S3Server


def test_redis_fixture_is_a_real_server(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.ping()
    assert client.info("server")["redis_version"]


def test_s3_fixture_speaks_s3(s3_srv: S3Server) -> None:
    s3 = s3_srv.client()
    s3.create_bucket(Bucket="fixture-check")
    s3.put_object(Bucket="fixture-check", Key="a", Body=b"xyz")
    assert s3.get_object(Bucket="fixture-check", Key="a")["Body"].read() == b"xyz"


def test_http_fixture_serves_routes(http_srv: HttpServer) -> None:
    url = http_srv.add("/x", Route(body=b"hello", content_type="text/plain"))
    with urllib.request.urlopen(url) as resp:
        assert resp.read() == b"hello"
    assert http_srv.hits["/x"] == 1
