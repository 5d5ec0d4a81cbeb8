"""Pure parts of feedback export (which source a manifest row names) and of direct upload (sniffing, key names,
the bounded spool)."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from api.uploads import SPOOL_MEMORY_BYTES, Spool, object_key, sniff
from producers.contract import FeedbackRecord, Label
from producers.errors import ErrorCode, PermanentError
from producers.feedback import manifest_row, manifest_source, write_manifest
from producers.redaction import redact_url
from tests.support.images import encode, photo
from worker.evaluation.dataset import read_manifest

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def record(source: str, version: str | None = None, label: Label = Label.AI) -> FeedbackRecord:
    return FeedbackRecord(
        job_id="job-00000001",
        label=label,
        source=redact_url(source),  # as the result store keeps it
        source_version=version,
        model="ffs-mj-5m@1.0",
        score=0.25,
        received_at=NOW,
    )


@pytest.mark.parametrize(
    ("submitted", "scored_version", "manifest"),
    [
        ("s3://b/k.jpg?versionId=V1", "V1", "s3://b/k.jpg?versionId=V1"),
        ("s3://b/k.jpg", "V2", "s3://b/k.jpg?versionId=V2"),  # pinned to what was scored, not the latest
        ("s3://b/k.jpg", None, "s3://b/k.jpg"),  # an unversioned bucket
        ("s3://b/what?.jpg", None, "s3://b/what?.jpg"),  # a '?' in an S3 key is kept: the key is named whole
        ("s3://b/k.jpg?versionId=V1?versionId=V3", "V3", "s3://b/k.jpg?versionId=V1?versionId=V3"),  # key ends so
        ("https://cdn.example/a.jpg", None, "https://cdn.example/a.jpg"),
        ("https://cdn.example/a.jpg?X-Amz-Signature=abc", None, None),  # presigned: cannot be fetched again
    ],
)
def test_a_manifest_names_the_scored_object_or_nothing(
    submitted: str, scored_version: str | None, manifest: str | None
) -> None:
    assert manifest_source(record(submitted, scored_version)) == manifest


@pytest.mark.parametrize(("version", "manifest"), [("V1", "s3://b/k.jpg?versionId=V1"), (None, None)])
def test_results_stored_with_a_redacted_s3_query_still_name_their_version(
    version: str | None, manifest: str | None
) -> None:
    """Results stored before S3 URIs were kept whole end in ``?<redacted>``: the scored version names the object."""
    stored = record("s3://b/k.jpg", version).model_copy(update={"source": "s3://b/k.jpg?<redacted>"})
    assert manifest_source(stored) == manifest


def test_manifest_rows_read_back_as_eval_inputs(tmp_path: Path) -> None:
    rows = [
        manifest_row(record("s3://b/a.jpg", "V1", Label.HUMAN)),
        manifest_row(record("https://x/b.png", None, Label.AI), dataset="review"),
    ]
    assert manifest_row(record("https://x/c.png?sig=1")) is None
    for suffix in ("jsonl", "csv"):
        out = io.StringIO()
        write_manifest([r for r in rows if r is not None], out, suffix)
        path = tmp_path / f"labels.{suffix}"
        path.write_text(out.getvalue())
        inputs = read_manifest(path)
        assert [(i.source, i.label, i.dataset) for i in inputs] == [
            ("s3://b/a.jpg?versionId=V1", "human", "feedback"),
            ("https://x/b.png", "ai", "review"),
        ]


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (encode(photo(16, 16), "JPEG"), "image/jpeg"),
        (encode(photo(16, 16), "PNG"), "image/png"),
        (encode(photo(16, 16), "GIF"), "image/gif"),
        (encode(photo(16, 16), "WEBP"), "image/webp"),
        (encode(photo(16, 16), "TIFF"), "image/tiff"),
        (encode(photo(16, 16), "BMP"), "image/bmp"),
    ],
)
def test_image_types_are_judged_by_their_bytes(data: bytes, mime: str) -> None:
    assert sniff(data[:16]).mime == mime


@pytest.mark.parametrize(
    "data",
    [b"", b"BM is also how a text can start", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"GIF90a", b"RIFF1234WAVE"],
)
def test_other_bytes_are_not_an_image(data: bytes) -> None:
    with Spool(1024) as spool:
        spool.write(data)
        with pytest.raises(PermanentError) as exc:
            spool.image_type()
    assert exc.value.code is ErrorCode.NOT_AN_IMAGE


def test_upload_keys_are_per_tenant_and_day() -> None:
    assert object_key("/uploads/", "acme", NOW, "png", "ab" * 16) == f"uploads/acme/2026/03/04/{'ab' * 16}.png"
    assert object_key("", "acme", NOW, "jpg", "cd" * 16) == f"acme/2026/03/04/{'cd' * 16}.jpg"
    assert object_key("u", "acme", NOW, "jpg") != object_key("u", "acme", NOW, "jpg")  # fresh uuid each time


def test_the_spool_refuses_past_its_limit_and_goes_to_disk_beyond_the_memory_bound() -> None:
    with Spool(SPOOL_MEMORY_BYTES + 10) as spool:
        spool.write(b"\x89PNG\r\n\x1a\n" + b"\0" * SPOOL_MEMORY_BYTES)
        assert spool.image_type().ext == "png" and spool.size == SPOOL_MEMORY_BYTES + 8
        assert spool.file._rolled  # type: ignore[attr-defined]  # on disk, not in memory
        with pytest.raises(PermanentError) as exc:
            spool.write(b"123")
        assert exc.value.code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["feedback", "job-00000001"], "give --label"),
        (["feedback", "export", "--label", "ai"], "--label and --note are for labelling"),
        (["feedback", "job-00000001", "--label", "ai", "--output", "x.jsonl"], "--output is for export"),
    ],
)
def test_feedback_cli_usage_errors_exit_2_before_any_connection(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from producers.cli import main

    assert main([*argv, "--redis-url", "redis://127.0.0.1:1/0"]) == 2
    assert says in capsys.readouterr().err
