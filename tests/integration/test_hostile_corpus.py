"""The hostile corpus, through the real worker path: a ``fakesake worker`` process consumes jobs submitted
with :class:`producers.client.Producer`; each case's final result is read back from the result store.

Network set-up: the test HTTP server listens on ``SERVER_HOST`` (127.0.0.9), the only address the worker may
reach (``FAKESAKE_FETCH__ALLOW_PRIVATE=127.0.0.9/32``, its port in ``FAKESAKE_FETCH__ALLOWED_PORTS``). Every
forbidden target is another address; the loopback ones (127.0.0.1 — what ``localhost`` resolves to —,
127.0.0.2 and ::1) have a *canary* socket listening on the server's port number, so a connection attempt
would be seen. Nothing outside loopback is ever contacted: 169.254.169.254, 10.0.0.1... are refused by the
address check before any connect (the refusal message says so, and no canary sees a connection).

Decisions the table encodes: a JPEG with a ZIP appended (and a PNG with HTML appended) is ``ok`` — we
classify the picture every viewer shows, and never serve the bytes back; an HTML file behind a JPEG
signature is ``corrupt-image``. ``gopher://``, ``ftp://`` and over-long URLs are refused by the job
contract at submit time (the producer's ``invalid-source``), so they never reach a worker; ``file://``
passes the contract and is refused by the worker (local files are off).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

import pytest
from PIL import Image

from producers.client import Producer
from producers.contract import JobResult
from producers.errors import ErrorCode, PermanentError
from producers.settings import ProducerSettings, RedisSettings
from tests.support import images as im
from tests.support.canaries import CANARY_HOSTS, SERVER_HOST, Site, site
from tests.support.checkpoints import seeded_state, write_snapshot
from tests.support.evidence import hostile_metadata
from tests.support.servers import RedisServer, Route, S3Server, drip, raw, redirect
from tests.support.workers import WorkerProcess, running_worker, worker_env
from worker.core import registry

BUCKET = "fakesake-hostile"
MAX_BYTES = 2_000_000
TOTAL_TIMEOUT_S = 3.0
MAX_ATTEMPTS = 2  # transient failures (the slow drip) are tried twice, then final
TENANT = "hostile"
BATCH = 16  # worker_env's FAKESAKE_BATCH__MAX_SIZE
MiB = 1024 * 1024
# RSS bounds. Measured on the 2-core dev VM (ONNX Runtime backend; the worker never imports torch, cold graph cache
# or warm), 6-13 runs per figure: 0.31-0.44 GiB after warm-up, +1..+92 MiB after the corpus, +6..+71 MiB over three
# more passes of its byte cases, peak (VmHWM) 0.53-0.66 GiB while the 49 Mpx PNG decodes. A leak of 1 MiB per
# decoded input (3 x 40 inputs) or of one decoded 49 Mpx image (196 MB as Pillow's RGBX) per pass fails the repeat
# bound; a decoded bomb (GBs) fails the peak bound. What moved between passes without a leak: ONNX Runtime's memory
# patterns, one per batch size (now off, worker/inference/onnx_classifier.py: +8..+20 MiB over the three passes
# since) and the malloc arenas (two per worker, worker.service.malloc: with glibc's default of 16 on this machine
# one pass grew by up to 109 MiB). Before worker/inference/imaging.py raised Pillow's block size,
# each pass grew RSS by ~200 MiB.
RSS_GROWTH_BOUND = 150 * MiB
RSS_REPEAT_BOUND = 120 * MiB
REPEATS = 3
PEAK_RSS_BOUND = 1800 * MiB

Factory = Callable[[], bytes]


@dataclass(frozen=True)
class Case:
    """One hostile input and its expected final code (``"ok"`` for a verdict)."""

    name: str
    expected: str
    body: Factory | None = None  # bytes served at /<name>.jpg (content type image/jpeg: never trusted)
    route: Callable[[], Route] | None = None  # a programmed response at /<name>
    source: str | None = None  # a source template: {port} is the server's port, {server} its address
    at_submit: bool = False  # refused by the producer (job contract) before it is queued


def served(name: str, expected: str | ErrorCode, body: Factory) -> Case:
    return Case(name, str(expected), body=body)


def routed(name: str, expected: ErrorCode, route: Callable[[], Route]) -> Case:
    return Case(name, str(expected), route=route)


def url(name: str, expected: ErrorCode | str, source: str, *, at_submit: bool = False) -> Case:
    return Case(name, str(expected), source=source, at_submit=at_submit)


OK = "ok"
FORBIDDEN = ErrorCode.FORBIDDEN_ADDRESS
_HTML = b"<!DOCTYPE html><html><body><script>fetch('/steal')</script></body></html>\n"
_SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999"/>\n'
_PDF = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
_JPEG = im.encode(im.photo(256, 192, 1), "JPEG", quality=90)
_PNG = im.encode(im.photo(256, 192, 2), "PNG")
_GOOD = {c.name: c.data for c in im.corpus(seed=4)}
METADATA = hostile_metadata()


def _png_49mpx() -> bytes:
    """7000 x 7000 (49 Mpx, under the 64 Mpx cap) in ~160 KB: decoded for real, the costliest allowed input."""
    return im.encode(Image.new("RGB", (7000, 7000), (40, 160, 90)), "PNG")


def _slow_drip(durations: list[float]) -> Route:
    """A 200 whose body arrives one byte per 100 ms; records how long each connection was held."""
    inner = drip(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"\xff" * 100_000, 0.1)

    def handle(h: BaseHTTPRequestHandler) -> None:
        started = time.monotonic()
        try:
            inner(h)
        finally:
            durations.append(time.monotonic() - started)

    return Route(handler=handle)


def _chunked_over_cap(h: BaseHTTPRequestHandler) -> None:
    chunk = b"x" * 65536
    with contextlib.suppress(OSError):
        h.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(MAX_BYTES // len(chunk) + 16):
            h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    h.close_connection = True


BYTES_CASES = [
    served("zero-bytes", ErrorCode.NOT_AN_IMAGE, lambda: b""),
    served("truncated-jpeg", ErrorCode.CORRUPT_IMAGE, lambda: im.truncated(_JPEG)),
    served("truncated-png", ErrorCode.CORRUPT_IMAGE, lambda: im.truncated(_PNG, 0.7)),
    served("html-as-jpg", ErrorCode.NOT_AN_IMAGE, lambda: _HTML),
    served("svg-as-jpg", ErrorCode.NOT_AN_IMAGE, lambda: _SVG),
    served("pdf-as-jpg", ErrorCode.NOT_AN_IMAGE, lambda: _PDF),
    served("zip-as-jpg", ErrorCode.NOT_AN_IMAGE, im.zip_archive),
    served("psd-as-jpg", ErrorCode.UNSUPPORTED_FORMAT, lambda: b"8BPS\x00\x01" + b"\x00" * 64),
    served("ico-as-jpg", ErrorCode.UNSUPPORTED_FORMAT, lambda: im.encode(im.photo(32, 32, 3), "ICO")),
    served("html-behind-jpeg-magic", ErrorCode.CORRUPT_IMAGE, lambda: b"\xff\xd8\xff\xe0" + _HTML),
    served("polyglot-jpeg-zip", OK, lambda: _JPEG + im.zip_archive()),
    served("polyglot-png-html", OK, lambda: _PNG + _HTML),
    served("bomb-png-100k-square", ErrorCode.TOO_MANY_PIXELS, lambda: im.png_header_only(100_000, 100_000)),
    served("bomb-gif-65k-square", ErrorCode.TOO_MANY_PIXELS, lambda: im.gif_header_only(65_535, 65_535)),
    served("bomb-webp-16k-square", ErrorCode.TOO_MANY_PIXELS, lambda: im.webp_header_only(16_383, 16_383)),
    served("giant-jpeg-header", ErrorCode.TOO_MANY_PIXELS, lambda: im.with_dimensions(_JPEG, 60_000, 60_000)),
    served("giant-png-81mpx-tiny", ErrorCode.TOO_MANY_PIXELS, lambda: im.png_header_only(9_000, 9_000)),
    served("giant-bmp-header", ErrorCode.TOO_MANY_PIXELS, lambda: im.with_dimensions(_GOOD["bmp-rgb"], 30_000, 30_000)),
    served("png-49mpx-under-cap", OK, _png_49mpx),
    # Hostile metadata on good pictures: classified, with a coded evidence entry (test_hostile_metadata_is_coded)
    *(served(f"metadata-{name}", OK, make) for name, (make, _) in METADATA.items()),
    served("png-16bit-grey", OK, lambda: _GOOD["png-16bit-grey"]),
    served("png-16bit-rgb", OK, lambda: im.png_rgb16(90, 60, 5)),
    served("jpeg-cmyk", OK, lambda: _GOOD["jpeg-cmyk"]),
    served("png-palette-transparency", OK, lambda: _GOOD["png-p-transparency"]),
    served("png-rgba", OK, lambda: _GOOD["png-rgba"]),
    served("webp-lossless-alpha", OK, lambda: _GOOD["webp-lossless-rgba"]),
    served("gif-animated-first-frame", OK, lambda: _GOOD["gif-animated"]),
    served("tiff-rgb", OK, lambda: _GOOD["tiff-rgb"]),
]

_DRIP_DURATIONS: list[float] = []
SERVER_CASES = [
    routed("slow-drip", ErrorCode.TIMEOUT, lambda: _slow_drip(_DRIP_DURATIONS)),
    routed(
        "more-than-announced",
        ErrorCode.TOO_LARGE,
        lambda: Route(handler=raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + _JPEG)),
    ),
    routed(
        "announced-over-cap",
        ErrorCode.TOO_LARGE,
        lambda: Route(handler=raw(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n" + _JPEG)),
    ),
    routed("chunked-over-cap", ErrorCode.TOO_LARGE, lambda: Route(handler=_chunked_over_cap)),
    routed("redirect-chain-into-loopback", FORBIDDEN, lambda: redirect("/redirect-hop-2")),
    routed("redirect-to-metadata", FORBIDDEN, lambda: redirect("http://169.254.169.254/latest/meta-data/")),
    routed("redirect-to-file", ErrorCode.INVALID_SOURCE, lambda: redirect("file:///etc/passwd")),
    routed("redirect-loop", ErrorCode.INVALID_SOURCE, lambda: redirect("/redirect-loop")),
    routed("http-404", ErrorCode.NOT_FOUND, lambda: Route(status=404)),
]

URL_CASES = [
    url("loopback-127.0.0.2", FORBIDDEN, "http://127.0.0.2:{port}/a.jpg"),
    url("loopback-ipv6", FORBIDDEN, "http://[::1]:{port}/a.jpg"),
    url("dns-localhost", FORBIDDEN, "http://localhost:{port}/a.jpg"),
    url("cloud-metadata", FORBIDDEN, "http://169.254.169.254:{port}/latest/meta-data/"),
    url("rfc1918-10", FORBIDDEN, "http://10.0.0.1:{port}/a.jpg"),
    url("cgnat-100.64", FORBIDDEN, "http://100.64.0.1:{port}/a.jpg"),
    url("unspecified-0.0.0.0", FORBIDDEN, "http://0.0.0.0:{port}/a.jpg"),
    url("mapped-ipv6-loopback", FORBIDDEN, "http://[::ffff:127.0.0.2]:{port}/a.jpg"),
    url("mapped-ipv6-metadata-hex", FORBIDDEN, "http://[::ffff:a9fe:a9fe]:{port}/a.jpg"),
    url("6to4-of-loopback", FORBIDDEN, "http://[2002:7f00:2::1]:{port}/a.jpg"),
    url("unique-local-ipv6", FORBIDDEN, "http://[fd00::1]:{port}/a.jpg"),
    url("decimal-ip", FORBIDDEN, "http://2130706434:{port}/a.jpg"),  # 127.0.0.2
    url("decimal-metadata", FORBIDDEN, "http://2852039166:{port}/a.jpg"),  # 169.254.169.254
    url("octal-ip", FORBIDDEN, "http://0177.0.0.2:{port}/a.jpg"),
    url("hex-ip", FORBIDDEN, "http://0x7f.0.0.2:{port}/a.jpg"),
    url("short-ip-127.2", FORBIDDEN, "http://127.2:{port}/a.jpg"),
    url("port-not-allowed", FORBIDDEN, "http://{server}:22/a.jpg"),
    url("credentials-in-url", ErrorCode.INVALID_SOURCE, "http://admin:hunter2@{server}:{port}/polyglot-jpeg-zip.jpg"),
    url("crlf-injection", ErrorCode.INVALID_SOURCE, "http://{server}:{port}/a.jpg\r\nX-Injected:%201"),
    url("file-scheme", ErrorCode.INVALID_SOURCE, "file:///etc/passwd"),
    url("gopher-scheme", ErrorCode.INVALID_SOURCE, "gopher://127.0.0.2:70/_INFO%0d%0a", at_submit=True),
    url("ftp-scheme", ErrorCode.INVALID_SOURCE, "ftp://127.0.0.2/a.jpg", at_submit=True),
    url("overlong-url", ErrorCode.INVALID_SOURCE, "http://{server}:{port}/" + "a" * 5000, at_submit=True),
    url("s3-over-size-cap", ErrorCode.TOO_LARGE, f"s3://{BUCKET}/oversize.jpg"),
    url("s3-bucket-not-allowed", ErrorCode.FORBIDDEN, "s3://someone-elses-bucket/a.jpg"),
    url("s3-missing-object", ErrorCode.NOT_FOUND, f"s3://{BUCKET}/missing.jpg"),
    url("s3-html-as-jpeg", ErrorCode.NOT_AN_IMAGE, f"s3://{BUCKET}/page.jpg"),
    url("s3-good-control", OK, f"s3://{BUCKET}/good.jpg"),
]

CASES = BYTES_CASES + SERVER_CASES + URL_CASES
# Sources aimed at a canary address (or redirected to one): they must be refused before connecting.
CANARY_CASES = {
    "loopback-127.0.0.2", "loopback-ipv6", "dns-localhost", "mapped-ipv6-loopback", "decimal-ip", "octal-ip",
    "hex-ip", "short-ip-127.2", "redirect-chain-into-loopback",
}  # fmt: skip


@dataclass
class CorpusRun:
    worker: WorkerProcess
    site: Site
    producer: Producer
    results: dict[str, JobResult]
    refused: dict[str, PermanentError]
    rss_before: int  # after warm-up (which includes a pass of the byte cases)
    rss_after: int  # after the whole corpus
    rss_passes: list[int]  # after each further pass of the byte cases
    peak_rss: int
    after_corpus: JobResult | None


def _setup_s3(s3_srv: S3Server) -> None:
    client = s3_srv.client()  # type: ignore[no-untyped-call]
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="oversize.jpg", Body=_JPEG + b"\x00" * (MAX_BYTES + 1 - len(_JPEG)))
    client.put_object(Bucket=BUCKET, Key="page.jpg", Body=_HTML, ContentType="image/jpeg")
    client.put_object(Bucket=BUCKET, Key="good.jpg", Body=_JPEG, ContentType="image/jpeg")


def _source(case: Case, srv: Site) -> str:
    if case.body is not None:
        return srv.server.url(f"/{case.name}.jpg")
    if case.route is not None:
        return srv.server.url(f"/{case.name}")
    assert case.source is not None
    return case.source.format(port=srv.port, server=SERVER_HOST)


def _submit_all(
    producer: Producer, srv: Site, cases: list[Case]
) -> tuple[dict[str, JobResult], dict[str, PermanentError]]:
    """Submit every case, wait for all; results by case name, and the producer's refusals."""
    ids: dict[str, str] = {}
    refused: dict[str, PermanentError] = {}
    for case in cases:
        try:
            ids[case.name] = producer.submit(_source(case, srv), tenant=TENANT)
        except PermanentError as exc:
            refused[case.name] = exc
    done = producer.wait(list(ids.values()), tenant=TENANT, timeout_s=120)
    return {name: done[job_id] for name, job_id in ids.items() if job_id in done}, refused


