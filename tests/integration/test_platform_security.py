"""Platform security through a real worker: JSON-only messages, secrets kept out of logs and Redis,
redacted presigned URLs, tenant isolation, SSRF-checked webhooks, Redis AUTH/ACL and TLS.

The main worker runs against a redis-server with ``requirepass`` and two ACL users: the worker's user
(``~* &* +@all -@dangerous``: no FLUSHALL, CONFIG, KEYS, DEBUG...) named in ``FAKESAKE_REDIS__URL`` with its
password in ``FAKESAKE_REDIS__PASSWORD``, and a producer user confined to ``fakesake*`` keys and
``fakesake:*`` channels, whose password is in the URL. The CLI uses the default user with
``FAKESAKE_REDIS__PASSWORD``. It logs at DEBUG, the most talkative level, for the secrets check.
"""

from __future__ import annotations

import base64
import json
import pickle
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import redis

from producers import cli, wire
from producers.client import Producer
from producers.contract import JobResult
from producers.dlq import DeadLetters
from producers.errors import ErrorCode, PermanentError, TransientError
from producers.settings import ProducerSettings, RedisSettings
from producers.webhook import SIGNATURE_HEADER, verify
from tests.support.canaries import SERVER_HOST, Site, site
from tests.support.checkpoints import seeded_state, write_snapshot
from tests.support.images import encode, photo
from tests.support.servers import RedisServer, Route, S3Server, free_port
from tests.support.tls import write_ca_and_server
from tests.support.workers import WorkerProcess, running_worker, worker_env
from worker.core import registry

DEFAULT_PW = "default-pw-" + secrets.token_hex(8)
WORKER_PW = "worker-pw-" + secrets.token_hex(8)
PRODUCER_PW = "producer-pw-" + secrets.token_hex(8)
S3_SECRET = "s3-secret-" + secrets.token_hex(8)
WEBHOOK_SECRET = "webhook-secret-" + secrets.token_hex(8)
SECRETS = (DEFAULT_PW, WORKER_PW, PRODUCER_PW, S3_SECRET, WEBHOOK_SECRET)
PRESIGNED_SIG = "f00dfeed" + secrets.token_hex(16)
PRESIGNED_QUERY = f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature={PRESIGNED_SIG}"
JPEG = encode(photo(200, 150, 7), "JPEG", quality=90)


@dataclass
class Secure:
    server: RedisServer
    site: Site
    worker: WorkerProcess
    producer: Producer  # the confined producer ACL user
    admin: redis.Redis  # the default user, for inspection
    hooks: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def url(self, user: str | None = None, password: str | None = None) -> str:
        auth = f"{user or ''}:{password}@" if password else f"{user}@" if user else ""
        return f"redis://{auth}127.0.0.1:{self.server.port}/0"

    def log(self) -> str:
        return self.worker.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            assert time.monotonic() < deadline, f"{text!r} never logged:\n{self.worker.tail(40)}"
            time.sleep(0.1)


def _redis_args() -> tuple[str, ...]:
    return (
        "--requirepass", DEFAULT_PW,
        "--user", "fakesake-worker", "on", f">{WORKER_PW}", "~*", "&*", "+@all", "-@dangerous",
        "--user", "fakesake-producer", "on", f">{PRODUCER_PW}", "~fakesake*", "&fakesake:*", "+@all", "-@dangerous",
    )  # fmt: skip


def _weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = registry.get("ffs-mj-5m")
    return write_snapshot(spec, tmp_path_factory.mktemp("weights"), seeded_state(spec))


