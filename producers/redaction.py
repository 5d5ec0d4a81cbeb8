"""Making references safe to show: URLs without credentials, query strings or fragments.

Presigned S3/GCS URLs carry their signature (a bearer credential) in the query string and ``user:pass@``
puts a password in the authority, so every log line, error message, stored result and Celery ``argsrepr``
shows sources through :func:`redact_url`. ``s3://`` URIs keep their ``?`` and ``#``: S3 keys may contain them
(:func:`producers.contract.split_s3_version`), and they carry no credential there. Standard library only:
producers use it without the worker.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

REDACTED = "<redacted>"


def redact_url(url: str, limit: int = 512) -> str:
    """``url`` safe for logs, messages and results: no credentials, no query (presigned signatures live
    there), no fragment. Never raises; long results are cut to ``limit`` characters."""
    urls = str(url).split(";")
    if len(urls) > 1 and all("://" in u for u in urls):  # a URL list (Sentinel): each part has its own userinfo
        return _cut(";".join(redact_url(u, limit) for u in urls), limit)
    scheme, sep, rest = str(url).partition("://")
    if sep and scheme.lower() == "s3":
        # An S3 URI's "?" and "#" are part of the key (or its ?versionId=V suffix, no secret): only userinfo goes.
        bucket, slash, key = rest.partition("/")
        return _cut(f"{scheme}://{bucket.rpartition('@')[2]}{slash}{key}", limit)
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        text = SplitResult(parts.scheme, netloc, parts.path, REDACTED if parts.query else "", "").geturl()
    except (ValueError, TypeError):  # e.g. an unbalanced "[" in the host: cut by hand, never echo it whole
        text = str(url).split("?", 1)[0].split("#", 1)[0]
        scheme, sep, rest = text.partition("://")
        if sep:
            authority, slash, path = rest.partition("/")
            text = f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"
        else:
            text = text.rpartition("@")[2]
    return _cut(text, limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