def _good(producer: Producer, srv: Site, count: int = 1) -> list[JobResult]:
    """Classify ``count`` good images at once (a full batch sizes the model's buffers); their results."""
    ids = producer.submit_many([srv.server.url("/good.jpg")] * count, tenant=TENANT)
    return list(producer.wait(ids, tenant=TENANT, timeout_s=60).values())


@pytest.fixture(scope="module")
def run(redis_srv: RedisServer, s3_srv: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorpusRun]:
    import redis

    redis.Redis.from_url(redis_srv.url).flushall()
    spec = registry.get("ffs-mj-5m")
    weights = write_snapshot(spec, tmp_path_factory.mktemp("weights"), seeded_state(spec))
    _setup_s3(s3_srv)
    with site() as srv:
        srv.server.add("/good.jpg", Route(body=_JPEG, content_type="image/jpeg"))
        srv.server.add("/redirect-hop-2", redirect(f"http://127.0.0.2:{srv.port}/internal-admin"))
        for case in CASES:
            if case.body is not None:
                srv.server.add(f"/{case.name}.jpg", Route(body=case.body(), content_type="image/jpeg"))
            elif case.route is not None:
                srv.server.add(f"/{case.name}", case.route())
        env = worker_env(
            redis_srv.url, weights, s3_endpoint=s3_srv.endpoint_url, http_ports=(srv.port,),
            extra={
                "FAKESAKE_FETCH__ALLOW_PRIVATE": f"{SERVER_HOST}/32",
                "FAKESAKE_FETCH__TOTAL_TIMEOUT_S": str(TOTAL_TIMEOUT_S),
                "FAKESAKE_FETCH__MAX_BYTES": str(MAX_BYTES),
                "FAKESAKE_S3__ALLOWED_BUCKETS": BUCKET,
                "FAKESAKE_RETRY__MAX_ATTEMPTS": str(MAX_ATTEMPTS),
            },
        )  # fmt: skip
        producer = Producer(ProducerSettings(redis=RedisSettings(url=redis_srv.url), tenant=TENANT))
        with running_worker(env, name="hostile") as worker:
            # Warm-up: model, a full batch (ONNX Runtime's arena keeps its high-water mark), the thread pools and
            # one pass of the byte cases (every decoder, and the malloc arenas' high-water marks) are allocated
            # before measuring, so growth below is what the corpus left behind.
            assert len(_good(producer, srv, count=BATCH)) == BATCH, worker.tail()
            _submit_all(producer, srv, BYTES_CASES)
            rss_before = worker.rss_bytes()
            results, refused = _submit_all(producer, srv, CASES)
            rss_after = worker.rss_bytes()
            # The byte cases REPEATS more times: a leak per decoded input grows RSS by as much every pass, while
            # what allocators keep (malloc arenas, ONNX Runtime's arena) levels off.
            rss_passes = []
            for _ in range(REPEATS):
                _submit_all(producer, srv, BYTES_CASES)
                rss_passes.append(worker.rss_bytes())
            after = next(iter(_good(producer, srv)), None)
            yield CorpusRun(
                worker=worker, site=srv, producer=producer, results=results, refused=refused,
                rss_before=rss_before, rss_after=rss_after, rss_passes=rss_passes,
                peak_rss=worker.peak_rss_bytes(), after_corpus=after,
            )  # fmt: skip
        producer.close()


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_gets_its_code(run: CorpusRun, case: Case) -> None:
    if case.at_submit:
        assert case.name in run.refused, f"{case.name} was queued; the job contract should refuse it"
        assert run.refused[case.name].code.value == case.expected
        return
    result = run.results.get(case.name)
    assert result is not None, f"no result for {case.name}:\n{run.worker.tail()}"
    if case.expected == OK:
        assert result.ok, result.error
        assert result.score is not None and 0.0 <= result.score <= 1.0
        return
    assert result.error is not None, f"{case.name} was classified: {result}"
    assert (result.error.code, result.status.value) == (case.expected, "error"), result.error.message
    assert "hunter2" not in result.source and "hunter2" not in result.error.message
    if case.expected == FORBIDDEN:
        # The address check's own words: the refusal came from the policy, not from a failed connect.
        assert "not allowed" in result.error.message, result.error.message


