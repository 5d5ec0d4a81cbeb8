"""Expand user inputs into job items: S3 prefixes (listed page by page) and manifest files (CSV/JSONL).

An item is a dict with ``source`` and, from manifests, optionally ``idempotency_key``, ``callback_url``,
``priority``, ``source_version`` and ``model`` — the keyword arguments of ``Producer.build_job``.
Everything is a generator: a million-key prefix is never held in memory.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from producers.contract import parse_s3_object
from producers.errors import ErrorCode, PermanentError

# S3 access is shared with the worker's fetcher and ``fakesake scan`` (pure boto3, no torch): one client
# factory and one listing with one error mapping (NoSuchBucket -> not-found, AccessDenied -> forbidden, ...).
from producers.s3 import list_prefix, make_s3_client

__all__ = ["ITEM_FIELDS", "expand_inputs", "expand_s3", "list_prefix", "make_s3_client", "read_manifest"]

log = logging.getLogger(__name__)

ITEM_FIELDS = frozenset({"source", "idempotency_key", "callback_url", "priority", "source_version", "model"})
_JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})

Item = dict[str, str]


def expand_s3(uri: str, client: Any | None, page_size: int = 1000) -> Iterator[str]:
    """``s3://bucket/`` or ``s3://bucket/dir/`` -> every object under it; ``s3://bucket/a.jpg`` -> itself.

    A key with neither a trailing ``/`` nor a suffix (``s3://bucket/photos``) is listed as the folder
    ``photos/``; if nothing is there it stays one source (the worker reports it if it does not exist).
    """
    try:
        bucket, key, version = parse_s3_object(uri)
    except ValueError as exc:
        raise PermanentError(ErrorCode.INVALID_SOURCE, str(exc)) from exc
    # a version (``?versionId=V``) names one object, never a folder
    if version is not None or (key and not key.endswith("/") and PurePosixPath(key).suffix):
        yield uri
        return
    if client is None:
        raise PermanentError(ErrorCode.INVALID_SOURCE, f"{uri}: listing an s3:// prefix needs an S3 client")
    if key and not key.endswith("/"):
        found = False
        for found_key in list_prefix(client, bucket, key + "/", page_size=page_size):
            found = True
            yield f"s3://{bucket}/{found_key}"
        if not found:
            yield uri
        return
    for found_key in list_prefix(client, bucket, key, page_size=page_size):
        yield f"s3://{bucket}/{found_key}"


def _manifest_error(path: str | Path, line: int, message: str) -> PermanentError:
    return PermanentError(ErrorCode.INVALID_JOB, f"manifest {path}, line {line}: {message}")


def _open(path: str | Path) -> IO[str]:
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise PermanentError(ErrorCode.NOT_FOUND, f"manifest {path}: {exc.strerror}") from exc


def _read_csv(path: str | Path) -> Iterator[Item]:
    with _open(path) as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "source" not in reader.fieldnames:
            raise PermanentError(
                ErrorCode.INVALID_JOB,
                f"manifest {path}: a CSV manifest needs a 'source' column, found {reader.fieldnames}",
            )
        # other columns (labels, notes of a data set) are ignored on purpose
        for row in reader:
            if not (row.get("source") or "").strip():
                raise _manifest_error(path, reader.line_num, "empty source")
            yield {k: v.strip() for k, v in row.items() if k in ITEM_FIELDS and v and v.strip()}


def _read_jsonl(path: str | Path) -> Iterator[Item]:
    with _open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _manifest_error(path, number, f"not JSON: {exc.msg}") from exc
            if not isinstance(entry, dict) or not isinstance(entry.get("source"), str) or not entry["source"]:
                raise _manifest_error(path, number, 'expected an object with a "source" string')
            # unlike CSV columns, JSON keys are written on purpose: a misspelt one must not vanish
            if unknown := sorted(set(entry) - ITEM_FIELDS):
                raise _manifest_error(path, number, f"unknown keys {unknown}; known: {sorted(ITEM_FIELDS)}")
            if bad := sorted(k for k, v in entry.items() if v is not None and not isinstance(v, str)):
                raise _manifest_error(path, number, f"keys {bad} must be strings")
            yield {k: v for k, v in entry.items() if v is not None}


def read_manifest(path: str | Path) -> Iterator[Item]:
    """Items of a manifest: ``.csv`` (a ``source`` column) or ``.jsonl``/``.ndjson`` (one object a line).

    Other names are sniffed: a first non-blank character ``{`` means JSONL.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix in _JSONL_SUFFIXES:
        return _read_jsonl(path)
    with _open(path) as f:
        head = f.read(4096).lstrip()
    return _read_jsonl(path) if head.startswith("{") else _read_csv(path)


def expand_inputs(
    inputs: Iterable[str], *, manifests: Iterable[str | Path] = (), s3_client: Any = None
) -> Iterator[Item]:
    """Items of manifests first, then of inputs; ``s3://`` prefixes are listed with ``s3_client``."""
    for manifest in manifests:
        yield from read_manifest(manifest)
    for value in inputs:
        if value.startswith("s3://"):
            for source in expand_s3(value, s3_client):
                yield {"source": source}
        else:
            yield {"source": value}
