"""LocalFetcher (file:// and plain paths), the scheme router, and the builder's fetcher from settings."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from producers.errors import ErrorCode, PermanentError
from worker.core.ports import Fetched
from worker.fetch.http import HttpFetcher
from worker.fetch.local import LocalFetcher
from worker.fetch.policy import FetchPolicy
from worker.fetch.router import SourceRouter
from worker.fetch.s3 import S3Fetcher
from worker.service.builder import fetcher as build_fetcher
from worker.service.settings import WorkerSettings

ALLOWED = FetchPolicy(allow_local_files=True, max_bytes=1024)


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    path = tmp_path / "a b.jpg"
    path.write_bytes(b"\xff\xd8" + b"x" * 100)
    return path


@pytest.mark.parametrize("form", ["plain", "file-uri", "file-localhost"])
def test_reads_files_by_path_and_uri(image: Path, form: str) -> None:
    source = {
        "plain": str(image),
        "file-uri": image.as_uri(),  # percent-encoded space
        "file-localhost": "file://localhost" + image.as_uri()[len("file://") :],
    }[form]
    fetched = LocalFetcher(ALLOWED).fetch(source)
    assert fetched.data == image.read_bytes()
    assert fetched.source == source


def test_refused_unless_allowed(image: Path) -> None:
    with pytest.raises(PermanentError) as info:
        LocalFetcher(FetchPolicy()).fetch(image.as_uri())
    assert info.value.code is ErrorCode.INVALID_SOURCE


def _fifo(d: Path) -> str:
    os.mkfifo(d / "fifo")
    return str(d / "fifo")


def _over_cap(d: Path) -> str:
    (d / "big").write_bytes(b"x" * 1025)
    return str(d / "big")


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda d: str(d / "missing.jpg"), ErrorCode.NOT_FOUND),
        (str, ErrorCode.INVALID_SOURCE),  # a directory
        (_fifo, ErrorCode.INVALID_SOURCE),  # must not hang
        (lambda d: "file://otherhost/etc/passwd", ErrorCode.INVALID_SOURCE),
        (_over_cap, ErrorCode.TOO_LARGE),
    ],
    ids=["missing", "directory", "fifo", "remote-file-host", "over-cap"],
)
def test_bad_local_sources(tmp_path: Path, make: Callable[[Path], str], code: ErrorCode) -> None:
    source = make(tmp_path)
    with pytest.raises(PermanentError) as info:
        LocalFetcher(ALLOWED).fetch(source)
    assert info.value.code is code


def test_unreadable_file_is_forbidden(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    path = tmp_path / "secret.jpg"
    path.write_bytes(b"x")
    path.chmod(0)
    with pytest.raises(PermanentError) as info:
        LocalFetcher(ALLOWED).fetch(str(path))
    assert info.value.code is ErrorCode.FORBIDDEN


def test_file_exactly_at_the_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "cap"
    path.write_bytes(b"y" * 1024)
    assert LocalFetcher(ALLOWED).fetch(str(path)).data == b"y" * 1024


class Recorder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[tuple[str, str | None]] = []

    def fetch(self, source: str, *, version: str | None = None) -> Fetched:
        self.calls.append((source, version))
        return Fetched(data=self.name.encode(), source=source)


def test_router_dispatches_on_scheme_case_insensitively() -> None:
    web, s3, local = Recorder("web"), Recorder("s3"), Recorder("local")
    router = SourceRouter({"http": web, "HTTPS": web, "s3": s3, "": local})
    assert router.fetch("HTTPS://example.com/x").data == b"web"
    assert router.fetch("s3://b/k", version="v1").data == b"s3"
    assert router.fetch("/tmp/x.jpg").data == b"local"
    assert s3.calls == [("s3://b/k", "v1")]


@pytest.mark.parametrize("source", ["gopher://127.0.0.1:70/", "ftp://example.com/x", "data:image/png;base64,AA"])
def test_router_refuses_unknown_schemes(source: str) -> None:
    with pytest.raises(PermanentError) as info:
        SourceRouter({"http": Recorder("web")}).fetch(source)
    assert info.value.code is ErrorCode.INVALID_SOURCE


def test_build_fetcher_wires_the_policy_from_settings(image: Path) -> None:
    settings = WorkerSettings.model_validate(
        {"fetch": {"allow_private": "10.0.0.0/8", "max_bytes": 2048}, "s3": {"allowed_buckets": "a,b"}}
    )
    router = build_fetcher(settings)  # no S3 client is created until an s3:// source arrives
    assert router.schemes == ("", "file", "http", "https", "s3")
    web = router._fetchers["http"]
    assert isinstance(web, HttpFetcher)
    assert web.policy.max_bytes == 2048
    assert [str(n) for n in web.policy.allow_private] == ["10.0.0.0/8"]
    assert web.policy.allowed_buckets == frozenset({"a", "b"})
    s3 = router._fetchers["s3"]
    assert isinstance(s3, S3Fetcher) and s3._client is None
    with pytest.raises(PermanentError) as info:
        router.fetch(str(image))  # local files are off by default...
    assert info.value.code is ErrorCode.INVALID_SOURCE
    assert build_fetcher(settings, allow_local_files=True).fetch(str(image)).data  # ...and on for scan
