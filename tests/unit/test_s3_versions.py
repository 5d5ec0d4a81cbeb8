"""S3 versions in sources and records: the ``?versionId=V`` rule, its normalisation into ``source_version``, the
version id and ETag carried into scan records and job results, and one attempt per worker S3 request."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from producers.contract import JobMessage, JobResult, Status, parse_s3_object, parse_s3_uri, split_s3_version
from producers.errors import ConfigError
from producers.s3 import make_s3_client
from producers.settings import S3Settings
from worker.core import registry
from worker.core.batcher import Batcher
from worker.core.batching import BatchPolicy
from worker.core.pipeline import Pipeline, Preparer
from worker.core.ports import Fetched
from worker.service import builder
from worker.service.scan import outcome_record
from worker.service.settings import WorkerSettings

SPEC = registry.get("ffs-mj-5m")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://b/k.jpg", ("b", "k.jpg", None)),
        ("s3://b/k.jpg?versionId=3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrH", ("b", "k.jpg", "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrH")),
        ("S3://b/dir/k?versionId=null", ("b", "dir/k", "null")),
        # any other ``?``, ``#``, ``&`` or ``%`` belongs to the key, verbatim
        ("s3://b/what?.jpg", ("b", "what?.jpg", None)),
        ("s3://b/a#b&c=d%20e.jpg", ("b", "a#b&c=d%20e.jpg", None)),
        ("s3://b/what?.jpg?versionId=v1", ("b", "what?.jpg", "v1")),
        ("s3://b/k?versionId=", ("b", "k?versionId=", None)),  # no version id: part of the key
        ("s3://b/k?versionId=a&x=1", ("b", "k?versionId=a&x=1", None)),  # not the console's form
        ("s3://b/k?versionid=v1", ("b", "k?versionid=v1", None)),  # S3's parameter is case-sensitive
        # the one escape: a key that itself ends in ``?versionId=x``, read at version v2
        ("s3://b/k?versionId=x?versionId=v2", ("b", "k?versionId=x", "v2")),
        ("s3://b", ("b", "", None)),
        ("s3://b/", ("b", "", None)),
    ],
)
def test_version_suffix_rule(uri: str, expected: tuple[str, str, str | None]) -> None:
    assert parse_s3_object(uri) == expected
    assert parse_s3_uri(uri) == expected[:2]


@pytest.mark.parametrize("uri", ["s3:///k.jpg", "http://b/k.jpg", "b/k.jpg", "s3:/b/k"])
def test_not_an_s3_uri(uri: str) -> None:
    with pytest.raises(ValueError, match="not an s3:// URI"):
        parse_s3_object(uri)


def test_split_keeps_everything_but_the_suffix() -> None:
    assert split_s3_version("s3://b/a?b.jpg?versionId=v9") == ("s3://b/a?b.jpg", "v9")
    assert split_s3_version("s3://b/a?b.jpg") == ("s3://b/a?b.jpg", None)


def test_job_copies_the_uri_version_into_source_version() -> None:
    job = JobMessage(tenant="acme", source="s3://b/k.jpg?versionId=v1")
    assert (job.source, job.source_version) == ("s3://b/k.jpg?versionId=v1", "v1")  # source stays as given
    assert JobMessage(tenant="acme", source="s3://b/k.jpg?versionId=v1", source_version="v1").source_version == "v1"
    assert JobMessage(tenant="acme", source="s3://b/k.jpg", source_version="v2").source_version == "v2"
    assert JobMessage(tenant="acme", source="https://h/k.jpg?versionId=v1").source_version is None  # not S3
    again = JobMessage.model_validate_json(job.model_dump_json())
    assert again == job


def test_job_refuses_two_different_versions() -> None:
    with pytest.raises(ValidationError, match="names version 'v1' but source_version is 'v2'"):
        JobMessage(tenant="acme", source="s3://b/k.jpg?versionId=v1", source_version="v2")


def test_old_results_without_version_fields_still_parse() -> None:
    old = '{"schema_version": 1, "job_id": "abcdefgh", "tenant": "acme", "source": "s3://b/k", "status": "ok"}'
    result = JobResult.model_validate_json(old)
    assert (result.source_version, result.etag) == (None, None)
    new = result.model_copy(update={"source_version": "v1", "etag": "abc"})
    assert JobResult.model_validate_json(new.model_dump_json()).source_version == "v1"


class MetaFetcher:
    """Every source is the same bytes, read at a known S3 version."""

    def fetch(self, source: str, *, version: str | None = None) -> Fetched:
        return Fetched(data=b"img", source=source, meta={"version_id": "v7", "etag": "e7"})


def test_scan_outcome_records_the_version_and_etag_read() -> None:
    batcher = Batcher(lambda batch: [0.9] * len(batch), BatchPolicy(max_size=2, max_wait_s=0.01)).start()
    try:
        pipeline = Pipeline(SPEC, Preparer(MetaFetcher(), lambda data: data), batcher)
        [outcome] = pipeline.classify(["s3://b/k.jpg?versionId=v7"])
    finally:
        batcher.stop()
    assert outcome.status is Status.OK
    record = outcome_record(outcome)
    assert (record["source_version"], record["etag"]) == ("v7", "e7")


def test_worker_source_client_makes_one_attempt_and_scan_keeps_boto3_retries() -> None:
    settings = WorkerSettings(s3=S3Settings(region="us-east-1", max_attempts=4))
    assert builder.s3_client(settings).meta.config.retries == {"mode": "standard", "total_max_attempts": 1}
    assert builder.s3_client(settings, job_retries=False).meta.config.retries == {
        "mode": "standard",
        "total_max_attempts": 4,
    }
    with pytest.raises(ConfigError):
        make_s3_client(settings.s3, max_attempts=0)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "table"])
def test_records_with_versions_write_in_every_format(fmt: str) -> None:
    import io

    from producers.output import write_records
    from worker.core.pipeline import Outcome

    records = [
        outcome_record(Outcome("s3://b/k.jpg?versionId=v7", Status.OK, SPEC.ref, 0.9, source_version="v7", etag="e7")),
        outcome_record(Outcome("photo.jpg", Status.OK, SPEC.ref, 0.1)),
    ]
    out = io.StringIO()
    assert write_records(records, fmt, out) == 2
    if fmt == "csv":
        header, first, second = out.getvalue().splitlines()
        assert header.endswith("source_version,etag") and first.endswith("v7,e7") and second.endswith(",")
