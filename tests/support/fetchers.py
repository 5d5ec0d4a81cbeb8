"""In-memory and local-file fakes of the :class:`~worker.core.ports.Fetcher` protocol for engine tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from producers.errors import ErrorCode, PermanentError
from worker.core.ports import Fetched


class MemoryFetcher:
    """Sources are dict keys; a value may be bytes or a callable that returns bytes or raises."""

    def __init__(self, items: Mapping[str, bytes | Callable[[], bytes]]) -> None:
        self.items = dict(items)
        self.calls: list[str] = []

    def fetch(self, source: str, *, version: str | None = None) -> Fetched:
        self.calls.append(source)
        try:
            item = self.items[source]
        except KeyError:
            raise PermanentError(ErrorCode.NOT_FOUND, f"no such source: {source}") from None
        return Fetched(data=item() if callable(item) else item, source=source)


class FileFetcher:
    """Reads plain paths from disk (what ``scan`` does for local inputs), ``not-found`` when missing."""

    def fetch(self, source: str, *, version: str | None = None) -> Fetched:
        try:
            return Fetched(data=Path(source).read_bytes(), source=source)
        except FileNotFoundError:
            raise PermanentError(ErrorCode.NOT_FOUND, f"no such file: {source}") from None
