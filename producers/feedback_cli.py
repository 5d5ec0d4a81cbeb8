"""``fakesake feedback JOB_ID --label ai|human`` and ``fakesake feedback export``: labels for finished jobs.

Mounted by :func:`producers.cli.add_subcommands`; works in a producer-only install (no torch). ``export`` is
not a valid job id (ids are 8-64 characters), so one positional argument serves both forms.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from producers.contract import Label
from producers.errors import ErrorCode, FakesakeError
from producers.feedback import DATASET
from producers.settings import ProducerSettings

EXIT_OK, EXIT_USAGE, EXIT_REFUSED = 0, 2, 3
#: Refusals about the job itself (exit 3), apart from usage and configuration trouble (exit 2).
_JOB_CODES = {ErrorCode.NOT_FOUND, ErrorCode.NOT_FINISHED, ErrorCode.INVALID_JOB}


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "feedback",
        help="label a finished job ai or human (kept with its score), or export the labels as a manifest",
        description="fakesake feedback JOB_ID --label ai|human [--note TEXT]  |  "
        "fakesake feedback export --output labels.jsonl",
    )
    p.add_argument("job_id", metavar="JOB_ID|export", help="the job to label, or 'export'")
    p.add_argument("--label", choices=[x.value for x in Label], help="what the image really is")
    p.add_argument("--note", help="free text kept with the label (e.g. the reviewer's reason)")
    p.add_argument("--output", "-o", help="export: write the manifest here (.csv: CSV, else JSONL)")
    p.add_argument("--dataset", default=DATASET, help=f"export: the rows' dataset name (default {DATASET})")
    p.add_argument("--tenant", help="tenant (default: env FAKESAKE_TENANT or 'default')")
    p.add_argument("--redis-url", help="Redis URL; env FAKESAKE_REDIS__URL")
    p.set_defaults(run=run_feedback)


def _fail(exc: FakesakeError) -> int:
    print(f"fakesake feedback: {exc.code.value}: {exc.message}", file=sys.stderr)
    return EXIT_REFUSED if exc.code in _JOB_CODES else EXIT_USAGE


def _producer(args: argparse.Namespace) -> Any:
    from producers.client import Producer

    settings = ProducerSettings()
    if args.redis_url:
        settings = settings.model_copy(update={"redis": settings.redis.model_copy(update={"url": args.redis_url})})
    return Producer(settings)


def run_feedback(args: argparse.Namespace) -> int:
    """Label one job (prints the stored record) or export the tenant's labels (exit 0; 3: the job was refused —
    unknown, not finished or failed; 2: usage or configuration)."""
    exporting = args.job_id == "export"
    if exporting and (args.label or args.note):
        print("fakesake feedback export: --label and --note are for labelling a job", file=sys.stderr)
        return EXIT_USAGE
    if not exporting and not args.label:
        print("fakesake feedback: give --label ai or --label human", file=sys.stderr)
        return EXIT_USAGE
    if not exporting and args.output:
        print("fakesake feedback: --output is for export", file=sys.stderr)
        return EXIT_USAGE
    try:
        producer = _producer(args)
        tenant = args.tenant or producer.settings.tenant
        if not exporting:
            record = producer.feedback(args.job_id, args.label, tenant=tenant, note=args.note)
            print(record.model_dump_json())
            return EXIT_OK
        fmt = "csv" if args.output and Path(args.output).suffix.lower() == ".csv" else "jsonl"
        if args.output is None:
            written, skipped = producer.feedback_store.export(tenant, sys.stdout, fmt, args.dataset)
        else:
            with open(args.output, "w", encoding="utf-8", newline="") as out:
                written, skipped = producer.feedback_store.export(tenant, out, fmt, args.dataset)
    except FakesakeError as exc:
        return _fail(exc)
    print(f"fakesake feedback export: {written} rows for tenant {tenant!r}", file=sys.stderr)
    if skipped:
        print(
            f"fakesake feedback export: {skipped} rows skipped: their source was stored redacted (a URL with a "
            "query string, e.g. presigned) and cannot be fetched again",
            file=sys.stderr,
        )
    return EXIT_OK
