"""redact_url: what logs, results and Celery's argsrepr show of a source."""

from __future__ import annotations

import pytest

from producers import wire
from producers.contract import JobMessage
from producers.redaction import redact_url

PRESIGNED = (
    "https://bucket.s3.amazonaws.com/k/a.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20250101&X-Amz-Signature=deadbeefcafe#frag"
)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (PRESIGNED, "https://bucket.s3.amazonaws.com/k/a.jpg?<redacted>"),
        ("http://user:pw@host:8080/p?q=1", "http://host:8080/p?<redacted>"),
        ("s3://bucket/key.jpg", "s3://bucket/key.jpg"),
        # S3 keys may hold "?", "#", "&" and "=" (no credential lives there): shown whole, as the fetcher reads them
        ("s3://bucket/in/a?b#c&d=e.jpg", "s3://bucket/in/a?b#c&d=e.jpg"),
        ("s3://bucket/k.jpg?versionId=3HL4kqtJlcpXroDTDmJ", "s3://bucket/k.jpg?versionId=3HL4kqtJlcpXroDTDmJ"),
        ("S3://u:pw@bucket/k?x", "S3://bucket/k?x"),
        ("http://user:pw@[::1/x?sig=1", "http://[::1/x"),  # unparseable: cut by hand, credentials dropped
        ("/data/in/a b.jpg", "/data/in/a b.jpg"),  # plain paths are shown as they are
    ],
)
def test_redact_url_drops_credentials_query_and_fragment(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_url_is_bounded() -> None:
    assert len(redact_url("https://h/" + "a" * 5000, limit=100)) == 100


def test_argsrepr_of_a_presigned_url_shows_no_signature() -> None:
    job = JobMessage(tenant="acme", source=PRESIGNED)
    argsrepr = wire.build_message(job)["headers"]["argsrepr"]
    assert "deadbeefcafe" not in argsrepr and "AKIAEXAMPLE" not in argsrepr
