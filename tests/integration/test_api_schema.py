"""schemathesis against a running ``fakesake api`` (uvicorn, a real Redis, uploads into moto's S3 server): the
requests it generates from the OpenAPI document, valid and invalid, get no 5xx and only documented answers.

The ``schemathesis`` CLI runs in a subprocess with a valid API key and a fixed seed; the example count is bounded
so that the run stays around a minute on a loaded two-core machine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_api import new_key
from tests.support.apiserver import api_server
from tests.support.servers import RedisServer, S3Server

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.mark.timeout(600)
def test_generated_requests_get_no_server_error_and_no_schema_violation(
    redis_srv: RedisServer, s3_srv: S3Server, tmp_path: Path
) -> None:
    st = shutil.which("schemathesis")
    assert st is not None, "schemathesis is a test dependency: pip install -e '.[test]'"
    url = redis_srv.url.rsplit("/", 1)[0] + "/12"
    bucket = "schema-uploads"
    s3_srv.client().create_bucket(Bucket=bucket)  # type: ignore[no-untyped-call]
    settings = {
        "FAKESAKE_API__UPLOAD_BUCKET": bucket,
        "FAKESAKE_S3__ENDPOINT_URL": s3_srv.endpoint_url,
        "FAKESAKE_S3__ACCESS_KEY_ID": "testing",
        "FAKESAKE_S3__SECRET_ACCESS_KEY": "testing",
        "FAKESAKE_S3__REGION": "us-east-1",
    }
    with api_server(url, settings) as server:
        key = new_key(url, "schemathesis")
        argv = [st, "run", f"{server.base}/openapi.json", "-H", f"Authorization: Bearer {key}"]
        argv += ["--checks", CHECKS, "--phases", "coverage,fuzzing", "-n", "6", "--seed", "7", "-w", "1"]
        argv += ["--generation-database", "none", "--no-color", "--request-timeout", "30"]
        run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=540)
        log = server.log()
    failures = run.stdout[run.stdout.find("FAILURES") :]
    assert run.returncode == 0, failures[:8000] + run.stderr[-2000:] + log[-3000:]
    assert "Coverage" in run.stdout and "Fuzzing" in run.stdout  # it ran both phases, not nothing
