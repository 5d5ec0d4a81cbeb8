"""``s3://`` weights through a real S3 server (moto in server mode): download, ETag cache, errors."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from producers.errors import ConfigError
from tests.support.checkpoints import seeded_state, write_snapshot
from tests.support.servers import S3Server
from worker.core import registry
from worker.inference.loader import load_detector, resolve_weights

MJ = registry.get("ffs-mj-5m")


@pytest.fixture()
def bucket(s3_srv: S3Server, tmp_path: Path) -> str:
    name = f"weights-{uuid.uuid4().hex[:8]}"
    client = s3_srv.client()  # type: ignore[no-untyped-call]
    client.create_bucket(Bucket=name)
    weights = write_snapshot(MJ, tmp_path / "snap", seeded_state(MJ))
    client.upload_file(str(weights), name, f"models/mj/{MJ.weights_file}")
    return name


def test_s3_object_and_prefix_load(s3_srv: S3Server, bucket: str, tmp_path: Path) -> None:
    for uri in (f"s3://{bucket}/models/mj/{MJ.weights_file}", f"s3://{bucket}/models/mj/"):
        detector = load_detector(
            MJ, uri, device="cpu", s3_cache_dir=tmp_path / "cache", s3_client_factory=s3_srv.client
        )
        state = detector.module.state_dict()
        assert all((state[k] == v).all() for k, v in seeded_state(MJ).items())


def test_s3_download_is_cached_per_etag(s3_srv: S3Server, bucket: str, tmp_path: Path) -> None:
    uri, cache = f"s3://{bucket}/models/mj/{MJ.weights_file}", tmp_path / "cache"
    first = resolve_weights(MJ, uri, s3_cache_dir=cache, s3_client_factory=s3_srv.client)
    stamp = first.stat().st_mtime_ns
    again = resolve_weights(MJ, uri, s3_cache_dir=cache, s3_client_factory=s3_srv.client)
    assert again == first and again.stat().st_mtime_ns == stamp  # not downloaded twice
    s3_srv.client().put_object(  # type: ignore[no-untyped-call]
        Bucket=bucket, Key=f"models/mj/{MJ.weights_file}", Body=b"replaced"
    )
    replaced = resolve_weights(MJ, uri, s3_cache_dir=cache, s3_client_factory=s3_srv.client)
    assert replaced != first and replaced.read_bytes() == b"replaced"
    assert not list(cache.rglob("*.partial"))


def test_s3_missing_object_names_uri_and_flag(s3_srv: S3Server, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_detector(MJ, f"s3://{bucket}/nope/", device="cpu", s3_cache_dir=tmp_path, s3_client_factory=s3_srv.client)
    message = info.value.message
    assert f"s3://{bucket}/nope/{MJ.weights_file}" in message
    assert "--weights" in message and "FAKESAKE_MODEL__WEIGHTS" in message
