"""``fakesake scan``: classify files, folders, URLs and S3 prefixes in this process — no Redis, no services.

Inputs are expanded lazily (a folder is walked, an S3 prefix listed page by page) and streamed through the
engine, which overlaps fetch/decode with batched inference. One record per input on the output, in input
order; the source of a record is the input exactly as given (or the file/key it expanded to).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from producers.enumerate import expand_s3
from producers.output import ensemble_fields, record, write_records
from worker.core.pipeline import Outcome
from worker.service.settings import WorkerSettings

log = logging.getLogger(__name__)

# A folder walk picks images by extension, so READMEs and .DS_Store files next to the images are not
# reported as failures. A file named explicitly is always scanned, whatever its name.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


def settings_from_args(args: argparse.Namespace, base: WorkerSettings | None = None) -> WorkerSettings:
    """Environment settings with the CLI flags the user gave laid over them."""
    settings = base or WorkerSettings()
    model = {
        k: v
        for k, v in {
            "name": args.model,
            "weights": args.weights,
            "device": args.device,
            "preprocess": args.preprocess,
            "calibration": getattr(args, "calibration", None),
            "detectors_file": getattr(args, "detectors", None),
            "fusion": getattr(args, "fusion", None),
        }.items()
        if v is not None
    }
    update: dict[str, Any] = {"model": settings.model.model_copy(update=model)}
    if args.batch_size is not None:
        update["batch"] = settings.batch.model_copy(update={"max_size": args.batch_size})
    if args.s3_endpoint_url is not None:
        update["s3"] = settings.s3.model_copy(update={"endpoint_url": args.s3_endpoint_url})
    if args.allow_private is not None:
        fetch = settings.fetch.model_dump()
        fetch["allow_private"] = args.allow_private
        update["fetch"] = type(settings.fetch).model_validate(fetch)
    return settings.model_copy(update=update)


def expand_inputs(inputs: Iterable[str], s3_client: Any = None) -> Iterator[str]:
    """Yield one source per image: files as given, folders walked (sorted), S3 prefixes listed.

    S3 inputs expand exactly as for ``fakesake submit`` (:func:`producers.enumerate.expand_s3`).
    """
    for item in inputs:
        if item.startswith(("http://", "https://")):
            yield item
        elif item.startswith("s3://"):
            yield from expand_s3(item, s3_client)
        elif os.path.isdir(item):
            for root, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                        yield os.path.join(root, name)
        else:
            yield item  # a file, or a path that does not exist: the fetcher reports not-found


# An error record's evidence: the same keys as an ok record's (CSV columns stay put), nothing read, nobody decided.
NO_EVIDENCE: dict[str, Any] = {"provenance": [], "decided_by": None, "ai_edited": False}


def outcome_record(outcome: Outcome) -> dict[str, Any]:
    """One line of ``fakesake scan`` output. ``source_version`` and ``etag`` are always present (null unless an
    S3 object was read), so every line and every CSV has the same columns. Under a calibration every outcome
    (errors included) names it, so a calibrated scan adds ``raw_score`` and ``calibration`` to every line, and
    an uncalibrated scan keeps its columns."""
    calibrated = (
        {} if outcome.calibration is None else {"raw_score": outcome.raw_score, "calibration": outcome.calibration}
    )
    return record(
        outcome.source,
        outcome.status.value,
        score=outcome.score,
        label=outcome.label.value if outcome.label else None,
        band=outcome.band.value if outcome.band else None,
        model=outcome.model,
        error=(outcome.error.code, outcome.error.message) if outcome.error else None,
        timings=outcome.timings.model_dump(exclude_none=True),
        evidence=outcome.evidence or NO_EVIDENCE,
        source_version=outcome.source_version,
        etag=outcome.etag,
        **calibrated,
        **ensemble_fields(outcome.detectors, outcome.fusion),
    )


def _open_output(path: str | None) -> IO[str]:
    if path is None:
        return sys.stdout
    return open(path, "w", encoding="utf-8", newline="")


def run_scan(args: argparse.Namespace) -> int:
    """Entry point of ``fakesake scan``; returns the process exit code."""
    from tqdm import tqdm

    from producers.s3 import make_s3_client
    from worker.service import builder

    settings = settings_from_args(args)
    needs_s3 = any(i.startswith("s3://") for i in args.inputs)
    s3_client = make_s3_client(settings.s3) if needs_s3 else None
    sources = expand_inputs(args.inputs, s3_client)
    many = False
    if not needs_s3:  # local inputs expand without I/O errors; S3 listing stays after the model load, as it was
        head = list(itertools.islice(sources, settings.batch.max_size + 1))
        many = len(head) > settings.batch.max_size  # more than one batch: engine processes will classify it
        sources = itertools.chain(head, sources)
    scanner = builder.scanner(settings, s3_client, start_early=many)

    failed = total = 0
    out = _open_output(args.output)
    try:
        with tqdm(desc="scan", unit="img", file=sys.stderr, disable=True if args.no_progress else None) as bar:

            def records() -> Iterator[dict[str, Any]]:
                nonlocal failed, total
                for outcome in scanner.classify(sources):
                    total += 1
                    failed += outcome.status != "ok"
                    bar.update(1)
                    yield outcome_record(outcome)

            write_records(records(), args.format, out)
    finally:
        if out is not sys.stdout:
            out.close()
        scanner.close()
    log.info("scanned %d inputs, %d failed", total, failed)
    return 3 if failed else 0