@pytest.mark.parametrize("name", list(METADATA))
def test_hostile_metadata_is_coded(run: CorpusRun, name: str) -> None:
    result = run.results[f"metadata-{name}"]
    code = METADATA[name][1]
    assert result.ok and result.evidence["decided_by"] == "model", result
    codes = {e.get("error") for e in result.evidence["provenance"]}
    assert code in codes if code else not result.evidence["provenance"], result.evidence


def test_forbidden_targets_were_never_contacted(run: CorpusRun) -> None:
    codes = {name: getattr(run.results[name].error, "code", "ok") for name in CANARY_CASES}
    assert codes == dict.fromkeys(CANARY_CASES, FORBIDDEN.value)
    assert run.site.connections() == dict.fromkeys(CANARY_HOSTS, 0)
    assert run.site.server.hits.get("/redirect-chain-into-loopback") == 1  # the chain was followed to the hop
    assert run.site.server.hits.get("/redirect-hop-2") == 1  # ... whose target was refused, not connected
    # The canaries do count connections (so a zero above means something): connect to each one ourselves.
    for host in CANARY_HOSTS:
        socket.create_connection((host, run.site.port), timeout=2).close()
    time.sleep(0.1)
    assert run.site.connections() == dict.fromkeys(CANARY_HOSTS, 1)


