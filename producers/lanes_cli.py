"""``fakesake lanes --model a,b``: the Redis lists (Celery queues) that jobs for a detector set wait in.

What an operator names in a KEDA list trigger (``listName``), in ``redis-cli LLEN`` or in a PromQL selector
(``fakesake_queue_depth{queue="..."}``). ``--worker`` prints every list a worker serving those detectors consumes:
the lane of each non-empty subset of them, then each lane's side lane (``<lane>.side``, where the worker queues a
job's follow-ups: retries waiting out a rate limit, webhook deliveries; ``fakesake_side_lane_depth``). Those are
the triggers of a Deployment that serves an ensemble; a side lane needs one only where the Deployment may scale
to zero (deploy/k8s/keda.yaml). No Redis, no torch: lane names are a pure function of the detector names
(:func:`producers.contract.queue_name`, :func:`producers.contract.side_lane`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO

from producers.contract import MAX_SERVED_DETECTORS, Priority, detector_set, lane_priority, queue_name, side_lane
from producers.serving import worker_lanes

EXIT_OK, EXIT_USAGE = 0, 2


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "lanes",
        help="print the Redis lists (queues) jobs for a detector set wait in (KEDA listName, LLEN)",
        description="fakesake lanes [--model a,b] [--worker] [--priority interactive|bulk] [--format text|json]",
    )
    p.add_argument(
        "--model",
        help="detector name, or several comma-separated (an ensemble; order does not matter); "
        "default: env FAKESAKE_DEFAULT_MODEL",
    )
    p.add_argument(
        "--worker",
        action="store_true",
        help=f"every list a worker serving these detectors consumes: the lanes (each non-empty subset; at most "
        f"{MAX_SERVED_DETECTORS} detectors), then their side lanes (<lane>.side: retries, webhook deliveries)",
    )
    p.add_argument("--priority", choices=[x.value for x in Priority], help="only this priority's lanes")
    p.add_argument("--format", choices=["text", "json"], default="text", help="text: queue, lane, detectors")
    p.set_defaults(run=run_lanes)


def lanes(model: str, *, worker: bool = False, priority: str | None = None) -> list[dict[str, str]]:
    """``[{"queue", "lane", "detectors"}]`` of ``model`` (with ``worker``: of every subset a worker consumes, then the
    side lanes of those; a side lane's row has its lane's ``lane`` and ``detectors``)."""
    names = detector_set(model)
    if worker:
        queues = worker_lanes(names)
        queues |= {side_lane(q): d for q, d in queues.items()}
    else:
        queues = {queue_name(p, names): ",".join(sorted(set(names))) for p in Priority}
    return [
        {"queue": q, "lane": lane_priority(q), "detectors": d}
        for q, d in queues.items()
        if priority is None or lane_priority(q) == priority
    ]


def run_lanes(args: argparse.Namespace, stream: IO[str] = sys.stdout) -> int:
    model = args.model
    if not model:
        from producers.settings import ProducerSettings

        model = ProducerSettings().default_model
    try:
        if not all(detector_set(model)):
            raise ValueError("an empty detector name")
        rows = lanes(model, worker=args.worker, priority=args.priority)  # the serving limit: served_subsets
    except ValueError as exc:
        print(f"fakesake lanes: --model takes comma-separated detector names ({exc}), got {model!r}", file=sys.stderr)
        return EXIT_USAGE
    if args.format == "json":
        stream.write(json.dumps(rows, indent=2) + "\n")
    else:
        stream.writelines(f"{r['queue']}\t{r['lane']}\t{r['detectors']}\n" for r in rows)
    return EXIT_OK
