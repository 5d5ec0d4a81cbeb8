"""Local files: ``file://`` URIs and plain paths, for development and ``fakesake scan`` only.

Refused (``invalid-source``) unless the policy allows local files: a worker fed by strangers must not
read its own disk. Codes: missing -> ``not-found``; unreadable -> ``forbidden``; a directory, FIFO,
device or socket -> ``invalid-source``; over ``max_bytes`` -> ``too-large`` (checked on the open file
descriptor before reading, and again while reading, since the file may grow).
"""

from __future__ import annotations

import os
import stat
from urllib.parse import unquote, urlsplit

from producers.errors import ErrorCode, PermanentError
from worker.core.ports import Fetched
from worker.fetch.limits import read_capped
from worker.fetch.policy import FetchPolicy

_CHUNK = 1024 * 1024


def local_path(source: str) -> str:
    """The filesystem path of ``file:///...``, ``file://localhost/...`` or a plain path."""
    if not source.lower().startswith("file:"):
        return source
    parts = urlsplit(source)
    if parts.netloc not in ("", "localhost"):
        raise PermanentError(ErrorCode.INVALID_SOURCE, f"file:// URI names a remote host: {parts.netloc!r}")
    path = unquote(parts.path)
    if not path:
        raise PermanentError(ErrorCode.INVALID_SOURCE, f"file:// URI has no path: {source!r}")
    return path


class LocalFetcher:
    """The :class:`~worker.core.ports.Fetcher` for local files (only when ``policy.allow_local_files``)."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy

    def fetch(self, source: str, *, version: str | None = None) -> Fetched:
        """Read the file at ``source`` (``version`` is ignored)."""
        if not self.policy.allow_local_files:
            raise PermanentError(
                ErrorCode.INVALID_SOURCE, "local files are disabled (FAKESAKE_FETCH__ALLOW_LOCAL_FILES)"
            )
        path = local_path(source)
        try:
            # O_NONBLOCK: opening a FIFO must not hang; we then check the opened descriptor, not the path,
            # so the file cannot be swapped between the check and the read.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as exc:
            raise PermanentError(ErrorCode.NOT_FOUND, f"no such file: {path}") from exc
        except IsADirectoryError as exc:
            raise PermanentError(ErrorCode.INVALID_SOURCE, f"not a regular file: {path}") from exc
        except PermissionError as exc:
            raise PermanentError(ErrorCode.FORBIDDEN, f"permission denied: {path}") from exc
        except OSError as exc:
            raise PermanentError(ErrorCode.NOT_FOUND, f"cannot open {path}: {exc.strerror}") from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise PermanentError(ErrorCode.INVALID_SOURCE, f"not a regular file: {path}")
        with os.fdopen(fd, "rb") as f:
            if info.st_size > self.policy.max_bytes:
                raise PermanentError(
                    ErrorCode.TOO_LARGE, f"{path} is {info.st_size} bytes, limit {self.policy.max_bytes}"
                )
            data = read_capped(f.read, self.policy.max_bytes, path, chunk_bytes=_CHUNK)
        return Fetched(data=data, source=source, meta={"path": path, "size": len(data)})