def test_slow_drip_is_cut_at_the_total_deadline(run: CorpusRun) -> None:
    assert run.results["slow-drip"].attempts == MAX_ATTEMPTS
    assert len(_DRIP_DURATIONS) == MAX_ATTEMPTS
    # Each connection is closed at the deadline (the server notices on its next 100 ms write, or one after).
    assert all(d < TOTAL_TIMEOUT_S + 1.0 for d in _DRIP_DURATIONS), _DRIP_DURATIONS


def test_worker_survives_the_corpus_with_bounded_memory(run: CorpusRun) -> None:
    assert run.worker.alive(), run.worker.tail()
    assert run.worker.ready()
    assert run.after_corpus is not None and run.after_corpus.ok, run.after_corpus
    growth, again = run.rss_after - run.rss_before, run.rss_passes[-1] - run.rss_after
    passes = ", ".join(f"{rss / MiB:.0f}" for rss in run.rss_passes)
    print(
        f"worker RSS: {run.rss_before / MiB:.0f} MiB after warm-up, {run.rss_after / MiB:.0f} MiB after the "
        f"corpus ({growth / MiB:+.0f} MiB), {passes} MiB after {REPEATS} more passes of its byte cases "
        f"({again / MiB:+.0f} MiB), peak {run.peak_rss / MiB:.0f} MiB"
    )
    assert growth < RSS_GROWTH_BOUND
    assert again < RSS_REPEAT_BOUND
    assert run.peak_rss < PEAK_RSS_BOUND


def test_worker_log_never_shows_the_credentials_of_a_url(run: CorpusRun) -> None:
    log = run.worker.log_path.read_text(errors="replace")
    assert "hunter2" not in log
    assert "Traceback" not in log, "an input reached an unexpected exception:\n" + run.worker.tail(80)