@pytest.fixture(scope="module")
def secure(s3_srv: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    data_dir = Path(tempfile.mkdtemp(prefix="fakesake-redis-acl-"))
    server = RedisServer(port=free_port(), data_dir=data_dir, extra_args=_redis_args())
    server.start()
    try:
        with site() as srv:
            hooks: list[tuple[dict[str, str], bytes]] = []

            def hook(h: BaseHTTPRequestHandler) -> None:
                hooks.append((dict(h.headers), h.rfile.read(int(h.headers.get("Content-Length", 0)))))
                h.send_response(204)
                h.send_header("Content-Length", "0")
                h.end_headers()

            srv.server.add("/good.jpg", Route(body=JPEG, content_type="image/jpeg"))
            srv.server.add("/hook", Route(handler=hook))
            base = f"127.0.0.1:{server.port}/0"
            env = worker_env(
                f"redis://{base}", _weights(tmp_path_factory), s3_endpoint=s3_srv.endpoint_url,
                http_ports=(srv.port,),
                extra={
                    "FAKESAKE_REDIS__URL": f"redis://fakesake-worker@{base}",
                    "FAKESAKE_REDIS__PASSWORD": WORKER_PW,
                    "FAKESAKE_S3__ACCESS_KEY_ID": "AKIAFAKESAKETEST",
                    "FAKESAKE_S3__SECRET_ACCESS_KEY": S3_SECRET,
                    "FAKESAKE_RESULTS__WEBHOOK_SECRET": WEBHOOK_SECRET,
                    "FAKESAKE_FETCH__ALLOW_PRIVATE": f"{SERVER_HOST}/32",
                    "FAKESAKE_RETRY__MAX_ATTEMPTS": "1",
                    "FAKESAKE_LOG__LEVEL": "DEBUG",
                },
            )  # fmt: skip
            producer_url = f"redis://fakesake-producer:{PRODUCER_PW}@{base}"
            producer = Producer(ProducerSettings(redis=RedisSettings(url=producer_url), tenant="acme"))
            admin = redis.Redis(port=server.port, password=DEFAULT_PW)
            with running_worker(env, name="secure") as worker:
                yield Secure(server, srv, worker, producer, admin, hooks)
            producer.close()
            admin.close()
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _classify(secure: Secure, source: str, tenant: str = "acme", **kw: Any) -> JobResult:
    job_id = secure.producer.submit(source, tenant=tenant, **kw)
    result = secure.producer.wait([job_id], tenant=tenant, timeout_s=60).get(job_id)
    assert result is not None, secure.worker.tail()
    return result


# -- Redis AUTH / ACL ---------------------------------------------------------------------------------


def test_worker_and_producer_authenticate_as_their_acl_users(secure: Secure) -> None:
    assert _classify(secure, secure.site.server.url("/good.jpg")).ok
    clients = secure.admin.client_list()
    assert {"fakesake-worker", "fakesake-producer"} <= {c["user"] for c in clients}


def test_the_producer_user_is_confined_to_its_keys(secure: Secure) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError):
        secure.producer.redis.get("_kombu.binding.fakesake.interactive")
    with pytest.raises(redis.exceptions.NoPermissionError):
        secure.producer.redis.flushall()


@pytest.mark.parametrize(
    ("user", "password"),
    [(None, None), ("fakesake-producer", "wrong"), (None, WORKER_PW)],
    ids=["no-credentials", "wrong-password", "worker-password-as-default-user"],
)
def test_wrong_or_missing_credentials_are_refused(secure: Secure, user: str | None, password: str | None) -> None:
    settings = RedisSettings(url=secure.url(user, password), socket_timeout_s=2)
    with pytest.raises(TransientError) as info:
        Producer(ProducerSettings(redis=settings)).submit(secure.site.server.url("/good.jpg"))
    assert info.value.code is ErrorCode.UNAVAILABLE
    assert "authenticated" in info.value.message or "password" in info.value.message, info.value.message


