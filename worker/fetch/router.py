"""One Fetcher for every source: dispatch on the URI scheme."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from producers.errors import ErrorCode, PermanentError
from worker.core.ports import Fetched, Fetcher
from worker.fetch.http import HttpFetcher
from worker.fetch.local import LocalFetcher
from worker.fetch.policy import FetchPolicy
from worker.fetch.s3 import S3Fetcher
from worker.fetch.ssrf import redact_url


def source_scheme(source: str) -> str:
    """Lower-case scheme of ``source``; ``""`` for a plain path."""
    try:
        return urlsplit(source).scheme.lower()
    except ValueError:
        return "?"


class SourceRouter:
    """A :class:`~worker.core.ports.Fetcher` that hands each source to the fetcher of its scheme.

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


def default_router(
    policy: FetchPolicy, *, s3_client: Any = None, s3_client_factory: Callable[[], Any] | None = None
) -> SourceRouter:
    """http(s) with SSRF protection, s3, and local files (refused unless the policy allows them).

    With ``s3_client_factory`` and no ``s3_client``, the S3 client is created on first use, i.e. in the process
    that fetches.
    """
    web = HttpFetcher(policy)
    if s3_client is not None:
        s3 = S3Fetcher(s3_client, policy)
    elif s3_client_factory is not None:
        s3 = S3Fetcher.lazy(s3_client_factory, policy)
    else:
        raise ValueError("default_router needs s3_client or s3_client_factory")
    local = LocalFetcher(policy)
    return SourceRouter({"http": web, "https": web, "s3": s3, "file": local, "": local})
