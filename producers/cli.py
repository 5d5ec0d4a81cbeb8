"""``fakesake submit``, ``fakesake result``, ``fakesake dlq`` (and ``feedback``, ``lanes``): the producer side of the
command line.

Mounted by the root CLI (``worker/service/cli.py``) through :func:`add_subcommands`; each sub-command sets
``run(args) -> exit code``. Exit codes: 0 all ok, 3 some jobs failed (each reported), 2 usage or
configuration error (bad manifest, Redis unreachable). Imports stay light: no torch, no Celery app.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any

from producers import feedback_cli, lanes_cli
from producers.contract import JobResult, Priority
from producers.errors import ErrorCode, FakesakeError, PermanentError
from producers.output import FORMATS, ensemble_fields, record, write_records
from producers.redaction import redact_url
from producers.settings import ProducerSettings

EXIT_OK, EXIT_USAGE, EXIT_SOME_FAILED = 0, 2, 3
_KINDS = ("job", "webhook")
_CHUNK = 10_000  # items validated and enqueued per round: bounded memory for huge manifests/prefixes


def result_record(result: JobResult, source: str | None = None) -> dict[str, Any]:
    """A stored result as a record (``source`` as the user gave it) plus job id, attempts, timings and the S3
    version and ETag that were scored."""
    return record(
        source if source is not None else result.source,
        result.status.value,
        score=result.score,
        label=None if result.label is None else result.label.value,
        band=None if result.band is None else result.band.value,
        model=result.model,
        error=None if result.error is None else (result.error.code, result.error.message),
        job_id=result.job_id,
        attempts=result.attempts,
        timings=result.timings.model_dump(),
        source_version=result.source_version,
        etag=result.etag,
        **ensemble_fields(result.detectors, result.fusion),
    )


def error_record(source: str, code: str, message: str, job_id: str | None = None) -> dict[str, Any]:
    """A source that never got a result (refused at submit, or unknown to the store)."""
    return record(source, "error", error=(code, message), job_id=job_id)


def _settings(args: argparse.Namespace) -> ProducerSettings:
    settings = ProducerSettings()
    update: dict[str, Any] = {}
    if getattr(args, "redis_url", None):
        update["redis"] = settings.redis.model_copy(update={"url": args.redis_url})
    if getattr(args, "s3_endpoint_url", None):
        update["s3"] = settings.s3.model_copy(update={"endpoint_url": args.s3_endpoint_url})
    return settings.model_copy(update=update)


def _producer(args: argparse.Namespace) -> Any:
    from producers.client import Producer

    return Producer(_settings(args))


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8", newline="") as f:
        yield f


def _fail(exc: FakesakeError) -> int:
    print(f"fakesake: {exc.code.value}: {exc.message}", file=sys.stderr)
    return EXIT_USAGE


def _common(p: argparse.ArgumentParser, *, formats: bool = True) -> None:
    p.add_argument("--tenant", help="tenant (default: env FAKESAKE_TENANT or 'default')")
    p.add_argument("--redis-url", help="Redis URL; env FAKESAKE_REDIS__URL")
    if formats:
        p.add_argument("--format", choices=FORMATS, default="jsonl", help="output format (default jsonl)")
        p.add_argument("--output", "-o", help="write records here instead of stdout")


def add_subcommands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Mount ``submit``, ``result``, ``dlq`` and ``feedback`` on the root parser's sub-parsers."""
    p = sub.add_parser("submit", help="enqueue images (URLs, s3:// objects or prefixes, manifests) for workers")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="http(s):// URL, s3://bucket/key or s3://bucket/prefix/")
    p.add_argument(
        "--manifest",
        action="append",
        default=[],
        metavar="FILE",
        help="CSV (a 'source' column) or JSONL ({\"source\": ...}) manifest; repeatable",
    )
    p.add_argument(
        "--priority",
        choices=[x.value for x in Priority],
        default=Priority.INTERACTIVE.value,
        help="lane (default interactive)",
    )
    p.add_argument(
        "--model", help="detector name, or several comma-separated (an ensemble); env FAKESAKE_DEFAULT_MODEL"
    )
    p.add_argument(
        "--queue-anyway",
        action="store_true",
        help="queue even when no live worker serves the detectors (refused with unserved-model otherwise)",
    )
    p.add_argument("--callback-url", help="POST each signed result here")
    p.add_argument("--idempotency-key", help="only with a single input: resubmitting returns the same job")
    p.add_argument("--wait", action="store_true", help="wait for the results and print them")
    p.add_argument("--timeout", type=float, default=600.0, help="--wait at most this many seconds (default 600)")
    p.add_argument(
        "--wait-if-full",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for room when a lane is full (default: refuse at once)",
    )
    p.add_argument(
        "--s3-endpoint-url", help="S3-compatible endpoint for listing prefixes; env FAKESAKE_S3__ENDPOINT_URL"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _common(p)
    p.set_defaults(run=run_submit)

    p = sub.add_parser("result", help="print the result of a job")
    p.add_argument("job_id", metavar="JOB_ID")
    _common(p)
    p.set_defaults(run=run_result)

    p = sub.add_parser("dlq", help="list or re-drive dead-lettered jobs and webhooks")
    dlq = p.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    q = dlq.add_parser("list", help="dead letters not yet re-driven, oldest first")
    q.add_argument("--limit", type=int, default=100, help="at most this many records (default 100)")
    _dlq_common(q)
    q.set_defaults(run=run_dlq_list)
    q = dlq.add_parser("retry", help="re-enqueue dead jobs under new job ids; re-send dead webhooks")
    q.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    q.add_argument("--all", action="store_true", help="every dead letter not yet re-driven (in scope)")
    _dlq_common(q)
    q.set_defaults(run=run_dlq_retry)
    feedback_cli.add_subcommand(sub)
    lanes_cli.add_subcommand(sub)


def _dlq_common(p: argparse.ArgumentParser) -> None:
    # Operator commands: no --tenant means every tenant; FAKESAKE_TENANT, a submitter's default, is not read
    p.add_argument(
        "--tenant",
        help="only this tenant's dead letters (default: every tenant's; a message that was not a valid job "
        "has no trusted tenant and shows only then)",
    )
    p.add_argument("--kind", choices=_KINDS, help="only dead jobs or only dead webhooks (default: both)")
    p.add_argument("--redis-url", help="Redis URL; env FAKESAKE_REDIS__URL")
    p.add_argument("--format", choices=FORMATS, default="jsonl", help="output format (default jsonl)")
    p.add_argument("--output", "-o", help="write records here instead of stdout")


def _enqueue_all(
    args: argparse.Namespace,
    producer: Any,
    sources: list[str],
    job_ids: list[str | None],
    records: dict[int, dict[str, Any]],
) -> None:
    """Expand inputs, validate and enqueue them chunk by chunk; fill ``sources``/``job_ids``/``records``."""
    from producers.client import QueueFullError
    from producers.enumerate import expand_inputs, make_s3_client

    needs_s3 = any(i.startswith("s3://") for i in args.inputs)
    items = expand_inputs(
        args.inputs,
        manifests=args.manifest,
        s3_client=make_s3_client(producer.settings.s3) if needs_s3 else None,
    )
    defaults = {
        "tenant": args.tenant,
        "model": args.model,
        "priority": args.priority,
        "callback_url": args.callback_url,
        "idempotency_key": args.idempotency_key,
    }
    done = False
    while not done:
        chunk: list[tuple[int, Any]] = []
        for item in items:
            index = len(sources)
            sources.append(item["source"])
            job_ids.append(None)
            try:
                chunk.append((index, producer.build_job(**{**defaults, **item})))
            except PermanentError as exc:
                records[index] = error_record(item["source"], exc.code.value, exc.message)
            if len(chunk) >= _CHUNK:
                break
        else:
            done = True
        try:
            jobs = [job for _, job in chunk]
            queued = producer.enqueue(jobs, wait_if_full_s=args.wait_if_full, queue_anyway=args.queue_anyway)
            accepted = dict(enumerate(queued))
        except QueueFullError as exc:
            accepted = exc.accepted
            for n, (index, _) in enumerate(chunk):
                if n not in accepted:
                    records[index] = error_record(sources[index], exc.code.value, exc.message)
        for n, job_id in accepted.items():
            job_ids[chunk[n][0]] = job_id


def run_submit(args: argparse.Namespace) -> int:
    """``fakesake submit``: enqueue, then print one record per input (queued, or the result with --wait)."""
    if not args.inputs and not args.manifest:
        print("fakesake submit: give at least one INPUT or --manifest", file=sys.stderr)
        return EXIT_USAGE
    if args.idempotency_key and (len(args.inputs) != 1 or args.manifest):
        print(
            "fakesake submit: --idempotency-key needs exactly one INPUT (use a manifest column for many)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    sources: list[str] = []
    job_ids: list[str | None] = []
    records: dict[int, dict[str, Any]] = {}
    try:
        producer = _producer(args)
        tenant = args.tenant or producer.settings.tenant
        _enqueue_all(args, producer, sources, job_ids, records)
        results: dict[str, JobResult] = {}
        if args.wait:
            from tqdm import tqdm

            wanted = list(dict.fromkeys(j for j in job_ids if j is not None))
            with tqdm(
                total=len(wanted),
                desc="results",
                unit="job",
                file=sys.stderr,
                disable=True if args.no_progress else None,
            ) as bar:
                results = producer.wait(wanted, tenant, timeout_s=args.timeout, on_result=lambda _: bar.update(1))
    except FakesakeError as exc:
        return _fail(exc)
    for index, job_id in enumerate(job_ids):
        if index in records or job_id is None:
            continue
        if not args.wait:
            records[index] = {"source": sources[index], "status": "queued", "job_id": job_id}
        elif job_id in results:
            records[index] = result_record(results[job_id], sources[index])
        else:
            records[index] = error_record(
                sources[index],
                ErrorCode.TIMEOUT.value,
                f"no result within {args.timeout:g} s (still queued or running)",
                job_id,
            )
    ordered = [records[i] for i in range(len(sources))]
    with _output(args.output) as out:
        write_records(ordered, args.format, out)
    return EXIT_SOME_FAILED if any(r["status"] == "error" for r in ordered) else EXIT_OK


def run_result(args: argparse.Namespace) -> int:
    """``fakesake result JOB_ID``: 0 ok; 3 error result, or none (pending, expired, other tenant)."""
    try:
        producer = _producer(args)
        result = producer.get_result(args.job_id, args.tenant)
    except FakesakeError as exc:
        return _fail(exc)
    if result is None:
        print(
            f"fakesake result: no result for job {args.job_id} (pending, expired, or not this tenant's)",
            file=sys.stderr,
        )
        return EXIT_SOME_FAILED
    with _output(args.output) as out:
        write_records([result_record(result)], args.format, out)
    return EXIT_OK if result.ok else EXIT_SOME_FAILED


def _dead_record(letter: Any) -> dict[str, Any]:
    """A dead job or webhook as one record; both kinds have the same keys (csv takes the first's columns)."""
    if letter.kind == "webhook":
        result = letter.result
        return {
            "source": result.source,
            "status": "dead",
            "model": result.model,
            "error": {"code": letter.error.code, "message": letter.error.message},
            "job_id": letter.job_id,
            "kind": "webhook",
            "tenant": letter.tenant,
            "priority": None,
            "callback_url": letter.callback_redacted,
            "attempts": letter.attempts,
            "deliveries": None,
            "dead_at": letter.dead_at.isoformat(),
            "redriven_from": None,
        }
    job = letter.job  # None for a message that was not a valid job
    return {
        "source": None if job is None else job.source,
        "status": "dead",
        "model": None if job is None else job.model,
        "error": {"code": letter.error.code, "message": letter.error.message},
        "job_id": letter.job_id,
        "kind": "job",
        "tenant": letter.tenant,
        "priority": None if job is None else job.priority.value,
        "callback_url": None if job is None or job.callback_url is None else redact_url(job.callback_url),
        "attempts": letter.attempts,
        "deliveries": letter.deliveries,
        "dead_at": letter.dead_at.isoformat(),
        "redriven_from": letter.redriven_from,
    }


def run_dlq_list(args: argparse.Namespace) -> int:
    """``fakesake dlq list [--tenant T] [--kind job|webhook]``: one record per dead letter not yet re-driven."""
    from producers.dlq import DeadLetters

    kinds = [args.kind] if args.kind else list(_KINDS)
    letters: list[Any] = []
    try:
        dlq = DeadLetters(_producer(args).redis)
        if "job" in kinds:
            letters += dlq.list(args.limit, tenant=args.tenant)
        if "webhook" in kinds:
            letters += dlq.webhooks(args.limit, tenant=args.tenant)
    except FakesakeError as exc:
        return _fail(exc)
    letters.sort(key=lambda x: x.dead_at)  # stable: each kind is oldest first already
    with _output(args.output) as out:
        write_records([_dead_record(x) for x in letters[: max(0, args.limit)]], args.format, out)
    return EXIT_OK


def _retry_targets(args: argparse.Namespace, dlq: Any) -> list[tuple[str | None, str]]:
    """(kind, job id) pairs to retry, in scope, in the order asked; kind None for an id with no record."""
    kinds = [args.kind] if args.kind else list(_KINDS)
    if args.all:
        jobs = [("job", x.job_id) for x in dlq.list(None, tenant=args.tenant)] if "job" in kinds else []
        hooks = [("webhook", x.job_id) for x in dlq.webhooks(None, tenant=args.tenant)] if "webhook" in kinds else []
        return [*jobs, *hooks]
    targets: list[tuple[str | None, str]] = []
    for job_id in args.job_ids:
        found = [
            kind
            for kind in kinds
            if (dlq.get(job_id, args.tenant) if kind == "job" else dlq.get_webhook(job_id, args.tenant)) is not None
        ]
        targets += [(kind, job_id) for kind in found] or [(None, job_id)]
    return targets


def _retry_one(dlq: Any, producer: Any, kind: str | None, job_id: str, tenant: str | None) -> dict[str, Any]:
    if kind is None:
        return error_record("", ErrorCode.NOT_FOUND.value, f"no dead letter for job {job_id}", job_id)
    source = ""
    try:
        if kind == "webhook":
            hook = dlq.get_webhook(job_id, tenant)
            source = "" if hook is None else hook.result.source
            done = {"task_id": dlq.resend_webhook(job_id, producer, tenant)}
        else:
            letter = dlq.get(job_id, tenant)
            source = "" if letter is None or letter.job is None else letter.job.source
            done = {"redriven_to": dlq.redrive(job_id, producer, tenant)}
    except FakesakeError as exc:
        return {**error_record(source, exc.code.value, exc.message, job_id), "kind": kind}
    return {"source": source, "status": "requeued", "job_id": job_id, "kind": kind, **done}


def run_dlq_retry(args: argparse.Namespace) -> int:
    """``fakesake dlq retry JOB_ID... | --all [--tenant T] [--kind job|webhook]``: dead jobs are re-enqueued
    under new ids (prints old id -> ``redriven_to``), dead webhooks re-sent (prints the new ``task_id``)."""
    from producers.dlq import DeadLetters

    if bool(args.job_ids) == bool(args.all):
        print("fakesake dlq retry: give JOB_IDs or --all", file=sys.stderr)
        return EXIT_USAGE
    try:
        producer = _producer(args)
        dlq = DeadLetters(producer.redis)
        records = [_retry_one(dlq, producer, kind, job_id, args.tenant) for kind, job_id in _retry_targets(args, dlq)]
    except FakesakeError as exc:
        return _fail(exc)
    with _output(args.output) as out:
        write_records(records, args.format, out)
    return EXIT_SOME_FAILED if any(r["status"] == "error" for r in records) else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the producer sub-commands alone (the ``fakesake`` console script mounts them too)."""
    parser = argparse.ArgumentParser(prog="fakesake")
    add_subcommands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