def test_cli_uses_the_password_setting(
    secure: Secure, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKESAKE_REDIS__URL", secure.url())
    monkeypatch.setenv("FAKESAKE_REDIS__PASSWORD", DEFAULT_PW)
    code = cli.main(["submit", secure.site.server.url("/good.jpg"), "--tenant", "acme", "--wait", "--timeout", "60"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert json.loads(out.splitlines()[0])["status"] == "ok"


# -- JSON only ----------------------------------------------------------------------------------------


class _Tripwire:
    """Unpickling this creates ``path``: the proof that a pickle was (not) loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_pickle_message_is_refused_logged_dead_lettered_and_never_loaded(secure: Secure, tmp_path: Path) -> None:
    marker = tmp_path / "pickle-was-loaded"
    job = secure.producer.build_job(secure.site.server.url("/good.jpg"), tenant="acme")
    message = wire.build_message(job)
    body = pickle.dumps(([job.model_dump(mode="json"), _Tripwire(str(marker))], {}, {}))
    message.update({
        "body": base64.b64encode(body).decode(),
        "content-type": "application/x-python-serialize",
        "content-encoding": "binary",
    })  # fmt: skip
    message["properties"]["body_encoding"] = "base64"  # as Celery's own pickle producer would send it
    secure.admin.lpush(wire.queue_key(job.priority), json.dumps(message))
    secure.wait_for_log("Refusing to deserialize untrusted content of type pickle")
    letter = None
    for _ in range(50):
        if (letter := DeadLetters(secure.admin).get(job.job_id)) is not None:
            break
        time.sleep(0.1)
    assert letter is not None, secure.worker.tail()
    assert letter.error.code == ErrorCode.INVALID_JOB.value and "ContentDisallowed" in letter.error.message
    assert letter.payload["content_type"] == "application/x-python-serialize"
    assert not marker.exists()  # never unpickled
    assert secure.producer.get_result(job.job_id, tenant="acme") is None  # never executed
    assert secure.worker.alive() and _classify(secure, secure.site.server.url("/good.jpg")).ok  # keeps going


# -- secrets and redaction ------------------------------------------------------------------------------


_READERS: dict[str, Callable[[redis.Redis, bytes], Any]] = {
    "string": lambda c, k: c.get(k),
    "list": lambda c, k: c.lrange(k, 0, -1),
    "hash": lambda c, k: c.hgetall(k),
    "set": lambda c, k: c.smembers(k),
    "zset": lambda c, k: c.zrange(k, 0, -1),
}


def _redis_text(client: redis.Redis, match: str = "*") -> str:
    """Every key matching ``match`` and its value, as text to search."""
    parts = []
    for key in client.scan_iter(match=match, count=1000):
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        parts.append(f"{key!r} {_READERS[kind](client, key)!r}")
    return "\n".join(parts)


def test_presigned_query_is_redacted_in_results_logs_and_queue(secure: Secure) -> None:
    ok = _classify(secure, secure.site.server.url(f"/good.jpg?{PRESIGNED_QUERY}"))
    failed = _classify(secure, secure.site.server.url(f"/gone.jpg?{PRESIGNED_QUERY}"))
    assert ok.ok and ok.source == secure.site.server.url("/good.jpg?<redacted>")
    assert failed.error is not None and failed.error.code == ErrorCode.NOT_FOUND.value
    assert PRESIGNED_SIG not in failed.model_dump_json()
    assert PRESIGNED_SIG not in secure.log()
    # Stored results and the tenant index never hold it. (Queued and dead-lettered jobs keep the source as
    # submitted: fetching and re-driving need it; that is why Redis gets ACLs and TLS.)
    assert ok.job_id in _redis_text(secure.admin, "fakesake:result*")
    assert PRESIGNED_SIG not in _redis_text(secure.admin, "fakesake:result*")


def test_secrets_never_reach_logs_or_redis(secure: Secure) -> None:
    # Exercise every secret first: S3 (signs requests), webhook (signs deliveries), Redis (authenticates).
    _classify(secure, "s3://no-such-bucket-here/a.jpg")
    _classify(secure, secure.site.server.url("/good.jpg"), callback_url=secure.site.server.url("/hook"))
    secure.wait_for_log("/hook")
    log, stored = secure.log(), _redis_text(secure.admin)
    assert "DEBUG" in log  # the check ran at the most talkative level
    for secret in SECRETS:
        assert secret not in log
        assert secret not in stored


# -- tenants ----------------------------------------------------------------------------------------------


def test_tenant_b_cannot_read_tenant_a_results(
    secure: Secure, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result = _classify(secure, secure.site.server.url("/good.jpg"), tenant="tenant-a")
    assert result.ok
    assert secure.producer.get_result(result.job_id, tenant="tenant-b") is None
    assert result.job_id not in {r.job_id for r in secure.producer.list_results(tenant="tenant-b")}
    assert secure.producer.get_result(result.job_id, tenant="tenant-a") == result
    for tenant in ("tenant-a:x", "*", "tenant-b:../tenant-a"):  # no way out of the tenant's key space
        with pytest.raises(PermanentError) as info:
            secure.producer.get_result(result.job_id, tenant=tenant)
        assert info.value.code is ErrorCode.INVALID_JOB
    monkeypatch.setenv("FAKESAKE_REDIS__URL", secure.url())
    monkeypatch.setenv("FAKESAKE_REDIS__PASSWORD", DEFAULT_PW)
    assert cli.main(["result", result.job_id, "--tenant", "tenant-b"]) == cli.EXIT_SOME_FAILED
    assert "no result" in capsys.readouterr().err
    assert cli.main(["result", result.job_id, "--tenant", "tenant-a"]) == cli.EXIT_OK
    assert json.loads(capsys.readouterr().out)["job_id"] == result.job_id


# -- webhooks ------------------------------------------------------------------------------------------------


def test_webhook_is_signed_and_verifiable(secure: Secure) -> None:
    secure.hooks.clear()
    result = _classify(secure, secure.site.server.url("/good.jpg"), callback_url=secure.site.server.url("/hook"))
    deadline = time.monotonic() + 20
    while not secure.hooks and time.monotonic() < deadline:
        time.sleep(0.1)
    assert secure.hooks, secure.worker.tail()
    headers, body = secure.hooks[0]
    assert verify(body, headers[SIGNATURE_HEADER], WEBHOOK_SECRET)
    assert not verify(body, headers[SIGNATURE_HEADER], "another-secret")
    assert JobResult.model_validate_json(body).job_id == result.job_id


@pytest.mark.parametrize("target", ["127.0.0.2", "[::1]", "localhost", "169.254.169.254"])
def test_webhook_to_a_private_address_is_refused_and_the_result_stands(secure: Secure, target: str) -> None:
    secure.site.connections()  # forget earlier connections (none expected)
    callback = f"http://{target}:{secure.site.port}/hook"
    result = _classify(secure, secure.site.server.url("/good.jpg"), callback_url=callback)
    secure.wait_for_log(f"webhook to {callback} failed for good after 1 attempts: forbidden-address")
    assert result.ok
    assert secure.producer.get_result(result.job_id, tenant="acme") == result  # the stored result is untouched
    assert secure.site.connections() == dict.fromkeys(secure.site.canaries, 0)


# -- TLS ------------------------------------------------------------------------------------------------------


def _tls_supported() -> bool:
    exe = shutil.which("redis-server")
    if exe is None:
        return False
    import subprocess

    probe = subprocess.run([exe, "--port", "0", "--tls-port", "0"], capture_output=True, text=True, timeout=10)
    return "Bad directive" not in probe.stdout + probe.stderr


@pytest.mark.skipif(not _tls_supported(), reason="this redis-server was built without TLS (BUILD_TLS=no)")
def test_worker_and_producer_over_tls(
    s3_srv: S3Server, tmp_path_factory: pytest.TempPathFactory, secure: Secure
) -> None:
    certs = write_ca_and_server(tmp_path_factory.mktemp("tls"), ["localhost"], ["127.0.0.1"])
    port = free_port()
    tls_args = (
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(certs.cert),
        "--tls-key-file", str(certs.key), "--tls-ca-cert-file", str(certs.ca_cert), "--tls-auth-clients", "no",
    )  # fmt: skip
    data_dir = Path(tempfile.mkdtemp(prefix="fakesake-redis-tls-"))
    server = RedisServer(port=port, data_dir=data_dir, extra_args=tls_args)
    server.start()
    url = f"rediss://127.0.0.1:{port}/0"
    try:
        env = worker_env(url, _weights(tmp_path_factory), http_ports=(secure.site.port,),
                         extra={"FAKESAKE_REDIS__SSL_CA_CERTS": str(certs.ca_cert),
                                "FAKESAKE_FETCH__ALLOW_PRIVATE": f"{SERVER_HOST}/32"})  # fmt: skip
        settings = ProducerSettings(redis=RedisSettings(url=url, ssl_ca_certs=str(certs.ca_cert)), tenant="acme")
        producer = Producer(settings)
        with running_worker(env, name="tls") as worker:
            job_id = producer.submit(secure.site.server.url("/good.jpg"))
            result = producer.wait([job_id], timeout_s=60).get(job_id)
            assert result is not None and result.ok, worker.tail()
        producer.close()
        untrusted = Producer(ProducerSettings(redis=RedisSettings(url=url, socket_timeout_s=2)))
        with pytest.raises(TransientError) as info:  # the system store does not know our CA
            untrusted.submit(secure.site.server.url("/good.jpg"))
        assert info.value.code is ErrorCode.UNAVAILABLE and "certificate" in info.value.message.lower()
        plain = redis.Redis(port=port, socket_timeout=2)
        with pytest.raises(redis.exceptions.ConnectionError):
            plain.ping()  # no plaintext on the TLS port
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
