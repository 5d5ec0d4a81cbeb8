"""One Fetcher for every source: dispatch on the URI scheme, and build the set from the settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from producers.errors import ErrorCode, PermanentError
from worker.fetch.http import HttpFetcher
from worker.fetch.local import LocalFetcher
from worker.fetch.policy import FetchPolicy
from worker.fetch.s3 import S3Fetcher, make_s3_client
from worker.fetch.ssrf import redact_url
from worker.protocols import Fetched, Fetcher

if TYPE_CHECKING:
    from worker.settings import WorkerSettings


def source_scheme(source: str) -> str:
    """Lower-case scheme of ``source``; ``""`` for a plain path."""
    try:
        return urlsplit(source).scheme.lower()
    except ValueError:
        return "?"


class SourceRouter:
    """A :class:`~worker.protocols.Fetcher` that hands each source to the fetcher of its scheme.

    The key ``""`` serves plain paths. An unknown scheme is ``invalid-source``.
    """

    def __init__(self, fetchers_by_scheme: Mapping[str, Fetcher]) -> None:
        self._fetchers = {k.lower(): v for k, v in fetchers_by_scheme.items()}

    @property
    def schemes(self) -> tuple[str, ...]:
        return tuple(sorted(self._fetchers))

    def fetch(self, source: str, *, version: str | None = None) -> Fetched:
        fetcher = self._fetchers.get(source_scheme(source))
        if fetcher is None:
            known = ", ".join(f"{s}://" for s in self.schemes if s) or "none"
            raise PermanentError(
                ErrorCode.INVALID_SOURCE, f"unsupported source {redact_url(source)!r}; known schemes: {known}"
            )
        return fetcher.fetch(source, version=version)


def build_fetcher(
    settings: WorkerSettings, *, allow_local_files: bool | None = None, s3_client: Any = None
) -> SourceRouter:
    """The worker's fetcher: http(s) with SSRF protection, s3, and local files (refused unless allowed).

    Without ``s3_client`` the S3 client is created on first use, i.e. in the process that fetches.
    """
    policy = FetchPolicy.from_settings(settings, allow_local_files=allow_local_files)
    web = HttpFetcher(policy)
    if s3_client is not None:
        s3 = S3Fetcher(s3_client, policy)
    else:
        s3 = S3Fetcher.lazy(
            lambda: make_s3_client(
                settings.s3,
                connect_timeout_s=settings.fetch.connect_timeout_s,
                read_timeout_s=settings.fetch.read_timeout_s,
            ),
            policy,
        )
    local = LocalFetcher(policy)
    return SourceRouter({"http": web, "https": web, "s3": s3, "file": local, "": local})
